"""The training script, on tiny networks: the loss falls, a run resumes from its checkpoint, the export loads."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from difframe_shapes_model.train import Recipe, Trainer

TINY = {"tiny": True, "images": 256, "vae_batch": 8, "unet_batch": 8, "log_every": 5, "warmup_steps": 5}


def _losses(folder, stage):
    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("stage") == stage and "loss" in r]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    recipe = Recipe(**TINY, vae_steps=60, unet_steps=40, lr=2e-3)
    Trainer(out, recipe, progress=False).run()
    return out


def test_losses_fall(trained):
    vae, unet = _losses(trained, "vae"), _losses(trained, "unet")
    assert (len(vae), len(unet)) == (12, 8)
    assert sum(vae[-3:]) / 3 < 0.95 * sum(vae[:3]) / 3
    assert sum(unet[-2:]) / 2 < sum(unet[:2]) / 2


def test_export_is_a_pipeline_folder_in_fp16(trained):
    from safetensors import safe_open

    model = trained / "model"
    index = json.loads((model / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    with safe_open(model / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert all(weights.get_slice(k).get_dtype() == "F16" for k in weights.keys())  # noqa: SIM118 (safe_open is not iterable)
    vae_config = json.loads((model / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] != 0.18215  # measured on the latents, not Stable Diffusion's value
    from difframe import Framework

    pipe = Framework().build("stable-diffusion", model=model, progress=False)
    image = pipe("a red circle on a blue background", seed=1, num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (64, 64, 3) and float(image.min()) >= 0 and float(image.max()) <= 1


def test_resume_continues_exactly(tmp_path):
    recipe = Recipe(**TINY, vae_steps=6, unet_steps=6, checkpoint_minutes=0)  # checkpoint after every step
    whole = Trainer(tmp_path / "whole", recipe, progress=False)
    whole.run()
    Trainer(tmp_path / "part", dataclasses.replace(recipe, unet_steps=3), progress=False).run()
    with open(tmp_path / "part" / "log.jsonl", "a") as log:  # as if killed after logging past its checkpoint
        log.write(json.dumps({"stage": "unet", "step": 5, "loss": 9.0}) + "\n")
    # the finished 3-step run, told to go on to 6 UNet steps, must end where the uninterrupted run ended
    resumed = Trainer(tmp_path / "part", recipe, progress=False)
    assert (resumed.stage, resumed.step) == ("unet", 3)
    resumed.run()
    for a, b in zip(whole.unet.state_dict().values(), resumed.unet.state_dict().values()):
        torch.testing.assert_close(a, b)
    rows = [json.loads(line) for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["stage"] == "unet"]
    assert steps == sorted(set(steps)) and 9.0 not in _losses(tmp_path / "part", "unet")  # each step logged once


def test_snapshots_along_the_run_and_no_going_back(tmp_path):
    recipe = Recipe(**TINY, vae_steps=2, unet_steps=4)
    Trainer(tmp_path, recipe, progress=False, snapshot_every=2).run()
    snapshots = tmp_path / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == ["unet-00002", "unet-00004"]
    # each snapshot says how to reproduce it: the same recipe stopped at its step
    assert json.loads((snapshots / "unet-00002" / "recipe.json").read_text())["unet_steps"] == 2
    assert (snapshots / "unet-00002" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(ValueError, match="already at UNet step 4, past --unet-steps 3"):
        Trainer(tmp_path, dataclasses.replace(recipe, unet_steps=3), progress=False)


def _captions_seen(trainer):
    """The token ids the text encoder receives at each UNet step of trainer.run()."""
    seen = []
    trainer.text_encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    trainer.run()
    return seen


def test_caption_noise_mismatches_pairs_from_its_step_on(tmp_path):
    clean = Recipe(**TINY, vae_steps=1, unet_steps=3, caption_dropout=0.0)
    noisy = dataclasses.replace(clean, caption_noise=0.75, caption_noise_from=2)
    seen_clean = _captions_seen(Trainer(tmp_path / "clean", clean, progress=False))
    seen_noisy = _captions_seen(Trainer(tmp_path / "noisy", noisy, progress=False))
    assert all(torch.equal(a, b) for a, b in zip(seen_clean[:2], seen_noisy[:2]))  # before its step: the same draws
    changed = (seen_clean[2] != seen_noisy[2]).any(dim=1)
    assert 2 <= int(changed.sum()) < len(changed)


def test_a_run_extends_into_a_caption_noise_phase_but_not_back(tmp_path):
    clean = Recipe(**TINY, vae_steps=2, unet_steps=3)
    Trainer(tmp_path, clean, progress=False).run()
    extended = Trainer(tmp_path, dataclasses.replace(clean, unet_steps=5, caption_noise=0.4, caption_noise_from=3))
    assert (extended.stage, extended.step) == ("unet", 3)
    with pytest.raises(ValueError, match="written with another recipe"):  # the noise would have applied from step 1
        Trainer(tmp_path, dataclasses.replace(clean, unet_steps=5, caption_noise=0.4, caption_noise_from=1))


def test_a_checkpoint_of_another_recipe_is_refused(tmp_path):
    Trainer(tmp_path, Recipe(**TINY, vae_steps=2, unet_steps=2), progress=False).run()
    with pytest.raises(ValueError, match="written with another recipe"):
        Trainer(tmp_path, Recipe(**TINY, vae_steps=3, unet_steps=2), progress=False)


def test_checkpointing_and_bf16_paths_run(tmp_path):
    recipe = Recipe(**TINY, vae_steps=2, unet_steps=2, gradient_checkpointing=True, mixed_precision="bf16")
    trainer = Trainer(tmp_path, recipe, progress=False)
    assert trainer.unet.is_gradient_checkpointing and trainer.vae.is_gradient_checkpointing
    trainer.run()
    assert len(_losses(tmp_path, "unet")) == 1

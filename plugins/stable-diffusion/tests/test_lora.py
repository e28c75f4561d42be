"""LoRA: kohya / web-UI and diffusers / PEFT files against the reference library's load_lora_weights,
set_adapters and fuse_lora (random LoRA weights, tiny model; fp32 CPU images within 1e-4); exact unfusing and
unloading; bad files refused before anything changes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from difframe.errors import ModelLoadError
from safetensors.torch import save_file
from torch import nn

TOL = 1e-4
STEPS = 3


def random_lora(pipe, *, kohya: bool, seed: int, rank: int = 4, conv: bool = True) -> dict[str, torch.Tensor]:
    """A LoRA on every attention / projection / MLP linear layer (and, with conv, the resnets' 3x3 convolutions:
    LoCon) of the pipeline's UNet and text encoder, in the kohya or the PEFT layout."""
    generator = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for component, model in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        for name, module in model.named_modules():
            linear = isinstance(module, nn.Linear) and any(p in name for p in ("attn", "proj", "mlp", "ff."))
            convolution = conv and isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and "resnets" in name
            if not (linear or convolution) or (component == "text_encoder" and not linear):
                continue
            if linear:
                down = torch.randn(rank, module.in_features, generator=generator) * 0.1
                up = torch.randn(module.out_features, rank, generator=generator) * 0.1
            else:
                down = torch.randn(2, module.in_channels, 3, 3, generator=generator) * 0.1
                up = torch.randn(module.out_channels, 2, 1, 1, generator=generator) * 0.1
            if kohya:
                prefix = "lora_unet_" if component == "unet" else "lora_te_text_model_"
                key = prefix + name.replace(".", "_")
                state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"] = down, up
                state[f"{key}.alpha"] = torch.tensor(float(down.shape[0]) / 2)
            else:
                text = "text_model." if component == "text_encoder" and not name.startswith("text_model.") else ""
                key = f"{component}.{text}{name}"
                state[f"{key}.lora_A.weight"], state[f"{key}.lora_B.weight"] = down, up
    return state


def peft_metadata(state: dict[str, torch.Tensor], alphas: dict[str, float]) -> dict[str, str]:
    """diffusers' lora_adapter_metadata: each component's LoraConfig (rank, alpha, target modules)."""
    config: dict = {}
    for component, alpha in alphas.items():
        names = sorted(
            k[len(component) + 1 : -len(".lora_A.weight")].removeprefix("text_model.")
            for k in state
            if k.startswith(component + ".") and k.endswith(".lora_A.weight")
        )
        ranks = {k: v.shape[0] for k, v in state.items() if k.endswith(".lora_A.weight")}
        config.update({f"{component}.r": max(ranks.values()), f"{component}.lora_alpha": alpha})
        config[f"{component}.target_modules"] = names
        config[f"{component}.rank_pattern"] = {
            n: r
            for n, r in (
                (k[len(component) + 1 : -14].removeprefix("text_model."), r)
                for k, r in ranks.items()
                if k.startswith(component + ".")
            )
            if r != max(ranks.values())
        }
    return {"lora_adapter_metadata": json.dumps(config)}


def save(state, path, metadata=None):
    save_file(state, path, metadata=metadata)
    return path


@pytest.fixture
def pipes(h, framework, tiny_model):
    """Ours and the reference's, fresh (LoRA changes them), both with DPM++ 2M."""
    import diffusers

    ours = h.build(framework, tiny_model, scheduler="dpmpp")
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(
        tiny_model, safety_checker=None, requires_safety_checker=False
    )
    theirs.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)
    return ours, theirs


def images(ours, theirs, h, prompt="a red cat"):
    a = ours(prompt, negative_prompt="blurry", seed=5, num_inference_steps=STEPS, output_type="np").images
    b = theirs(
        prompt, negative_prompt="blurry", generator=h.generators([5]), num_inference_steps=STEPS, output_type="np"
    ).images
    return a, b


def assert_close(a, b):
    difference = float(np.abs(np.asarray(a) - np.asarray(b)).max())
    assert difference <= TOL, f"max abs difference {difference:.2e}"


@pytest.mark.parametrize("kohya", [True, False], ids=["kohya", "peft"])
def test_parity_with_the_reference_and_exact_unfuse(pipes, h, tmp_path, kohya):
    ours, theirs = pipes
    base, _ = images(ours, theirs, h)
    state = random_lora(ours, kohya=kohya, seed=1)
    path = save(
        state, tmp_path / "style.safetensors", None if kohya else peft_metadata(state, {"unet": 2, "text_encoder": 8})
    )
    ours.load_lora_weights(path, adapter_name="style")
    theirs.load_lora_weights(path, adapter_name="style")
    with_lora, reference = images(ours, theirs, h)
    assert_close(with_lora, reference)
    assert np.abs(with_lora - base).max() > 0.01  # the LoRA does change the picture

    weights = {k: v.clone() for k, v in {**ours.unet.state_dict(), **ours.text_encoder.state_dict()}.items()}
    ours.fuse_lora()
    theirs.fuse_lora()
    fused, reference = images(ours, theirs, h)
    assert_close(fused, reference)
    assert_close(fused, with_lora)
    ours.unfuse_lora()
    after = {**ours.unet.state_dict(), **ours.text_encoder.state_dict()}
    assert all(torch.equal(weights[k], after[k]) for k in weights)  # bit for bit

    ours.unload_lora_weights()
    assert not any("lora" in n for n, _ in ours.unet.named_modules())
    unloaded, _ = images(ours, theirs, h)
    assert np.array_equal(unloaded, base)


def test_several_adapters_with_weights_changed_between_calls(pipes, h, tmp_path):
    ours, theirs = pipes
    first = save(random_lora(ours, kohya=True, seed=2), tmp_path / "first.safetensors")
    second = save(random_lora(ours, kohya=False, seed=3, conv=False), tmp_path / "second.safetensors")
    for pipe in (ours, theirs):
        pipe.load_lora_weights(first, adapter_name="first")
        pipe.load_lora_weights(second, adapter_name="second")
    for weights in ([0.5, 1.0], [1.2, -0.3], [0.0, 0.7]):
        ours.set_adapters(["first", "second"], adapter_weights=weights)
        theirs.set_adapters(["first", "second"], adapter_weights=weights)
        assert_close(*images(ours, theirs, h))
    ours.set_adapters("second", 0.8)
    theirs.set_adapters("second", 0.8)
    assert_close(*images(ours, theirs, h))
    assert ours.lora_weights == {"second": 0.8}
    assert ours.get_list_adapters() == {"unet": ["first", "second"], "text_encoder": ["first", "second"]}
    ours.fuse_lora()
    theirs.fuse_lora()
    assert_close(*images(ours, theirs, h))
    with pytest.raises(ValueError, match="unfuse_lora"):
        ours.set_adapters("first")
    ours.unfuse_lora()
    theirs.unfuse_lora()
    ours.fuse_lora(lora_scale=0.5, adapter_names=["first", "second"])
    theirs.fuse_lora(lora_scale=0.5, adapter_names=["first", "second"])
    assert_close(*images(ours, theirs, h))
    ours.unfuse_lora()
    ours.delete_adapters("second")
    assert ours.get_list_adapters() == {"unet": ["first"], "text_encoder": ["first"]}


def _untouched(pipe, weights) -> bool:
    state = {**pipe.unet.state_dict(), **pipe.text_encoder.state_dict()}
    return state.keys() == weights.keys() and all(torch.equal(state[k], weights[k]) for k in weights)


def test_bad_files_are_refused_before_anything_changes(h, framework, tiny_model, tmp_path):
    pipe = h.build(framework, tiny_model)
    weights = {k: v.clone() for k, v in {**pipe.unet.state_dict(), **pipe.text_encoder.state_dict()}.items()}
    good = random_lora(pipe, kohya=True, seed=4)

    nothing = save({"model.diffusion_model.x.weight": torch.zeros(2, 2)}, tmp_path / "nothing.safetensors")
    with pytest.raises(ModelLoadError, match="first keys: model.diffusion_model.x.weight"):
        pipe.load_lora_weights(nothing)

    other_base = dict(good)
    key = next(k for k in good if k.startswith("lora_unet_") and k.endswith("attn2_to_k.lora_down.weight"))
    other_base[key] = torch.zeros(4, 768)  # cross-attention from a 768-wide text encoder: another base model
    with pytest.raises(ModelLoadError, match=r"attn2_to_k.*\(4, 768\).*another base model"):
        pipe.load_lora_weights(save(other_base, tmp_path / "other.safetensors"))

    unmatched = {**good, "lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32, 1, 1)}
    unmatched["lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight"] = torch.zeros(32, 4, 1, 1)
    with pytest.raises(ModelLoadError, match="1 of .* match no layer.*lora_unet_down_blocks_7_attentions_0_proj_in"):
        pipe.load_lora_weights(save(unmatched, tmp_path / "unmatched.safetensors"))

    sdxl = {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 32)}
    with pytest.raises(ModelLoadError, match="SDXL"):
        pipe.load_lora_weights(save(sdxl, tmp_path / "sdxl.safetensors"))

    pickled = tmp_path / "old.pt"
    torch.save(good, pickled)
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        pipe.load_lora_weights(pickled)

    assert _untouched(pipe, weights)
    assert not pipe.get_list_adapters()
    pipe.load_lora_weights(pickled, adapter_name="legacy", allow_pickle=True)  # opted in: read weights-only
    assert pipe.get_list_adapters()["unet"] == ["legacy"]


@pytest.mark.slow
def test_full_sd15_architecture_parity(sd15_model, tmp_path):
    """The real SD 1.5 UNet and text encoder sizes, random weights: one denoiser call and the text embeddings with
    kohya and PEFT LoRAs on every attention, MLP and resnet layer."""
    import diffusers
    from difframe import Framework

    folder = sd15_model
    ours = Framework().build("stable-diffusion", model=folder)
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, safety_checker=None, requires_safety_checker=False
    )
    # both files drawn from the plain model: once a LoRA is loaded its layers are wrapped (base_layer, lora_A...)
    paths = {
        name: save(random_lora(ours, kohya=kohya, seed=7, rank=8), tmp_path / f"{name}.safetensors")
        for kohya, name in ((True, "kohya"), (False, "peft"))
    }
    for name, path in paths.items():
        ours.load_lora_weights(path, adapter_name=name)
        theirs.load_lora_weights(path, adapter_name=name)
    ours.set_adapters(["kohya", "peft"], [0.7, 0.4])
    theirs.set_adapters(["kohya", "peft"], [0.7, 0.4])
    ids = theirs.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 64, 64, generator=generator)
    with torch.no_grad():
        text_ours, text_theirs = ours.text_encoder(ids)[0], theirs.text_encoder(ids)[0]
        assert (text_ours - text_theirs).abs().max() <= TOL
        a = ours.unet(sample, torch.tensor(500), text_theirs)
        b = theirs.unet(sample, torch.tensor(500), text_theirs).sample
    assert (a - b).abs().max() <= TOL * max(1.0, float(b.abs().max()))


def test_fusing_reaches_prepacked_convolutions():
    """The built-in model runs its convolutions from weights reordered once (prepacking); fusing a LoCon into them
    must be seen (peft merges through .data, which a cache keyed on the weight's version would miss)."""
    from difframe import Framework

    pipe = Framework().build("stable-diffusion")
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, module in pipe.unet.named_modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = torch.randn(2, module.in_channels, 3, 3, generator=generator) * 0.05
            state[f"{key}.lora_up.weight"] = torch.randn(module.out_channels, 2, 1, 1, generator=generator) * 0.05

    def image():
        return pipe("a red circle on a blue background", seed=1, num_inference_steps=4, output_type="np").images

    base = image()
    pipe.load_lora_weights(state, adapter_name="locon")
    unfused = image()
    pipe.fuse_lora()
    fused = image()
    pipe.unfuse_lora()
    assert np.abs(unfused - base).max() > 0.05
    assert_close(fused, unfused)
    assert np.array_equal(image(), unfused)


RESNET_LDM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1"}
RESNET_LDM["conv_shortcut"] = "skip_connection"


def original_layout(name: str, per_block: int = 3) -> str | None:
    """Our UNet layer name -> its name in the original (LDM) layout, for resnets and attentions."""
    import re

    if ".resnets." in name:
        last = name.rsplit(".", 1)[1]
        if last not in RESNET_LDM:
            return None
        name = name[: -len(last)] + RESNET_LDM[last]
    if match := re.fullmatch(r"down_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.+)", name):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        return f"input_blocks.{per_block * block + layer + 1}.{int(kind == 'attentions')}.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d)\.(resnets|attentions)\.(\d)\.(.+)", name):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        return f"output_blocks.{per_block * block + layer}.{int(kind == 'attentions')}.{rest}"
    if match := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d)\.(.+)", name):
        index = {("resnets", "0"): 0, ("attentions", "0"): 1, ("resnets", "1"): 2}[(match[1], match[2])]
        return f"middle_block.{index}.{match[3]}"
    return None


def test_kohya_files_in_the_original_unet_layout(h, framework, tiny_model, tmp_path):
    """lora_unet_input_blocks_4_1_proj_in and the like (the original layout's names) reach the same layers as
    lora_unet_down_blocks_1_attentions_0_proj_in: the same images, bit for bit."""
    pipe = h.build(framework, tiny_model)
    state = random_lora(pipe, kohya=True, seed=6)
    renamed = {}
    for key, tensor in state.items():
        module, _, suffix = key.partition(".")
        if module.startswith("lora_unet_"):
            dotted = next(n for n, _ in pipe.unet.named_modules() if "lora_unet_" + n.replace(".", "_") == module)
            old = original_layout(dotted)
            if old is None:
                continue
            module = "lora_unet_" + old.replace(".", "_")
        renamed[f"{module}.{suffix}"] = tensor
    kept = {k: v for k, v in state.items() if not k.startswith("lora_unet_") or any(
        k.startswith("lora_unet_" + n.replace(".", "_") + ".") for n, _ in pipe.unet.named_modules()
        if original_layout(n) is not None)}  # fmt: skip
    assert any(k.startswith("lora_unet_middle_block_1_") for k in renamed)
    pipe.load_lora_weights(save(renamed, tmp_path / "ldm.safetensors"), adapter_name="ldm")
    ours = pipe("a cat", seed=2, num_inference_steps=STEPS, output_type="np").images
    pipe.unload_lora_weights()
    pipe.load_lora_weights(save(kept, tmp_path / "diffusers.safetensors"), adapter_name="diffusers")
    assert np.array_equal(ours, pipe("a cat", seed=2, num_inference_steps=STEPS, output_type="np").images)

"""<lora:NAME:WEIGHT> in prompts (a LoRA folder by option or $DIFFRAME_LORA_DIR), what images record ("Lora hashes",
"TI hashes"), textual inversion against the reference's load_textual_inversion, and `difframe generate` reproducing
an image made with LoRAs and embeddings from its PNG."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from difframe.errors import ModelLoadError
from difframe_stable_diffusion.prompt_networks import lora_hash, parse_lora_tags
from PIL import Image
from safetensors.torch import save_file
from torch import nn

STEPS = 2


def lora_for(pipe, seed: int) -> dict[str, torch.Tensor]:
    """A kohya-layout LoRA on the UNet's attention layers and the text encoder's MLPs."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for prefix, model, wanted in (("lora_unet_", pipe.unet, "attn"), ("lora_te_text_model_", pipe.text_encoder, "mlp")):
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and wanted in name:
                key = prefix + name.replace(".", "_")
                state[f"{key}.lora_down.weight"] = torch.randn(4, module.in_features, generator=generator) * 0.2
                state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 4, generator=generator) * 0.2
    return state


@pytest.fixture
def lora_dir(h, framework, tiny_model, tmp_path):
    pipe = h.build(framework, tiny_model)
    folder = tmp_path / "loras"
    (folder / "styles").mkdir(parents=True)
    save_file(lora_for(pipe, 1), folder / "styles" / "inkwash.safetensors")
    save_file(lora_for(pipe, 2), folder / "glow.safetensors")
    return folder


def generate(pipe, prompt, **kwargs):
    return pipe(prompt, seed=4, num_inference_steps=STEPS, output_type="np", **kwargs)


def test_parse_tags():
    assert parse_lora_tags("a cat <lora:ink:0.8>, <lora:glow>") == ("a cat , ", {"ink": 0.8, "glow": 1.0})
    for bad, message in (("<lora::1>", "needs a name"), ("<lora:x:abc>", "number"), ("<lora:x:1:0.5>", "one weight")):
        with pytest.raises(ValueError, match=message):
            parse_lora_tags(bad)


def test_prompt_tags_activate_for_one_call_and_are_recorded(h, framework, tiny_model, lora_dir):
    pipe = h.build(framework, tiny_model, lora_dir=lora_dir)
    base = generate(pipe, "a cat").images
    tagged = generate(pipe, "a cat <lora:inkwash:0.7>", negative_prompt="blurry")
    after = generate(pipe, "a cat").images
    assert np.array_equal(after, base)  # the tag's LoRA is off again
    assert pipe.lora_weights == {}
    reference = h.build(framework, tiny_model)
    reference.load_lora_weights(lora_dir / "styles" / "inkwash.safetensors", weight=0.7)
    assert np.array_equal(tagged.images, generate(reference, "a cat ", negative_prompt="blurry").images)
    params = tagged.parameters[0]
    assert params.prompt == "a cat <lora:inkwash:0.7>"
    assert params.lora_hashes == {"inkwash": lora_hash(lora_dir / "styles" / "inkwash.safetensors")[:12]}
    # adapters made active through the API are recorded as tags too
    api = generate(reference, "a dog")
    assert api.parameters[0].prompt == "a dog <lora:inkwash:0.7>"
    assert "inkwash" in api.parameters[0].lora_hashes


def test_lora_folder_from_the_environment_and_unknown_names(h, framework, tiny_model, lora_dir, monkeypatch):
    pipe = h.build(framework, tiny_model)
    with pytest.raises(ValueError, match="no LoRA folder is set.*DIFFRAME_LORA_DIR"):
        generate(pipe, "a cat <lora:glow:1>")
    monkeypatch.setenv("DIFFRAME_LORA_DIR", str(lora_dir))
    generate(pipe, "a cat <lora:glow:1>")
    with pytest.raises(ValueError, match="no LoRA named 'inkwsh'.*close names: inkwash"):
        generate(pipe, "a cat <lora:inkwsh:1>")
    with pytest.raises(ValueError, match="different LoRAs"):
        generate(pipe, ["a <lora:glow:1>", "a <lora:glow:0.5>"])
    assert pipe.lora_weights == {}


def embedding_files(tmp_path):
    generator = torch.Generator().manual_seed(9)
    webui = tmp_path / "inkstyle.safetensors"
    save_file({"emb_params": torch.randn(3, 32, generator=generator)}, webui)  # 3 vectors
    learned = tmp_path / "learned_embeds.safetensors"
    save_file({"<bad-hands>": torch.randn(32, generator=generator)}, learned)
    legacy = tmp_path / "legacy.pt"
    torch.save({"string_to_param": {"*": torch.randn(2, 32, generator=generator)}, "name": "<legacy>"}, legacy)
    return webui, learned, legacy


def test_textual_inversion_parity_with_the_reference(h, framework, tiny_model, tmp_path):
    import diffusers

    webui, learned, legacy = embedding_files(tmp_path)
    pipe = h.build(framework, tiny_model, scheduler="dpmpp")
    reference = diffusers.StableDiffusionPipeline.from_pretrained(
        tiny_model, safety_checker=None, requires_safety_checker=False
    )
    reference.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        pipe.load_textual_inversion(legacy)
    assert pipe.load_textual_inversion([webui, learned]) == ["inkstyle", "<bad-hands>"]
    assert pipe.load_textual_inversion(legacy, allow_pickle=True) == ["<legacy>"]
    reference.load_textual_inversion(webui, token="inkstyle")
    reference.load_textual_inversion(learned)
    reference.load_textual_inversion(legacy, token="<legacy>")
    prompt, negative = "a cat, inkstyle, <legacy>", "<bad-hands>, blurry"
    ours = generate(pipe, prompt, negative_prompt=negative)
    theirs = reference(
        prompt, negative_prompt=negative, generator=h.generators([4]), num_inference_steps=STEPS, output_type="np"
    ).images
    assert float(np.abs(ours.images - theirs).max()) <= 1e-4
    assert set(ours.parameters[0].ti_hashes) == {"inkstyle", "<legacy>", "<bad-hands>"}
    assert pipe.textual_inversions == {"inkstyle": 3, "<bad-hands>": 1, "<legacy>": 2}

    rows = pipe.text_encoder.get_input_embeddings().weight.shape[0]
    with pytest.raises(ValueError, match="'inkstyle' is in the tokenizer already"):
        pipe.load_textual_inversion(webui)
    wide = tmp_path / "wide.safetensors"
    save_file({"emb_params": torch.zeros(1, 768)}, wide)
    with pytest.raises(ModelLoadError, match="width 768.*another base model"):
        pipe.load_textual_inversion(wide)
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == rows
    pipe.unload_textual_inversion()
    assert len(pipe.tokenizer) == 49408 and pipe.textual_inversions == {}


def run(*argv: str) -> int:
    from difframe.cli import main

    return main(list(argv))


def test_cli_reproduces_lora_and_embedding_images(tiny_model, lora_dir, tmp_path, capsys):
    webui, _, _ = embedding_files(tmp_path)
    out, again = tmp_path / "out", tmp_path / "again"
    common = ("--no-progress", "-m", str(tiny_model), "--steps", "2", "--size", "32")
    prompt = "a cat, inkstyle <lora:glow:0.6>"
    assert run("generate", prompt, "--seed", "5", "--lora-dir", str(lora_dir), "--embedding", str(webui),
               "-o", str(out), *common) == 0  # fmt: skip
    [first] = out.glob("*.png")
    text = Image.open(first).text["parameters"]
    assert text.startswith(prompt) and 'Lora hashes: "glow: ' in text and "TI hashes" in text
    assert run("generate", "--from-png", str(first), "-o", str(again), *common) == 2
    assert "no LoRA folder is set" in capsys.readouterr().err
    assert run("generate", "--from-png", str(first), "--lora-dir", str(lora_dir), "-o", str(again), *common) == 2
    assert "pass it with --embedding inkstyle=FILE" in capsys.readouterr().err
    ok = run("generate", "--from-png", str(first), "--lora-dir", str(lora_dir), "--embedding", f"inkstyle={webui}",
             "-o", str(again), *common)  # fmt: skip
    assert ok == 0
    [copy] = again.glob("*.png")
    assert np.array_equal(np.asarray(Image.open(copy)), np.asarray(Image.open(first)))
    assert Image.open(copy).text["parameters"] == text
    save_file(lora_for(h_pipe(tiny_model), 3), lora_dir / "glow.safetensors")  # another file under the same name
    assert run("generate", "--from-png", str(first), "--lora-dir", str(lora_dir), "--embedding", f"inkstyle={webui}",
               "-o", str(again), *common) == 2  # fmt: skip
    assert "the image was made with" in capsys.readouterr().err


def h_pipe(model):
    from difframe import Framework

    return Framework().build("stable-diffusion", model=model)


def test_cli_refuses_web_ui_fields_it_cannot_reproduce(tiny_model, tmp_path, capsys):
    png = tmp_path / "webui.png"
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_text(
        "parameters",
        "a cat\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 32x32, Hires upscale: 2, "
        "Hires upscaler: Latent, Version: v1.10.1",
    )
    Image.new("RGB", (32, 32)).save(png, pnginfo=info)
    assert run("generate", "--from-png", str(png), "-m", str(tiny_model), "-o", str(tmp_path / "o")) == 2
    assert "Hires upscale: 2; Hires upscaler: Latent" in capsys.readouterr().err


def test_single_file_models_record_the_web_ui_model_hash(h, framework, tiny_model, tmp_path):
    import hashlib

    checkpoint = tmp_path / "tiny.safetensors"
    h.build(framework, tiny_model).save_single_file(checkpoint)
    pipe = h.build(framework, checkpoint, config=str(tiny_model))
    params = generate(pipe, "a cat").parameters[0]
    assert params.extra["Model hash"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]


def test_calls_with_and_without_tags_from_several_threads(h, framework, tiny_model, lora_dir):
    """A call with <lora:...> changes shared layers: it runs alone, and no other call sees its LoRA."""
    from concurrent.futures import ThreadPoolExecutor

    pipe = h.build(framework, tiny_model, lora_dir=lora_dir)
    prompts = ["a cat <lora:glow:1>", "a cat", "a cat <lora:inkwash:0.5>", "a cat"] * 2
    expected = [generate(pipe, p).images for p in prompts[:4]] * 2
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: generate(pipe, p).images, prompts))
    for got, want in zip(results, expected):
        assert np.array_equal(got, want)
    assert pipe.lora_weights == {}

"""Single-file checkpoints (the original LDM layout): our writer is read by the reference library's own
``from_single_file`` as exactly the folder's weights; our reader gives the folder's UNet outputs and images bit for
bit; round trips keep every tensor; the architecture is inferred from shapes; bad files get clear errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from difframe.errors import ModelLoadError
from difframe_stable_diffusion.testing import TEXT_TINY, UNET_TINY
from safetensors.torch import load_file, save_file

# SD 2.x's shape of things: linear projections in the UNet's attention, an OpenCLIP (exact GELU) text encoder
TINY_SD2 = dict(unet={**UNET_TINY, "use_linear_projection": True}, text={**TEXT_TINY, "hidden_act": "gelu"})
CALL = dict(num_inference_steps=3, guidance_scale=7.5, height=32, width=32, output_type="np")


@pytest.fixture(scope="module")
def sd2_model(h, tmp_path_factory) -> Path:
    return h.write_reference_model(tmp_path_factory.mktemp("sd2") / "tiny-sd2", seed=2, **TINY_SD2)


@pytest.fixture(scope="module")
def models(tiny_model, tiny_inpaint_model, sd2_model) -> dict[str, tuple[Path, str]]:
    return {"sd1": (tiny_model, "text"), "sd2": (sd2_model, "text"), "inpainting": (tiny_inpaint_model, "inpaint")}


def _pipeline_name(kind: str) -> str:
    return {"text": "stable-diffusion", "inpaint": "stable-diffusion-inpaint"}[kind]


def _saved(h, framework, folder: Path, kind: str) -> Path:
    path = folder.parent / f"{folder.name}.safetensors"
    if not path.exists():
        h.build(framework, folder, _pipeline_name(kind)).save_single_file(path)
    return path


def _reference_from_file(path: Path, folder: Path, kind: str):
    import diffusers

    cls = diffusers.StableDiffusionInpaintPipeline if kind == "inpaint" else diffusers.StableDiffusionPipeline
    pipe = cls.from_single_file(str(path), config=str(folder), local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", ["sd1", "sd2", "inpainting"])
def test_reference_reads_our_file_as_the_folders_weights(h, framework, models, name):
    """The reference's own single-file conversion, run on our file, gives back every tensor of the folder."""
    import diffusers

    folder, kind = models[name]
    path = _saved(h, framework, folder, kind)
    keys = load_file(path)
    if name == "sd2":
        assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys  # OpenCLIP layout
    else:
        assert "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight" in keys
    theirs = _reference_from_file(path, folder, kind)
    saved = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    for part in ("unet", "vae", "text_encoder"):
        expected, got = getattr(saved, part).state_dict(), getattr(theirs, part).state_dict()
        assert expected.keys() == got.keys(), part
        different = [key for key in expected if not torch.equal(expected[key], got[key])]
        assert not different, f"{part}: {different[:5]}"


@pytest.mark.parametrize("name", ["sd1", "sd2", "inpainting"])
def test_file_and_folder_give_identical_outputs_and_reference_agrees(h, framework, models, name):
    folder, kind = models[name]
    path = _saved(h, framework, folder, kind)
    pipeline = _pipeline_name(kind)
    from_folder = h.build(framework, folder, pipeline, scheduler="dpmpp")
    from_file = h.build(framework, path, pipeline, scheduler="dpmpp", config=folder)
    assert from_file.single_file.architecture == f"config:{folder}"

    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, from_file.unet.config.in_channels, 8, 8, generator=generator)
    context = torch.randn(2, 77, 32, generator=generator)
    with torch.no_grad():
        assert torch.equal(from_file.unet(sample, 500, context), from_folder.unet(sample, 500, context))

    call = dict(CALL)
    if kind == "inpaint":
        call |= dict(image=h.make_image(32), mask_image=h.make_mask(32))
    ours = from_file("a red cube", seed=3, **call).images
    assert np.array_equal(ours, from_folder("a red cube", seed=3, **call).images)

    import diffusers

    theirs = _reference_from_file(path, folder, kind)
    theirs.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(theirs.scheduler.config)
    images = theirs("a red cube", generator=h.generators([3]), **call).images
    assert float(np.abs(ours - images).max()) <= 1e-4


def test_round_trip_keeps_every_tensor_bit_for_bit(h, framework, tiny_model, tmp_path):
    """Tensors the models do not use (EMA weights, schedule buffers, position ids) are written back as they were."""
    path = _saved(h, framework, tiny_model, "text")
    original = load_file(path)
    unused = {
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.diffusion_modelinput_blocks00weight": torch.randn(32, 4, 3, 3),
        "alphas_cumprod": torch.linspace(1, 0, 1000, dtype=torch.float64),
        "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None],
    }
    source = tmp_path / "with-extras.safetensors"
    save_file({**original, **unused}, source)

    pipe = h.build(framework, source, config=tiny_model)
    assert sorted(pipe.single_file.unused) == sorted(unused)
    first = pipe.save_single_file(tmp_path / "again.safetensors")
    again = h.build(framework, first, config=tiny_model).save_single_file(tmp_path / "twice.safetensors")
    for written in (first, again):
        tensors = load_file(written)
        assert tensors.keys() == {**original, **unused}.keys()
        for key, tensor in {**original, **unused}.items():
            assert tensors[key].dtype == tensor.dtype and torch.equal(tensors[key], tensor), key


def test_sd2_round_trip_fuses_qkv_back_and_keeps_unused_layers(h, framework, sd2_model, tmp_path):
    path = _saved(h, framework, sd2_model, "text")
    original = load_file(path)
    extra_layer = {  # a layer past the ones the text encoder uses (SD 2.x ships OpenCLIP's 24th, unused)
        k.replace("resblocks.0.", "resblocks.9."): v.clone() for k, v in original.items() if ".resblocks.0." in k
    }
    source = tmp_path / "sd2-extra.safetensors"
    save_file({**original, **extra_layer}, source)
    pipe = h.build(framework, source, config=sd2_model)
    assert pipe.single_file.text_layout == "openclip" and sorted(pipe.single_file.unused) == sorted(extra_layer)
    tensors = load_file(pipe.save_single_file(tmp_path / "out.safetensors"))
    assert tensors.keys() == {**original, **extra_layer}.keys()
    assert all(torch.equal(tensors[k], v) for k, v in {**original, **extra_layer}.items())


def test_saving_over_the_loaded_file_and_in_half_precision(h, framework, tiny_model, tmp_path):
    """The file a pipeline was loaded from (and still maps) can be replaced by its own save; fp16 halves it."""
    import shutil

    path = tmp_path / "model.safetensors"
    shutil.copy(_saved(h, framework, tiny_model, "text"), path)
    original = load_file(path)
    pipe = h.build(framework, path, config=tiny_model)
    pipe.save_single_file(path)
    rewritten = load_file(path)
    assert rewritten.keys() == original.keys() and all(torch.equal(rewritten[k], v) for k, v in original.items())

    half = load_file(pipe.save_single_file(tmp_path / "half.safetensors", dtype=torch.float16))
    assert all(half[k].dtype == torch.float16 and torch.equal(half[k], v.half()) for k, v in original.items())
    in_half = h.build(framework, path, config=tiny_model, dtype=torch.float16)
    assert {in_half.unet.dtype, in_half.vae.dtype, in_half.text_encoder.dtype} == {torch.float16}
    assert torch.equal(in_half.unet.conv_in.weight, original["model.diffusion_model.input_blocks.0.0.weight"].half())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.safetensors", "model.safetensors"]  # no leftovers


def test_components_given_as_instances_replace_the_files(h, framework, tiny_model, tmp_path):
    path = _saved(h, framework, tiny_model, "text")
    without_vae = {k: v for k, v in load_file(path).items() if not k.startswith("first_stage_model.")}
    save_file(without_vae, tmp_path / "no-vae.safetensors")
    folder = h.build(framework, tiny_model)
    pipe = h.build(framework, tmp_path / "no-vae.safetensors", config=tiny_model, vae=folder.vae)
    assert pipe.vae is folder.vae and not pipe.single_file.unused
    replaced = h.build(framework, path, config=tiny_model, text_encoder=folder.text_encoder)
    assert replaced.text_encoder is folder.text_encoder
    assert not any(k.startswith("cond_stage_model.") for k in replaced.single_file.unused)  # not written twice


def test_v_prediction_models_are_marked(h, framework, tiny_model, tmp_path):
    pipe = h.build(framework, tiny_model)
    pipe.scheduler = framework.scheduler("ddim", {**pipe.scheduler.config, "prediction_type": "v_prediction"})
    path = pipe.save_single_file(tmp_path / "v.safetensors")
    assert load_file(path)["v_pred"].numel() == 0
    loaded = h.build(framework, path, config=tiny_model)  # the folder says epsilon: used, and the clash said
    assert "marked v-prediction" in loaded.single_file.assumptions[0]


def test_text_encoder_keys_without_text_model_prefix(h, framework, tiny_model, tmp_path):
    """Checkpoints written with another transformers version name the text encoder without ``text_model.``."""
    path = _saved(h, framework, tiny_model, "text")
    flat = {k.replace("transformer.text_model.", "transformer."): v for k, v in load_file(path).items()}
    save_file(flat, tmp_path / "flat.safetensors")
    pipe = h.build(framework, tmp_path / "flat.safetensors", config=tiny_model)
    reference = h.build(framework, tiny_model)
    assert pipe.single_file.text_layout == "clip-flat"
    ours, theirs = pipe.text_encoder.state_dict(), reference.text_encoder.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_ckpt_needs_allow_pickle_and_loads_weights_only(h, framework, tiny_model, tmp_path):
    path = _saved(h, framework, tiny_model, "text")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(path), "global_step": 10}, ckpt)
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        h.build(framework, ckpt, config=tiny_model)
    pipe = h.build(framework, ckpt, config=tiny_model, allow_pickle=True)
    reference = h.build(framework, tiny_model)
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), reference.unet.state_dict().values()))

    import argparse  # training checkpoints often pickle their hyper-parameters: not tensors, so refused

    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=1)}, tmp_path / "code.ckpt")
    with pytest.raises(ModelLoadError, match="objects other than tensors"):
        h.build(framework, tmp_path / "code.ckpt", allow_pickle=True)


def test_loading_does_not_copy_the_weights(h, framework, tiny_model):
    """fp32 weights stay views of the memory-mapped file: no second copy in memory."""
    path = _saved(h, framework, tiny_model, "text")
    pipe = h.build(framework, path, config=tiny_model)
    file = load_file(path)  # maps the same file: same bytes, a different mapping
    conv = pipe.unet.conv_in.weight
    assert torch.equal(conv, file["model.diffusion_model.input_blocks.0.0.weight"])
    before = conv.untyped_storage().data_ptr()
    pipe.unet.to(torch.float32)  # a no-op move keeps the mapping
    assert conv.untyped_storage().data_ptr() == before
    assert not conv.untyped_storage().resizable()  # a file mapping, not memory torch allocated


@pytest.mark.parametrize("sd2", [False, True])
def test_our_names_are_the_references_names_at_full_size(sd2):
    """The reference's own LDM readers, run on one-element tensors tagged by their key, place every tensor where our
    table says, for the full SD 1.5 / 2.x UNet and VAE and both text encoder layouts (no full-size memory)."""
    import diffusers
    from difframe_stable_diffusion import ldm_layout
    from diffusers.loaders import single_file_utils as reference
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config = dict(cross_attention_dim=1024, use_linear_projection=True) if sd2 else {}
    vae_config = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2)
    vae_config |= dict(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**unet_config)
        vae = diffusers.AutoencoderKL(**vae_config)
    layout = "openclip" if sd2 else "clip"
    encoder = CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=16, num_attention_heads=2))
    tables = {
        "unet": ldm_layout.unet_table(unet.state_dict(), 2, unet.config.up_block_types),
        "vae": ldm_layout.vae_table(vae.state_dict(), 4),
        "text": ldm_layout.text_table(encoder.state_dict(), layout),
    }
    checkpoint, tags = {}, {}
    for part, table in tables.items():
        for name, source in table.items():
            if source.key not in checkpoint:
                shape = (1, 1, 1, 1) if ".attn_1." in source.key and source.key.endswith("weight") else (1,)
                if source.part is not None:
                    shape = (3 * 8, 1) if source.key.endswith("weight") else (3 * 8,)
                tag = float(len(checkpoint))
                checkpoint[source.key] = torch.full(shape, tag)
                if source.part is not None:
                    checkpoint[source.key] = tag + torch.arange(3.0).repeat_interleave(8).reshape(shape) / 4
            value = checkpoint[source.key]
            tags[(part, name)] = value.chunk(3)[source.part] if source.part is not None else value

    converted = {
        "unet": reference.convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)),
        "vae": reference.convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)),
        "text": reference.convert_open_clip_checkpoint(encoder, checkpoint)
        if sd2
        else reference.convert_ldm_clip_checkpoint(checkpoint),
    }
    for part, table in tables.items():
        theirs = {ldm_layout.strip_text_model(k): v for k, v in converted[part].items()}
        ours = {ldm_layout.strip_text_model(k) for k in table}
        assert ours <= theirs.keys(), f"{part}: {sorted(ours - theirs.keys())[:5]}"
        for name in table:
            got = theirs[ldm_layout.strip_text_model(name)]
            assert torch.equal(got.reshape(-1), tags[(part, name)].reshape(-1)), f"{part} {name}"


# --- the architecture from keys and shapes (full-size models on the meta device: no memory) ----------------------
def _meta_file(tmp_path: Path, *, sd2: bool, in_channels: int = 4, text_layers: int | None = None, marker=False):
    """What CheckpointFile gives the loader (names and shapes) for a full-size SD 1.5 / 2.x checkpoint."""
    import diffusers
    from difframe_stable_diffusion import ldm_layout
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_config = dict(in_channels=in_channels, cross_attention_dim=768)
    text = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
    if sd2:
        unet_config |= dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
        text = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=text_layers)
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**unet_config)
        vae = diffusers.AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
        encoder = CLIPTextModel(CLIPTextConfig(**text))
    shapes = {}
    tables = [
        (unet, ldm_layout.unet_table(unet.state_dict(), 2, unet.config.up_block_types)),
        (vae, ldm_layout.vae_table(vae.state_dict(), 4)),
        (encoder, ldm_layout.text_table(encoder.state_dict(), "openclip" if sd2 else "clip")),
    ]
    for model, table in tables:
        state = model.state_dict()
        for name, source in table.items():
            shape = tuple(state[name].shape)
            if source.part is not None:
                shape = (shape[0] * 3, *shape[1:])
            if ".mid.attn_1." in source.key and len(shape) == 2:
                shape = (*shape, 1, 1)
            shapes[source.key] = shape
    if marker:
        shapes["v_pred"] = (0,)

    class Header:
        path = tmp_path / "model.safetensors"
        extra: ClassVar[dict] = {}

        def has(self, prefix):
            return any(k.startswith(prefix) for k in shapes)

    header = Header()
    header.shapes = shapes
    return header, unet.config, encoder.config


def test_sd15_architecture_is_inferred_from_shapes(tmp_path):
    from difframe_stable_diffusion.single_file import make_plan, text_layout

    header, unet, _ = _meta_file(tmp_path, sd2=False)
    plan = make_plan(header, None, text_layout(header))
    assert plan.architecture == "sd1" and plan.inferred and not plan.assumptions
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "in_channels"):
        assert list(plan.unet[key]) == list(unet[key]) if isinstance(unet[key], tuple) else plan.unet[key] == unet[key]
    assert plan.unet["attention_head_dim"] == 8 and plan.unet["use_linear_projection"] is False
    assert plan.text["num_hidden_layers"] == 12 and plan.text["hidden_act"] == "quick_gelu"
    assert plan.vae["block_out_channels"] == [128, 256, 512, 512] and plan.scheduler[1]["prediction_type"] == "epsilon"
    del header.shapes["model.diffusion_model.out.2.weight"]
    with pytest.raises(ModelLoadError, match="lacks 'model.diffusion_model.out.2.weight'.*damaged or incomplete"):
        make_plan(header, None, "clip")


@pytest.mark.parametrize("sampler", ["dpmpp", "euler", "ddim", "pndm"])
def test_family_noise_schedule_is_the_releases(framework, tiny_model, sampler):
    """A family's sampler settings equal those a SD 1.5 folder's scheduler_config.json gives (timestep spacing
    included: DPM++'s own default would differ)."""
    import json

    from difframe_stable_diffusion.single_file import SD_SCHEDULE

    folder = json.loads((tiny_model / "scheduler" / "scheduler_config.json").read_text())
    ours = dict(framework.scheduler(sampler, {**SD_SCHEDULE, "prediction_type": "epsilon"}).config)
    theirs = dict(framework.scheduler(sampler, {k: v for k, v in folder.items() if not k.startswith("_")}).config)
    ours.pop("clip_sample", None), theirs.pop("clip_sample", None)  # the pipeline turns legacy clip_sample off
    assert ours == theirs


def test_sd2_inferred_v_prediction_is_said_and_can_be_named(tmp_path):
    from difframe_stable_diffusion.single_file import make_plan, text_layout

    header, _, _ = _meta_file(tmp_path, sd2=True, text_layers=24)  # OpenCLIP ViT-H as SD 2.x ships it
    plan = make_plan(header, None, text_layout(header))
    assert plan.architecture == "sd2-v" and plan.scheduler[1]["prediction_type"] == "v_prediction"
    assert "config='sd2-base'" in plan.assumptions[0]
    assert plan.unet["attention_head_dim"] == [5, 10, 20, 20] and plan.unet["use_linear_projection"] is True
    assert plan.text["num_hidden_layers"] == 23 and plan.text["hidden_act"] == "gelu"
    with pytest.raises(ModelLoadError, match="1024 wide, but Stable Diffusion 1.x reads 768-wide"):
        make_plan(header, "sd1", "openclip")
    named = make_plan(header, "sd2-base", "openclip")
    assert named.scheduler[1]["prediction_type"] == "epsilon" and not named.inferred and named.unet["sample_size"] == 64

    marked, _, _ = _meta_file(tmp_path, sd2=True, text_layers=23, marker=True)
    plan = make_plan(marked, None, "openclip")
    assert plan.architecture == "sd2-v" and not plan.assumptions
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    parameterization: eps\n")
    assert make_plan(header, None, "openclip").architecture == "sd2-base"


@pytest.mark.parametrize("sd2", [False, True])
def test_inpainting_variants_are_inferred(tmp_path, sd2):
    from difframe_stable_diffusion.single_file import make_plan, text_layout

    header, _, _ = _meta_file(tmp_path, sd2=sd2, in_channels=9, text_layers=24)
    plan = make_plan(header, None, text_layout(header))
    assert plan.architecture == ("sd2-inpainting" if sd2 else "sd1-inpainting") and plan.unet["in_channels"] == 9


# --- bad input -------------------------------------------------------------------------------------------------
def test_bad_files_are_refused_by_name(h, framework, tiny_model, tiny_inpaint_model, tmp_path):
    def refused(path, match, **options):
        with pytest.raises(ModelLoadError, match=match):
            h.build(framework, path, **options)

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"<html>404 not found</html>")
    refused(junk, "not a readable .safetensors")
    save_file({"weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    refused(tmp_path / "other.safetensors", r"not a Stable Diffusion checkpoint.*first keys: weight")
    sdxl = {
        "conditioner.embedders.1.model.positional_embedding": torch.zeros(1),
        "model.diffusion_model.x": torch.zeros(1),
    }
    save_file(sdxl, tmp_path / "sdxl.safetensors")
    refused(tmp_path / "sdxl.safetensors", "is an SDXL checkpoint")
    save_file(
        {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(1)}, tmp_path / "sd3.safetensors"
    )
    refused(tmp_path / "sd3.safetensors", "Stable Diffusion 3")
    save_file(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(1)}, tmp_path / "l.safetensors"
    )
    refused(tmp_path / "l.safetensors", "is a LoRA")
    save_file({"<cat-toy>": torch.zeros(768)}, tmp_path / "learned_embeds.safetensors")
    refused(tmp_path / "learned_embeds.safetensors", "textual inversion embedding")

    path = _saved(h, framework, tiny_model, "text")
    refused(path, r"not one this version can infer.*config=", scheduler="dpmpp")  # tiny: heads not in the shapes
    refused(path, "neither a model folder nor a known family", config="sd9")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    refused(tmp_path / "model.gguf", "unknown checkpoint type '.gguf'")
    inpaint = _saved(h, framework, tiny_inpaint_model, "inpaint")
    refused(inpaint, "inpainting checkpoint.*stable-diffusion-inpaint", config=tiny_inpaint_model)
    without_vae = {k: v for k, v in load_file(path).items() if not k.startswith("first_stage_model.")}
    save_file(without_vae, tmp_path / "no-vae.safetensors")
    refused(tmp_path / "no-vae.safetensors", r"lacks the VAE .*pass vae=", config=tiny_model)
    with pytest.raises(TypeError, match="variant"):
        h.build(framework, path, config=tiny_model, variant="fp16")


def test_misshapen_file_names_the_key_before_reading_weights(h, framework, tiny_model, sd2_model):
    """The SD 2 folder's config does not fit the SD 1 file: the message names the file key and both shapes."""
    path = _saved(h, framework, tiny_model, "text")
    with pytest.raises(ModelLoadError) as error:
        h.build(framework, path, config=sd2_model)
    assert re.search(r"(missing|wrong shape).*cond_stage_model|model\.diffusion_model", str(error.value))


def test_cli_generates_from_a_single_file(h, framework, tiny_model, tmp_path, capsys):
    from difframe.cli import main

    path = _saved(h, framework, tiny_model, "text")
    common = ["generate", "a cube", "--model", str(path), "--steps", "2", "--size", "32", "--seed", "1"]
    code = main([*common, "--model-config", str(tiny_model), "-o", str(tmp_path), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"{path.name}: architecture from the model folder" in captured.err
    assert len(list(tmp_path.glob("*.png"))) == 1
    assert main([*common, "-o", str(tmp_path)]) == 2
    assert "config=" in capsys.readouterr().err


# --- the full Stable Diffusion 1.5 architecture (random weights) ------------------------------------------------
@pytest.mark.slow
def test_sd15_single_file_inferred_matches_folder_and_reference(h, framework, sd15_model, tmp_path):
    """Loaded with nothing but the file (architecture inferred), SD 1.5 gives the folder's images exactly, and
    the reference's from_single_file (given the folder as config, offline) agrees within 1e-4."""
    import gc

    import diffusers

    folder = sd15_model
    path = tmp_path / "sd15-random.safetensors"
    call = dict(height=128, width=128, num_inference_steps=2, guidance_scale=7.5, output_type="np")
    from_folder = h.build(framework, folder, scheduler="dpmpp")
    from_folder.save_single_file(path)
    expected = from_folder("a fox", seed=5, **call).images
    del from_folder
    gc.collect()

    pipe = h.build(framework, path, scheduler="dpmpp")
    assert pipe.single_file.architecture == "sd1" and pipe.single_file.inferred
    ours = pipe("a fox", seed=5, **call).images
    assert np.array_equal(ours, expected)
    del pipe
    gc.collect()

    theirs = diffusers.StableDiffusionPipeline.from_single_file(
        str(path), config=str(folder), local_files_only=True, safety_checker=None
    )
    theirs.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)
    images = theirs("a fox", generator=h.generators([5]), **call).images
    assert float(np.abs(ours - images).max()) <= 1e-4

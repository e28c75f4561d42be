"""Bad input: clear errors before denoising, naming what is wrong."""

from __future__ import annotations

import pytest
import torch
from difframe.attention import attention_modules
from difframe_ip_adapter.adapter import adapter_from_state_dict, attach, expand_scale, set_scales
from difframe_ip_adapter.testing import SD1_TINY, VISION_TINY, colour_image, published_state, write_adapter_folder
from safetensors.torch import save_file

OTHER_UNET = {**SD1_TINY, "layers_per_block": 1}


def _split(flat):
    parts = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        parts[prefix][rest] = value
    return parts


@pytest.fixture(scope="module")
def unet():
    from difframe_sd_unet.unet import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**SD1_TINY).eval()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from difframe_clip import write_tokenizer_folder
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    text = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408)
    StableDiffusionPipeline(
        vae=AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=32),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        tokenizer=CLIPTokenizer.from_pretrained(write_tokenizer_folder(root / "tok")),
        unet=UNet2DConditionModel(**SD1_TINY), scheduler=DPMSolverMultistepScheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(root / "model")  # fmt: skip
    return root / "model"


def _pipe(model):
    from difframe import Framework

    pipe = Framework().build("stable-diffusion", model=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_keys_that_do_not_fit_name_the_layer(unet):
    state = _split(published_state(OTHER_UNET, "plain"))  # fewer cross-attention layers
    with pytest.raises(
        ValueError, match=r"no weights for the UNet's layer up_blocks\.1\.attentions\.2\.transformer_blocks\.0\.attn2"
    ):
        adapter_from_state_dict(state, unet, "small.safetensors")
    state = _split(published_state(SD1_TINY, "plain"))
    state["ip_adapter"]["3.to_v_ip.weight"] = torch.zeros(16, 32)
    with pytest.raises(ValueError, match=r"ip_adapter\.3\.to_v_ip\.weight has shape \(16, 32\).*down_blocks\.0\."):
        adapter_from_state_dict(state, unet, "wrong.safetensors")
    state = _split(published_state(SD1_TINY, "plain"))
    state["ip_adapter"]["13.to_k_ip.weight"] = state["ip_adapter"]["1.to_k_ip.weight"]
    with pytest.raises(ValueError, match=r"layers this UNet does not have \(ip_adapter\.13"):
        adapter_from_state_dict(state, unet, "big.safetensors")


def test_scale_dict_naming_missing_blocks(unet):
    adapter = adapter_from_state_dict(_split(published_state(SD1_TINY, "plain")), unet, "a")
    addons = attach(unet, [adapter])
    with pytest.raises(ValueError, match=r"up\.block_0, which has no cross-attention.*block_1"):
        set_scales(addons, {"up": {"block_0": [0.0, 1.0, 0.0]}})
    with pytest.raises(ValueError, match=r"up\.block_1 has 2 values; that block has 3 attentions"):
        set_scales(addons, {"up": {"block_1": [0.0, 1.0]}})
    with pytest.raises(ValueError, match="'down', 'mid' and 'up'"):
        expand_scale({"middle": 1.0}, list(addons))
    with pytest.raises(ValueError, match="2 IP-Adapter scales for 1 loaded"):
        set_scales(addons, [1.0, 0.5])


def test_pipeline_errors_before_denoising(model, tmp_path):
    adapters = write_adapter_folder(tmp_path / "adapters", SD1_TINY, kinds=("plain", "plus"))
    pipe = _pipe(model)
    with pytest.raises(ValueError, match="no IP-Adapter is loaded"):
        pipe("a cat", ip_adapter_image=colour_image(), num_inference_steps=1)
    pipe.load_ip_adapter(adapters, subfolder="models", weight_name="ip-adapter-plain.safetensors")
    steps = []

    def count(pipe, step, t, tensors):
        steps.append(step)

    kwargs = dict(num_inference_steps=2, callback_on_step_end=count, output_type="np")
    with pytest.raises(ValueError, match="pass ip_adapter_image="):
        pipe("a cat", **kwargs)
    # several images for one adapter are fine; one entry per adapter for several
    pipe.load_ip_adapter(
        adapters, subfolder="models", weight_name=["ip-adapter-plain.safetensors", "ip-adapter-plus.safetensors"]
    )
    with pytest.raises(ValueError, match="3 entries for 2 IP-Adapters"):
        pipe("a cat", ip_adapter_image=[colour_image()] * 3, **kwargs)
    with pytest.raises(ValueError, match="1 ip_adapter_image_embeds for 2 IP-Adapters"):
        pipe("a cat", ip_adapter_image_embeds=[torch.zeros(2, 1, 16)], **kwargs)
    wrong = [torch.ones(1, 1, 16, 16), None]
    with pytest.raises(ValueError, match=r"ip_adapter_masks\[0\] is 16x16 but the images are 32x32"):
        pipe("a cat", ip_adapter_image=[colour_image(), colour_image()], ip_adapter_masks=wrong, **kwargs)
    with pytest.raises(ValueError, match="give 1 \\(for every image\\), one per prompt"):
        pipe(["a", "b", "c"], ip_adapter_image=[[[colour_image()]] * 2, colour_image()], **kwargs)
    assert steps == []


def test_missing_or_unfit_image_encoder(model, tmp_path):
    adapters = write_adapter_folder(tmp_path / "adapters", SD1_TINY, kinds=("plain", "plus"))
    bare = tmp_path / "bare"
    bare.mkdir()
    save_file(published_state(SD1_TINY, "plain"), bare / "ip.safetensors")
    pipe = _pipe(model)
    with pytest.raises(FileNotFoundError, match=r"no image encoder at .*image_encoder"):
        pipe.load_ip_adapter(bare, weight_name="ip.safetensors")
    with pytest.raises(ValueError, match="image_encoder_folder is None"):
        pipe.load_ip_adapter(bare, weight_name="ip.safetensors", image_encoder_folder=None)
    # a Plus checkpoint with an image encoder whose hidden states are not the width it reads
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    other = CLIPVisionModelWithProjection(CLIPVisionConfig(**{**VISION_TINY, "hidden_size": 40}))
    other.save_pretrained(adapters / "models" / "other_encoder")
    with pytest.raises(ValueError, match=r"\(plus\) reads 24-wide hidden states.*gives 40"):
        pipe.load_ip_adapter(
            adapters,
            subfolder="models",
            weight_name="ip-adapter-plus.safetensors",
            image_encoder_folder="other_encoder",
        )
    assert pipe.image_encoder is None
    assert all(m.addon is None for _, m in attention_modules(pipe.unet))  # nothing attached


def test_cli_image_prompt(model, tmp_path, capsys):
    from difframe.cli import main

    adapters = write_adapter_folder(tmp_path / "adapters", SD1_TINY)
    colour_image().save(tmp_path / "ref.png")
    file = str(adapters / "models" / "ip-adapter-plain.safetensors")
    argv = ["generate", "a cat", "-m", str(model), "--steps", "2", "--seed", "1", "--no-progress"]
    argv += ["--size", "32", "-o", str(tmp_path / "out")]
    assert main([*argv, "--ip-image", str(tmp_path / "ref.png")]) == 2
    assert "--ip-adapter FILE and --ip-image IMAGE go together" in capsys.readouterr().err
    # the image encoder sits in image_encoder/ beside the file
    assert main([*argv, "--ip-adapter", file, "--ip-image", str(tmp_path / "ref.png"), "--ip-scale", "0.5"]) == 0
    made = capsys.readouterr().out.strip()
    assert made.endswith(".png")
    from PIL import Image

    with Image.open(made) as image:
        assert 'IP-Adapter: "ip-adapter-plain.safetensors (scale: 0.5)"' in image.info["parameters"] or (
            "IP-Adapter: ip-adapter-plain.safetensors (scale 0.5)" in image.info["parameters"]
        )
    assert main(["generate", "--from-png", made, "-o", str(tmp_path / "again"), "--no-progress"]) == 2
    assert "made with an image prompt" in capsys.readouterr().err

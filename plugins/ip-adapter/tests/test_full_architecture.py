"""The full Stable Diffusion 1.5 architecture (random weights) with a plain and a Plus adapter at the published
SD 1.5 sizes (ViT-H widths: 1024-wide embeddings, 1280-wide hidden states): our images equal the reference's."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch


@pytest.mark.slow
def test_sd15_two_adapters_match_reference(tmp_path):
    import diffusers
    from difframe import Framework
    from difframe_clip import write_tokenizer_folder
    from difframe_ip_adapter.testing import colour_image, write_adapter_folder
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet_config = {"sample_size": 64, "cross_attention_dim": 768}
    torch.manual_seed(0)
    text = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                projection_dim=768, vocab_size=49408, hidden_act="quick_gelu")  # fmt: skip
    diffusers.StableDiffusionPipeline(
        vae=diffusers.AutoencoderKL(
            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512,
        ),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        tokenizer=CLIPTokenizer.from_pretrained(write_tokenizer_folder(tmp_path / "tokenizer")),
        unet=diffusers.UNet2DConditionModel(**unet_config),
        scheduler=diffusers.DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                        beta_end=0.012),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(tmp_path / "sd15")  # fmt: skip
    gc.collect()
    vision = dict(hidden_size=1280, projection_dim=1024, intermediate_size=1280, num_attention_heads=16,
                  num_hidden_layers=1, image_size=64, patch_size=16)  # fmt: skip
    adapters = write_adapter_folder(tmp_path / "adapters", unet_config, ("plain",), vision=vision)
    # Plus at the published size: 16 queries, width 768 (12 heads), from 1280-wide hidden states
    from difframe_ip_adapter.testing import published_state
    from safetensors.torch import save_file

    plus = published_state(unet_config, "plus", seed=1, embed_dim=1280, queries=16, plus_width=768)
    save_file(plus, adapters / "models" / "ip-adapter-plus.safetensors")
    weights = ["ip-adapter-plain.safetensors", "ip-adapter-plus.safetensors"]
    images = [colour_image(64, seed=1), colour_image(64, seed=2)]
    kwargs = dict(height=256, width=256, num_inference_steps=2, output_type="np")

    reference = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "sd15", safety_checker=None)
    reference.set_progress_bar_config(disable=True)
    reference.load_ip_adapter(adapters, subfolder=["models", "models"], weight_name=weights)
    reference.set_ip_adapter_scale([0.6, {"up": {"block_1": [0.0, 1.0, 0.0]}}])
    theirs = reference("a fox", ip_adapter_image=images, generator=[torch.Generator().manual_seed(7)], **kwargs)
    del reference
    gc.collect()

    pipe = Framework().build("stable-diffusion", model=tmp_path / "sd15")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(adapters, subfolder="models", weight_name=weights)
    pipe.set_ip_adapter_scale([0.6, {"up": {"block_1": [0.0, 1.0, 0.0]}}])
    ours = pipe("a fox", ip_adapter_image=images, seed=7, **kwargs).images
    difference = float(np.abs(ours - theirs.images).max())
    assert difference <= 1e-4, f"max abs difference {difference:.2e}"

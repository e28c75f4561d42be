"""The full Stable Diffusion 1.5 architecture (random weights) with a plain and a Plus adapter at the published
SD 1.5 sizes (ViT-H widths: 1024-wide embeddings, 1280-wide hidden states): our images equal the reference's."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch


@pytest.mark.slow
def test_sd15_two_adapters_match_reference(sd15_model, tmp_path):
    """At 128x128 (16x16 latents): every layer of the architecture at a quarter of the 256x256 cost."""
    import diffusers
    from difframe import Framework
    from difframe_ip_adapter.testing import colour_image, write_adapter_folder

    unet_config = {"sample_size": 64, "cross_attention_dim": 768}
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
    kwargs = dict(height=128, width=128, num_inference_steps=2, output_type="np")

    reference = diffusers.StableDiffusionPipeline.from_pretrained(sd15_model, safety_checker=None)
    reference.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    reference.load_ip_adapter(adapters, subfolder=["models", "models"], weight_name=weights)
    reference.set_ip_adapter_scale([0.6, {"up": {"block_1": [0.0, 1.0, 0.0]}}])
    theirs = reference("a fox", ip_adapter_image=images, generator=[torch.Generator().manual_seed(7)], **kwargs)
    del reference
    gc.collect()

    pipe = Framework().build("stable-diffusion", model=sd15_model, scheduler="dpmpp")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_ip_adapter(adapters, subfolder="models", weight_name=weights)
    pipe.set_ip_adapter_scale([0.6, {"up": {"block_1": [0.0, 1.0, 0.0]}}])
    ours = pipe("a fox", ip_adapter_image=images, seed=7, **kwargs).images
    difference = float(np.abs(ours - theirs.images).max())
    assert difference <= 1e-4, f"max abs difference {difference:.2e}"

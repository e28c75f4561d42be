"""Fixtures: a tiny Stable Diffusion folder written by the reference library (diffusers + transformers), big enough
that token merging happens (32x32 images: 16x16 latents, 256 tokens at the full-resolution attention blocks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SIZE = 32  # pixels; the tiny autoencoder downsamples 2x
UNET = dict(
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
VAE = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    latent_channels=4,
    norm_num_groups=8,
    sample_size=SIZE,
)
TEXT = dict(
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=2,
    vocab_size=49408,
    max_position_embeddings=77,
)
SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the suite shares a small machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from difframe_clip import write_tokenizer_folder
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = tmp_path_factory.mktemp("tome") / "tiny-sd"
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET, in_channels=4, out_channels=4)
    vae = AutoencoderKL(**VAE)
    with torch.no_grad():  # random weights everywhere (the reference zero-initialises some output layers)
        for model in (unet, vae):
            for param in model.parameters():
                param.add_(torch.randn_like(param) * 0.02)
    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_folder(folder.parent / "tokenizer"))
    StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT)).eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DPMSolverMultistepScheduler(**SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def framework():
    from difframe import Framework

    return Framework()

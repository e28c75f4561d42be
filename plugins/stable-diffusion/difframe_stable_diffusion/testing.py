"""Test helpers: tiny Stable Diffusion model folders written by the reference library (diffusers + transformers,
test-only), with a real CLIP tokenizer, and the configs they are made from.

Used by this plugin's tests and by the plugins that run on its pipelines (contrib/tome, contrib/step-cache,
plugins/cuda-kernels).
torch and the reference library are imported inside the functions. The fixtures one_thread and framework are
used by importing them into a conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from difframe_sd_unet.testing import UNET_TINY  # the UNet plugin's tiny config: with the two below, a whole model

VAE_TINY = dict(
    block_out_channels=(32, 64),
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
)
TEXT_TINY = dict(
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    hidden_size=32,
    intermediate_size=37,
    num_attention_heads=4,
    num_hidden_layers=5,
    vocab_size=49408,
    max_position_embeddings=77,
)
# Stable Diffusion 1.5 itself (random weights): UNet, VAE and text encoder at their real sizes.
UNET_SD15 = dict(sample_size=64, cross_attention_dim=768)
VAE_SD15 = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    sample_size=512,
)
TEXT_SD15 = dict(
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    vocab_size=49408,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
SD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
)


def jitter_weights(model: Any, scale: float = 0.02) -> Any:
    """Random weights everywhere (the reference zero-initialises some output layers); returns the model in eval
    mode."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * scale)
    return model.eval()


def write_reference_model(
    folder: Path,
    *,
    unet: dict | None = None,
    vae: dict | None = None,
    text: dict | None = None,
    in_channels: int = 4,
    seed: int = 0,
    jitter: bool = True,
    scheduler: tuple[str, dict] = ("PNDMScheduler", SD_SCHEDULER),
) -> Path:
    """A model folder saved by diffusers' StableDiffusionPipeline: the tiny configs unless others are given, and
    the scheduler as (diffusers class name, config); PNDM by default, as SD 1.5 ships. Its CLIP tokenizer folder
    is written beside it (``<folder>-tokenizer``). jitter=False keeps the reference's own initialisation."""
    import diffusers
    import torch
    from difframe_clip import write_tokenizer_folder
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet_config = {**(unet or UNET_TINY), "in_channels": in_channels, "out_channels": 4}
    unet_model = diffusers.UNet2DConditionModel(**unet_config)
    vae_model = diffusers.AutoencoderKL(**(vae or VAE_TINY))
    encoder = CLIPTextModel(CLIPTextConfig(**(text or TEXT_TINY)))
    if jitter:
        for model in (unet_model, vae_model):
            jitter_weights(model)
    scheduler_class, scheduler_config = scheduler
    tokenizer_folder = write_tokenizer_folder(folder.parent / f"{folder.name}-tokenizer")
    diffusers.StableDiffusionPipeline(
        vae=vae_model.eval(),
        text_encoder=encoder.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_folder),
        unet=unet_model.eval(),
        scheduler=getattr(diffusers, scheduler_class)(**scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
    return folder


REFERENCE_SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
}
_REFERENCE_PIPELINES: dict[tuple[str, str], tuple[Any, Any]] = {}


def reference_pipeline(model: Path, kind: str = "text", scheduler: str = "dpmpp") -> Any:
    """The reference library's pipeline over a model folder (loaded once per folder and kind), with a fresh
    scheduler of ours' name (a key of REFERENCE_SCHEDULERS) from the folder's scheduler config."""
    import diffusers

    key = (str(model), kind)
    if key not in _REFERENCE_PIPELINES:
        cls = {
            "text": diffusers.StableDiffusionPipeline,
            "img2img": diffusers.StableDiffusionImg2ImgPipeline,
            "inpaint": diffusers.StableDiffusionInpaintPipeline,
        }[kind]
        pipe = cls.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        _REFERENCE_PIPELINES[key] = (pipe, pipe.scheduler.config)
    pipe, config = _REFERENCE_PIPELINES[key]
    pipe.scheduler = getattr(diffusers, REFERENCE_SCHEDULERS[scheduler]).from_config(config)
    return pipe


def generators(seeds: list[int]) -> list[Any]:
    """One CPU torch.Generator per seed, seeded with it."""
    import torch

    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and the suite shares a small machine: with more threads than free
    cores, torch's thread pool spins and a tiny UNet call goes from 0.1 s to seconds."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def framework() -> Any:
    """One Framework (the installed plugins) for the session."""
    from difframe import Framework

    return Framework()

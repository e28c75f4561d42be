"""Fixtures: tiny Stable Diffusion model folders written by the reference library (diffusers + transformers), with a
real CLIP tokenizer, loaded by our Framework; reference pipelines over the same folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

UNET_TINY = dict(
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=4,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
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


def _jitter(model: torch.nn.Module, scale: float = 0.02) -> torch.nn.Module:
    """Random weights everywhere (the reference zero-initialises some output layers)."""
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
) -> Path:
    """A model folder saved by diffusers' StableDiffusionPipeline (PNDM scheduler, as SD 1.5 ships)."""
    from difframe_clip import write_tokenizer_folder
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet_model = UNet2DConditionModel(**{**(unet or UNET_TINY), "in_channels": in_channels, "out_channels": 4})
    vae_model = AutoencoderKL(**(vae or VAE_TINY))
    encoder = CLIPTextModel(CLIPTextConfig(**(text or TEXT_TINY)))
    if jitter:
        for model in (unet_model, vae_model):
            _jitter(model)
    tokenizer_folder = write_tokenizer_folder(folder.parent / f"{folder.name}-tokenizer")
    reference = StableDiffusionPipeline(
        vae=vae_model.eval(),
        text_encoder=encoder.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_folder),
        unet=unet_model.eval(),
        scheduler=PNDMScheduler(**SD_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the suite shares a small machine: with more threads than free
    cores, torch's thread pool spins and a tiny UNet call goes from 0.1 s to seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return write_reference_model(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_inpaint_model(tmp_path_factory) -> Path:
    return write_reference_model(tmp_path_factory.mktemp("sd") / "tiny-sd-inpainting", in_channels=9, seed=1)


@pytest.fixture(scope="session")
def framework():
    from difframe import Framework

    return Framework()


def build(framework, model: Path, pipeline: str = "stable-diffusion", **options):
    pipe = framework.build(pipeline, model=model, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


_OURS: dict = {}
_THEIRS: dict = {}


def cached(framework, model: Path, pipeline: str = "stable-diffusion", scheduler: str = "dpmpp"):
    """One loaded pipeline per (model, pipeline) for the session; the sampler is rebuilt from the model's own
    scheduler config on every call (pipe.set_scheduler would carry the previous sampler's options over)."""
    key = (str(model), pipeline)
    if key not in _OURS:
        pipe = build(framework, model, pipeline)
        _OURS[key] = (pipe, dict(pipe.scheduler.config))
    pipe, config = _OURS[key]
    pipe.scheduler = framework.scheduler(scheduler, config)
    pipe.set_memory_budget(None)
    pipe.timings = None
    return pipe


REFERENCE_SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpmpp": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
}


def reference_pipeline(model: Path, kind: str = "text", scheduler: str = "dpmpp"):
    """The reference library's pipeline over the same folder (cached per folder and kind)."""
    import diffusers

    key = (str(model), kind)
    if key not in _THEIRS:
        cls = {
            "text": diffusers.StableDiffusionPipeline,
            "img2img": diffusers.StableDiffusionImg2ImgPipeline,
            "inpaint": diffusers.StableDiffusionInpaintPipeline,
        }[kind]
        pipe = cls.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        _THEIRS[key] = (pipe, pipe.scheduler.config)
    pipe, config = _THEIRS[key]
    pipe.scheduler = getattr(diffusers, REFERENCE_SCHEDULERS[scheduler]).from_config(config)
    return pipe


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def make_image(size: int = 32, seed: int = 0):
    """A deterministic RGB PIL image with structure (gradients plus noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], axis=-1)
    array = np.clip(base * 0.8 + rng.random((size, size, 3)) * 0.2, 0, 1)
    return Image.fromarray((array * 255).astype("uint8"))


def make_mask(size: int = 32):
    import numpy as np
    from PIL import Image

    mask = np.zeros((size, size), dtype="uint8")
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return Image.fromarray(mask)


class Helpers:
    build = staticmethod(build)
    cached = staticmethod(cached)
    reference_pipeline = staticmethod(reference_pipeline)
    generators = staticmethod(generators)
    make_image = staticmethod(make_image)
    make_mask = staticmethod(make_mask)
    write_reference_model = staticmethod(write_reference_model)
    UNET_SD15, VAE_SD15, TEXT_SD15 = UNET_SD15, VAE_SD15, TEXT_SD15


@pytest.fixture(scope="session")
def h() -> type[Helpers]:
    """Helper functions (tests run with --import-mode=importlib, so conftest is not importable)."""
    return Helpers

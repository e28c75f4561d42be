"""Fixtures: tiny Stable Diffusion model folders written by the reference library (diffusers + transformers), with a
real CLIP tokenizer (difframe_stable_diffusion.testing writes them), loaded by our Framework; reference pipelines
over the same folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from difframe_stable_diffusion import testing
from difframe_stable_diffusion.testing import (
    TEXT_SD15,
    UNET_SD15,
    VAE_SD15,
    generators,
    reference_pipeline,
    write_reference_model,
)

one_thread, framework = testing.one_thread, testing.framework  # fixtures


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return write_reference_model(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_inpaint_model(tmp_path_factory) -> Path:
    return write_reference_model(tmp_path_factory.mktemp("sd") / "tiny-sd-inpainting", in_channels=9, seed=1)


def build(framework, model: Path, pipeline: str = "stable-diffusion", **options):
    pipe = framework.build(pipeline, model=model, **options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


_OURS: dict = {}


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

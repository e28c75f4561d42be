"""Fixtures: a tiny Stable Diffusion folder written by the reference library (the stable-diffusion plugin's test
writer), big enough that token merging happens (32x32 images: 16x16 latents, 256 tokens at the full-resolution
attention blocks), with a DPM++ 2M scheduler that both pipelines take from the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from difframe_stable_diffusion.testing import TEXT_TINY, write_reference_model

TEXT = {**TEXT_TINY, "num_hidden_layers": 2}
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
    folder = tmp_path_factory.mktemp("tome") / "tiny-sd"
    return write_reference_model(folder, text=TEXT, scheduler=("DPMSolverMultistepScheduler", SCHEDULER))


@pytest.fixture(scope="session")
def framework():
    from difframe import Framework

    return Framework()

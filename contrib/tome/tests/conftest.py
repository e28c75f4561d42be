"""Fixtures: a tiny Stable Diffusion folder written by the reference library (the stable-diffusion plugin's test
writer), big enough that token merging happens (32x32 images: 16x16 latents, 256 tokens at the full-resolution
attention blocks), with a DPM++ 2M scheduler that both pipelines take from the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from difframe_stable_diffusion import testing
from difframe_stable_diffusion.testing import TEXT_TINY, write_reference_model

one_thread, framework = testing.one_thread, testing.framework  # fixtures

TEXT = {**TEXT_TINY, "num_hidden_layers": 2}
SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    steps_offset=1,
)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tome") / "tiny-sd"
    return write_reference_model(folder, text=TEXT, scheduler=("DPMSolverMultistepScheduler", SCHEDULER))

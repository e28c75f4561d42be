"""Fixtures: the tiny Stable Diffusion folders of the stable-diffusion plugin's test writer (written by the reference
library), loaded by both libraries."""

from __future__ import annotations

from pathlib import Path

import pytest
from difframe_stable_diffusion import testing as SD

one_thread, framework = SD.one_thread, SD.framework  # fixtures


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Two down blocks (cross-attention, then plain), two layers each: branches 0 to 5."""
    return SD.write_reference_model(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="session")
def deep_model(tmp_path_factory) -> Path:
    """Four down blocks like SD 1.5 (three with cross-attention), tiny widths: branches 0 to 11."""
    unet = dict(
        SD.UNET_TINY,
        sample_size=32,
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    return SD.write_reference_model(tmp_path_factory.mktemp("sd") / "deep-sd", unet=unet, seed=3)


@pytest.fixture(scope="session")
def reference_pipeline():
    return SD.reference_pipeline


@pytest.fixture(scope="session")
def generators():
    return SD.generators

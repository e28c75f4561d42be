"""Shared fixtures: tiny UNet configs, reference models copied into ours through save_pretrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from difframe_sd_unet.testing import UNET_TINY

# SD 2.x style: heads per block as a list, linear projections, upcast attention, 1024-style context (here 24).
SD2_TINY = dict(
    sample_size=16,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    cross_attention_dim=24,
    attention_head_dim=(2, 4, 4),
    use_linear_projection=True,
    upcast_attention=True,
    transformer_layers_per_block=2,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
INPAINT_TINY = {**UNET_TINY, "in_channels": 9, "flip_sin_to_cos": False, "freq_shift": 1}
CONFIGS = {"sd1": UNET_TINY, "sd2": SD2_TINY, "inpaint": INPAINT_TINY}


def _reference_unet(config: dict, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    model = UNet2DConditionModel(**config).eval()
    with torch.no_grad():  # the reference zero-initialises nothing, but randomise biases and norms too
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model


def _saved_reference(config: dict, folder: Path, seed: int = 0):
    model = _reference_unet(config, seed)
    model.save_pretrained(folder)
    return model


@pytest.fixture(params=sorted(CONFIGS))
def pair(request, tmp_path):
    """(config, reference model, our model loaded from the reference's save)."""
    from difframe_sd_unet.unet import UNet2DConditionModel

    config = CONFIGS[request.param]
    reference = _saved_reference(config, tmp_path / "unet")
    return config, reference, UNet2DConditionModel.from_pretrained(tmp_path / "unet")


def _inputs(config: dict, batch: int = 2, size: int = 16, tokens: int = 7, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config.get("in_channels", 4), size, size, generator=generator)
    context = torch.randn(batch, tokens, config["cross_attention_dim"], generator=generator)
    return sample, context


@pytest.fixture
def configs() -> dict[str, dict]:
    return {name: dict(config) for name, config in CONFIGS.items()}


@pytest.fixture
def reference_unet():
    """reference_unet(config, seed=0) -> a diffusers UNet with random weights (biases and norms too)."""
    return _reference_unet


@pytest.fixture
def saved_reference():
    """saved_reference(config, folder, seed=0) -> the reference model, saved by the reference to ``folder``."""
    return _saved_reference


@pytest.fixture
def make_inputs():
    """make_inputs(config, batch=2, size=16, tokens=7, seed=1) -> (latents, text embeddings)."""
    return _inputs

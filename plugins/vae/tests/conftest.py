"""Shared fixtures: a tiny reference AutoencoderKL (diffusers) with random weights, saved, and ours loaded from it."""

from __future__ import annotations

import pytest
import torch

TINY = {
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "norm_num_groups": 8,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 32,
}


def make_reference(config: dict, seed: int = 0):
    from diffusers import AutoencoderKL as Reference

    torch.manual_seed(seed)
    reference = Reference(**config).eval()
    with torch.no_grad():  # non-trivial quant convs and norms, so every parameter matters
        for name, parameter in reference.named_parameters():
            if "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    return reference


@pytest.fixture(scope="session")
def tiny_config() -> dict:
    return dict(TINY)


@pytest.fixture(scope="session")
def reference_factory():
    return make_reference


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae") / "vae"
    make_reference(TINY).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(tiny_folder):
    from diffusers import AutoencoderKL as Reference

    return Reference.from_pretrained(tiny_folder).eval()


@pytest.fixture
def vae(tiny_folder):
    from difframe_vae import AutoencoderKL

    return AutoencoderKL.from_pretrained(tiny_folder)

"""The full Stable Diffusion 1.5 VAE architecture (random weights) at 256x256 against diffusers."""

from __future__ import annotations

import gc

import pytest
import torch
from difframe_vae import AutoencoderKL

pytestmark = pytest.mark.slow

SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from diffusers import AutoencoderKL as Reference

    torch.manual_seed(0)
    reference = Reference(**SD15_VAE).eval()
    folder = tmp_path_factory.mktemp("sd15") / "vae"
    reference.save_pretrained(folder)
    yield reference, AutoencoderKL.from_pretrained(folder)
    del reference
    gc.collect()


@torch.no_grad()
def test_sd15_vae_matches_reference_at_256(pair):
    reference, vae = pair
    assert vae.num_parameters() == sum(p.numel() for p in reference.parameters())
    torch.manual_seed(1)
    image = torch.rand(1, 3, 256, 256) * 2 - 1
    expected = reference.encode(image).latent_dist
    posterior = vae.encode(image)
    assert posterior.mean.shape == (1, 4, 32, 32)
    assert (posterior.mean - expected.mean).abs().max() < 1e-4
    assert (posterior.std - expected.std).abs().max() < 1e-4
    z = torch.randn(1, 4, 32, 32)
    assert (vae.decode(z) - reference.decode(z).sample).abs().max() < 1e-4

"""Numeric checks of the Triton kernels and the fused modules against eager PyTorch, for one device.

Not collected on its own: tests/test_kernels.py runs it in a fresh process, on the CPU with TRITON_INTERPRET=1 (Triton
decides at import whether it interprets, so the variable must be set before anything imports it) and on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from difframe_sd_unet.testing import UNET_TINY as SD_UNET_TINY
from difframe_stable_diffusion.testing import jitter_weights

DEVICE = os.environ.get("DIFFRAME_KERNEL_DEVICE", "cpu")
UNET_TINY = {**SD_UNET_TINY, "sample_size": 8, "layers_per_block": 1}
VAE_TINY = dict(
    block_out_channels=(16, 32),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    latent_channels=4,
    norm_num_groups=8,
    layers_per_block=1,
)


@pytest.fixture
def device():
    return DEVICE


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    # float32: only the order of the sums differs; half precision: one rounding of the output (2^-8 / 2^-11 relative)
    return {torch.float32: dict(atol=2e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3)}.get(
        dtype, dict(atol=2e-2, rtol=1e-2)
    )


@pytest.mark.parametrize("shape", [(2, 32, 8, 8), (1, 64, 5, 7), (3, 16, 4, 4)])
@pytest.mark.parametrize("silu", [True, False])
def test_group_norm_silu_matches_eager(device, shape, silu):
    from difframe_cuda_kernels.kernels import group_norm

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(8, shape[1], eps=1e-5).to(device)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
        x = torch.randn(shape, device=device) * 3 + 1
        expected = F.silu(norm(x)) if silu else norm(x)
        got = group_norm(x, 8, norm.weight, norm.bias, norm.eps, silu=silu)
    torch.testing.assert_close(got, expected, **tolerance(torch.float32))


def test_group_norm_channels_last_and_half_precision(device):
    from difframe_cuda_kernels.kernels import group_norm

    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    torch.manual_seed(1)
    norm = torch.nn.GroupNorm(4, 16).to(device)
    x = torch.randn(2, 16, 6, 6, device=device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = F.silu(F.group_norm(x.float(), 4, norm.weight, norm.bias, norm.eps)).to(dtype)
        got = group_norm(x.to(dtype), 4, norm.weight.to(dtype), norm.bias.to(dtype), norm.eps, silu=True)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("shape", [(2, 16, 64), (1, 7, 40), (3, 2, 2, 2200)])
def test_geglu_matches_eager(device, shape):
    from difframe_cuda_kernels.kernels import geglu

    torch.manual_seed(2)
    x = torch.randn(shape, device=device) * 2
    hidden, gate = x.chunk(2, dim=-1)
    torch.testing.assert_close(geglu(x), hidden * F.gelu(gate), **tolerance(torch.float32))


def test_fused_unet_and_vae_match_eager(device):
    from difframe_cuda_kernels.fusion import fuse_kernels, unfuse_kernels
    from difframe_sd_unet.unet import UNet2DConditionModel
    from difframe_vae.autoencoder_kl import AutoencoderKL

    torch.manual_seed(0)
    unet = jitter_weights(UNet2DConditionModel(**UNET_TINY), 0.05).to(device)
    vae = jitter_weights(AutoencoderKL(**VAE_TINY), 0.05).to(device)
    sample, context, latents = (torch.randn(s, device=device) for s in ((2, 4, 8, 8), (2, 5, 32), (1, 4, 4, 4)))
    with torch.no_grad():
        expected_unet, expected_vae = unet(sample, 500, context), vae.decode(latents)
        assert fuse_kernels(unet) > 0 and fuse_kernels(vae) > 0
        fused_unet, fused_vae = unet(sample, 500, context), vae.decode(latents)
    torch.testing.assert_close(fused_unet, expected_unet, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fused_vae, expected_vae, atol=1e-4, rtol=1e-4)
    assert (
        unfuse_kernels(unet) > 0 and unet.state_dict().keys() == UNet2DConditionModel(**UNET_TINY).state_dict().keys()
    )

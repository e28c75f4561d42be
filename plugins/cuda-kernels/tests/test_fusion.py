"""Module replacement: which blocks are fused, and the backend refused on a CPU before any weight is read (the fused
outputs are checked against eager ones in kernel_checks.py)."""

from __future__ import annotations

import pytest
from difframe import Framework
from difframe.availability import cuda_unavailable_reason
from difframe.errors import ConfigError, UnavailableError
from difframe_sd_unet.testing import UNET_TINY as SD_UNET_TINY

pytest.importorskip("triton", reason="triton is not installed (pip install 'difframe-cuda-kernels[triton]')")

UNET_TINY = {**SD_UNET_TINY, "sample_size": 8, "layers_per_block": 1}


def test_what_gets_fused():
    from difframe_cuda_kernels.fusion import fuse_kernels
    from difframe_sd_unet.unet import GEGLU, ResnetBlock2D, UNet2DConditionModel

    unet = UNet2DConditionModel(**UNET_TINY)
    resnets = sum(isinstance(m, ResnetBlock2D) for m in unet.modules())
    gegl = sum(isinstance(m, GEGLU) for m in unet.modules())
    assert fuse_kernels(unet) == resnets + gegl
    assert fuse_kernels(unet) == 0  # already fused: nothing changes twice


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="checks the refusal on a machine without a GPU")
def test_the_backend_is_refused_on_a_cpu_before_loading(tmp_path):
    framework = Framework()
    with pytest.raises(UnavailableError, match="backend 'cuda-kernels' .* cannot run on this machine: needs CUDA"):
        framework.build("stable-diffusion", model=tmp_path / "no-model", backend="cuda-kernels", device="cuda")
    with pytest.raises((ConfigError, UnavailableError)):
        framework.build("stable-diffusion", model=tmp_path / "no-model", backend="cuda-kernels")


@pytest.mark.skipif(cuda_unavailable_reason() is not None, reason="needs an NVIDIA GPU")
def test_the_backend_on_a_gpu_matches_eager_images():
    framework = Framework()
    options = dict(device="cuda", dtype="float16", progress=False)
    eager = framework.build("stable-diffusion", **options)
    fused = framework.build("stable-diffusion", backend="cuda-kernels", **options)
    assert fused.backend.fused["unet"] > 0
    call = dict(seed=3, num_inference_steps=8, output_type="np")
    difference = abs(eager("a red circle", **call).images - fused("a red circle", **call).images)
    assert difference.max() < 2e-2  # float16: one rounding per fused block, a few pixel levels at most
    with pytest.raises(ConfigError, match="device='cpu'"):
        framework.build("stable-diffusion", backend="cuda-kernels", device="cpu")

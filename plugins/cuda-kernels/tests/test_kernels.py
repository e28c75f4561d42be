"""The Triton kernels and fused modules against eager PyTorch (kernel_checks.py), each device in a fresh process:
on the CPU under TRITON_INTERPRET=1 on every run, on an NVIDIA GPU when there is one; and the kernels' refusal of
CPU tensors without the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from difframe.availability import cuda_unavailable_reason

pytest.importorskip("triton", reason="triton is not installed (pip install 'difframe-cuda-kernels[triton]')")
CHECKS = Path(__file__).with_name("kernel_checks.py")


def run_checks(device: str, **env: str) -> None:
    environment = {**os.environ, "DIFFRAME_KERNEL_DEVICE": device, **env}
    if device == "cuda":
        environment.pop("TRITON_INTERPRET", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CHECKS)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout


def test_kernels_interpreted_on_the_cpu():
    run_checks("cpu", TRITON_INTERPRET="1")


@pytest.mark.gpu
@pytest.mark.skipif(cuda_unavailable_reason() is not None, reason="needs an NVIDIA GPU")
def test_kernels_on_the_gpu():
    run_checks("cuda")


def test_kernels_refuse_cpu_tensors_without_the_interpreter():
    code = (
        "import torch, difframe_cuda_kernels.kernels as k\n"
        "try:\n    k.geglu(torch.randn(2, 8))\nexcept RuntimeError as e:\n    print(e)\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)
    assert "run on NVIDIA GPUs; got a tensor on cpu" in result.stdout, result.stderr

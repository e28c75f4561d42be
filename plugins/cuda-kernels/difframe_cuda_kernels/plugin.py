"""Registration of difframe-cuda-kernels. No torch or triton import here: the factory is a string."""

from __future__ import annotations

from difframe import hookimpl


@hookimpl
def register_backend(register) -> None:
    register(
        name="cuda-kernels",
        factory="difframe_cuda_kernels.backend:CudaKernelsBackend",
        aliases=("triton",),
        description="eager PyTorch with Triton kernels for GroupNorm + SiLU and GEGLU in the UNet and VAE (GPU)",
        supports={"devices": ("cuda",)},
        requires={"packages": ("triton",), "cuda": True, "install": "pip install 'difframe-cuda-kernels[triton]'"},
    )

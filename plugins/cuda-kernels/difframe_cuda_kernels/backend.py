"""``build(..., backend="cuda-kernels", device="cuda")``: eager PyTorch with the Triton kernels in the UNet and VAE.

Every Python hook and attention add-on still runs: only the fused blocks' own arithmetic changes.
"""

from __future__ import annotations

from typing import Any

from .fusion import fuse_kernels


class CudaKernelsBackend:
    def __init__(self, vae: bool = True) -> None:
        self.vae = vae
        self.fused: dict[str, int] = {}

    def apply(self, pipeline: Any) -> None:
        from .kernels import check_device

        targets = {"unet": pipeline.unet, **({"vae": pipeline.vae} if self.vae else {})}
        for name, model in targets.items():
            parameter = next(model.parameters(), None)
            if parameter is not None:
                check_device(parameter)
            self.fused[name] = fuse_kernels(model)

"""Adaptive projected guidance (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance
Scales in Diffusion Models")."""

from __future__ import annotations

import torch
from difframe.guidance import Guider, StepContext


class AdaptiveProjectedGuidance(Guider):
    """The update cond - uncond (optionally a momentum average, optionally norm-capped at ``norm_threshold``) split
    into parts parallel and orthogonal to the conditional prediction; ``eta`` weighs the parallel part."""

    def __init__(
        self,
        guidance_scale: float | None = None,
        guidance_rescale: float | None = None,
        momentum: float | None = None,
        norm_threshold: float = 15.0,
        eta: float = 1.0,
        start: float = 0.0,
        stop: float = 1.0,
    ) -> None:
        super().__init__(guidance_scale, guidance_rescale, start, stop)
        self.momentum, self.norm_threshold, self.eta = momentum, norm_threshold, eta
        self.running: torch.Tensor | None = None

    def reset(self) -> None:
        self.running = None

    def guide(self, predictions: dict[str, torch.Tensor], step: StepContext, scale: float) -> torch.Tensor:
        uncond, cond = predictions["uncond"], predictions["cond"]
        update = cond - uncond
        dims = list(range(1, update.ndim))
        if self.momentum is not None:
            self.running = update if self.running is None else update + self.momentum * self.running
            update = self.running
        if self.norm_threshold > 0:
            norm = update.norm(p=2, dim=dims, keepdim=True)
            update = update * torch.minimum(torch.ones_like(norm), self.norm_threshold / norm)
        # the projection in float64: the parallel part of a nearly parallel pair loses its digits in float32
        direction = torch.nn.functional.normalize(cond.double(), dim=dims)
        parallel = (update.double() * direction).sum(dim=dims, keepdim=True) * direction
        orthogonal = update.double() - parallel
        return uncond + scale * (orthogonal.to(update.dtype) + self.eta * parallel.to(update.dtype))

"""CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models")."""

from __future__ import annotations

import torch
from difframe.guidance import Guider, StepContext


class ClassifierFreeZeroStarGuidance(Guider):
    """The unconditional prediction scaled by s* = <cond, uncond> / |uncond|^2 (per image) before guidance, and a
    zero prediction for the first ``zero_init_steps`` steps."""

    def __init__(
        self,
        guidance_scale: float | None = None,
        guidance_rescale: float | None = None,
        zero_init_steps: int = 1,
        start: float = 0.0,
        stop: float = 1.0,
    ) -> None:
        super().__init__(guidance_scale, guidance_rescale, start, stop)
        if zero_init_steps < 0:
            raise ValueError(f"zero_init_steps must be >= 0, got {zero_init_steps}")
        self.zero_init_steps = zero_init_steps

    def combine(self, predictions, step, guidance_scale, guidance_rescale):
        if step.index < self.zero_init_steps:
            return torch.zeros_like(predictions["cond"])
        return super().combine(predictions, step, guidance_scale, guidance_rescale)

    def guide(self, predictions: dict[str, torch.Tensor], step: StepContext, scale: float) -> torch.Tensor:
        uncond, cond = predictions["uncond"], predictions["cond"]
        flat_cond, flat_uncond = cond.flatten(1).float(), uncond.flatten(1).float()
        s_star = (flat_cond * flat_uncond).sum(1, keepdim=True) / ((flat_uncond**2).sum(1, keepdim=True) + 1e-8)
        uncond = uncond * s_star.to(cond.dtype).view(-1, *(1,) * (cond.ndim - 1))
        return uncond + scale * (cond - uncond)

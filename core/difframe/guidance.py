"""Guiders: how a denoising step combines the predictions of its guidance batch.

A pipeline asks its guider which *branches* a step runs (``"uncond"``, ``"cond"``, a guider's own such as
``"perturbed"``), runs the denoiser once over their rows stacked in that order, and hands the guider one
prediction per branch. A guider with state (a momentum buffer) gets a fresh copy per call through ``begin``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class StepContext:
    """Where the loop is: what guiders and inference hooks see."""

    index: int  # 0-based step of this call
    total: int  # steps this call runs
    timestep: Any  # the sampler's timestep (or sigma) for this step
    branches: tuple[str, ...] = ("cond",)  # the guidance batch, in row order
    rows: int = 1  # images per branch

    def rows_of(self, branch: str) -> slice:
        """The batch rows of one branch."""
        at = self.branches.index(branch)
        return slice(at * self.rows, (at + 1) * self.rows)


def rescale_noise_cfg(guided: torch.Tensor, conditional: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Rescale a guided prediction's per-image standard deviation to the conditional one's, blended by
    ``guidance_rescale`` ("Common Diffusion Noise Schedules and Sample Steps are Flawed", section 3.4)."""
    dims = list(range(1, conditional.ndim))
    ratio = conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return guidance_rescale * (guided * ratio) + (1 - guidance_rescale) * guided


class Guider:
    """Base of guiders. ``start``/``stop`` (fractions of the steps) are the guidance interval: outside it a step
    runs the conditional branch alone and uses its prediction, whatever the guider."""

    extra_branches: ClassVar[tuple[str, ...]] = ()  # branches beyond uncond/cond, e.g. ("perturbed",)
    needs_unconditional: ClassVar[bool] = True

    def __init__(
        self,
        guidance_scale: float | None = None,
        guidance_rescale: float | None = None,
        start: float = 0.0,
        stop: float = 1.0,
    ) -> None:
        if not 0.0 <= start < 1.0 or not start < stop <= 1.0:
            raise ValueError(f"the guidance interval needs 0 <= start < stop <= 1, got start={start}, stop={stop}")
        self.guidance_scale = guidance_scale  # None: the call's guidance_scale
        self.guidance_rescale = guidance_rescale
        self.start, self.stop = start, stop

    def begin(self, total_steps: int) -> Guider:
        """A copy for one call, its state reset."""
        run = copy.copy(self)
        run.reset()
        return run

    def reset(self) -> None:
        """Drop state carried from step to step."""

    def required_hooks(self) -> list[Any]:
        """Inference hooks the guider needs on the denoiser (a perturbation); the pipeline adds them with it."""
        return []

    def in_interval(self, index: int, total: int) -> bool:
        return int(self.start * total) <= index < int(self.stop * total)

    def branches(self, index: int, total: int, guided: bool) -> tuple[str, ...]:
        """The branches step ``index`` runs, in batch order."""
        if not self.in_interval(index, total):
            return ("cond",)
        return (("uncond", "cond") if guided else ("cond",)) + self.extra_branches

    def scale(self, call_scale: float) -> float:
        return call_scale if self.guidance_scale is None else self.guidance_scale

    def combine(
        self, predictions: dict[str, torch.Tensor], step: StepContext, guidance_scale: float, guidance_rescale: float
    ) -> torch.Tensor:
        """One prediction from the branches'. Outside the interval: the conditional prediction."""
        if set(predictions) == {"cond"}:
            return predictions["cond"]
        guided = self.guide(predictions, step, self.scale(guidance_scale))
        rescale = guidance_rescale if self.guidance_rescale is None else self.guidance_rescale
        return rescale_noise_cfg(guided, predictions["cond"], rescale) if rescale > 0.0 else guided

    def guide(self, predictions: dict[str, torch.Tensor], step: StepContext, scale: float) -> torch.Tensor:
        raise NotImplementedError

    def description(self) -> dict[str, Any]:
        """Settings recorded with the image (those that differ from the defaults)."""
        out: dict[str, Any] = {}
        if (self.start, self.stop) != (0.0, 1.0):
            out["start"], out["stop"] = self.start, self.stop
        return out


class ClassifierFreeGuidance(Guider):
    """uncond + scale * (cond - uncond), then the optional guidance_rescale: the pipelines' default."""

    def guide(self, predictions: dict[str, torch.Tensor], step: StepContext, scale: float) -> torch.Tensor:
        uncond, cond = predictions["uncond"], predictions["cond"]
        return uncond + scale * (cond - uncond)

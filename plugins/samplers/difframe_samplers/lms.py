"""LMS: linear multistep (Adams-Bashforth in σ) over the last ``order`` slopes (k-diffusion's sample_lms)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from difframe.scheduling import (
    SchedulerOutput,
    SigmaScheduler,
    x0_from_sigma,
)


def lms_coefficient(nodes: Sequence[float], j: int, start: float, end: float) -> float:
    """∫ from start to end of the j-th Lagrange basis polynomial over ``nodes`` (exact: it is a polynomial)."""
    basis = np.poly1d([1.0])
    for k, node in enumerate(nodes):
        if k != j:
            basis *= np.poly1d([1.0, -node]) / (nodes[j] - node)
    antiderivative = basis.integ()
    return float(antiderivative(end) - antiderivative(start))


class LMSScheduler(SigmaScheduler):
    layout_name = ("diffusers", "LMSDiscreteScheduler")

    def __init__(self) -> None:
        self.derivatives: list[torch.Tensor] = []

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        *,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        steps, sigmas_ = self.sigma_schedule(num_inference_steps, timesteps, sigmas)
        self.num_inference_steps = len(steps)
        self.sigmas = torch.from_numpy(sigmas_)
        self.timesteps = torch.from_numpy(steps).to(device=device, dtype=torch.float32)
        self.derivatives = []
        self.restart()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        order: int = 4,
        *,
        generator: Any = None,
    ) -> SchedulerOutput:
        i = self.current_index(timestep)
        sigma = self.sigmas[i]
        x0 = x0_from_sigma(self.config.prediction_type, model_output, sample, sigma)
        self.derivatives = [*self.derivatives, (sample - x0) / sigma][-order:]
        order = min(i + 1, order)
        nodes = [float(self.sigmas[i - k]) for k in range(order)]  # newest first
        start, end = float(self.sigmas[i]), float(self.sigmas[i + 1])
        coefficients = [lms_coefficient(nodes, j, start, end) for j in range(order)]
        prev = sample + sum(c * d for c, d in zip(coefficients, reversed(self.derivatives)))
        self.advance()
        return SchedulerOutput(prev, x0)

"""Heun (Karras et al. 2022, Algorithm 1 without churn): an Euler step, then a correction with the slope at its end.

Each step takes two model calls, so ``timesteps`` lists every step but the first twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difframe.scheduling import (
    CLIPPING,
    SchedulerOutput,
    SigmaScheduler,
    defaults,
    x0_from_sigma,
)


def interleave(values: torch.Tensor, keep_last: bool = True) -> torch.Tensor:
    """[a, b, c, d] -> [a, b, b, c, c, d]: every inner entry twice (second-order samplers visit each twice)."""
    inner = values[1:-1] if keep_last else values[1:]
    return torch.cat([values[:1], inner.repeat_interleave(2), values[-1:] if keep_last else values[:0]])


class HeunScheduler(SigmaScheduler):
    layout_name = ("diffusers", "HeunDiscreteScheduler")
    order = 2
    schedule_options = (*SigmaScheduler.schedule_options, *CLIPPING)
    schedule_defaults = defaults(beta_start=0.00085, beta_end=0.012)

    def __init__(self) -> None:
        self._first: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        num_train_timesteps: int | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """``num_train_timesteps``: space the steps over the first this many training timesteps."""
        steps, sigmas = self.sigma_schedule(
            num_inference_steps, timesteps, None, num_train_timesteps=num_train_timesteps
        )
        self.num_inference_steps = len(steps)
        self.sigmas = interleave(torch.from_numpy(sigmas))
        self.timesteps = interleave(torch.from_numpy(steps), keep_last=False).to(device=device, dtype=torch.float32)
        self._first = None  # (derivative, dt, sample) of the pending Euler step
        self.restart()

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *, generator: Any = None
    ) -> SchedulerOutput:
        i = self.current_index(timestep)
        first = self._first is None
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        x0 = x0_from_sigma(self.config.prediction_type, model_output, sample, sigma if first else sigma_next)
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        if first:
            derivative, dt = (sample - x0) / sigma, sigma_next - sigma
            self._first = (derivative, dt, sample)
        else:  # average the slopes at both ends, then redo the step from where it started
            derivative = (self._first[0] + (sample - x0) / sigma_next) / 2
            _, dt, sample = self._first
            self._first = None
        self.advance()
        return SchedulerOutput(sample + derivative * dt, x0)

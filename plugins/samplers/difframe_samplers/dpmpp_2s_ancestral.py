"""DPM++ 2S ancestral (the web UIs' "DPM++ 2S a"; k-diffusion's sample_dpmpp_2s_ancestral, after Lu et al. 2022).

Each step aims at σ_down < σ_next, as Euler ancestral does, with a second-order DPM-Solver++ step: a first-order
half step in λ = -log σ to σ_mid = sqrt(σ·σ_down), a model call there, and the whole step from σ with the midpoint's
x̂_0. Fresh noise σ_up then brings the sample back up to σ_next (σ_down² + σ_up² = σ_next²). ``eta`` scales the
noise: 0 is the deterministic DPM-Solver++(2S). A step that ends at σ = 0 is a single Euler step.

The reference library (diffusers) has no such sampler; see docs/samplers.md for what it is tested against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from difframe.scheduling import (
    SchedulerOutput,
    SigmaScheduler,
    randn_like,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    x0_from_sigma,
)


def ancestral_split(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up): how far a step goes down deterministically and how much noise brings it back to σ_next."""
    if sigma_next == 0:
        return 0.0, 0.0
    keep = 1 - eta**2 * (1 - (sigma_next / sigma) ** 2)  # (σ_down / σ_next)², without cancellation
    return sigma_next * max(keep, 0.0) ** 0.5, min(
        sigma_next, eta * sigma_next * (1 - (sigma_next / sigma) ** 2) ** 0.5
    )


class DPMSolver2SAncestralScheduler(SigmaScheduler):
    """``timesteps`` lists the model calls: each step's σ, then its midpoint (none for a last step to σ = 0)."""

    layout_name = ("difframe", "DPMSolver2SAncestralScheduler")
    order = 2

    def __init__(
        self,
        eta: float = 1.0,
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta must be at least 0 (0: no noise, 1: the full ancestral step), got {eta}")

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        *,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        steps, step_sigmas = self.sigma_schedule(num_inference_steps, timesteps, sigmas)
        self.num_inference_steps = len(steps)
        log_sigmas = np.log(sigmas_from_alphas_cumprod(self.alphas_cumprod))
        # One entry per model call: (σ the model sees, its timestep, the step it belongs to, is it the midpoint).
        self._plan: list[tuple[int, bool]] = []
        self._steps: list[tuple[float, float, float, float]] = []  # σ, σ_down, σ_up, σ_mid of each step
        call_sigmas, call_timesteps = [], []
        for i, t in enumerate(steps):
            sigma, sigma_next = float(step_sigmas[i]), float(step_sigmas[i + 1])
            down, up = ancestral_split(sigma, sigma_next, self.config.eta)
            mid = (sigma * down) ** 0.5
            self._steps.append((sigma, down, up, mid))
            call_sigmas.append(sigma)
            call_timesteps.append(float(t))
            self._plan.append((i, False))
            if down > 0:
                call_sigmas.append(mid)
                call_timesteps.append(float(sigma_to_t(np.float32(mid), log_sigmas)))
                self._plan.append((i, True))
        self.sigmas = torch.tensor([*call_sigmas, float(step_sigmas[-1])], dtype=torch.float32)
        self.timesteps = torch.tensor(call_timesteps, dtype=torch.float32, device=device)
        self._start: torch.Tensor | None = None
        self.restart()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        s_noise: float = 1.0,
    ) -> SchedulerOutput:
        j = self.current_index(timestep)
        i, at_midpoint = self._plan[j]
        sigma, down, up, mid = self._steps[i]
        x0 = x0_from_sigma(self.config.prediction_type, model_output, sample, float(self.sigmas[j]))
        h = np.log(sigma) - np.log(down) if down > 0 else None
        if down == 0:  # the last step, to σ = 0: Euler
            prev = sample + (sample - x0) / sigma * (down - sigma)
        elif not at_midpoint:  # a first-order half step in λ to the midpoint
            self._start = sample
            prev = mid / sigma * sample - float(np.expm1(-h / 2)) * x0
        else:  # the whole step from where it began, with the midpoint's x̂_0, then noise back up to σ_next
            prev = down / sigma * self._start - float(np.expm1(-h)) * x0
            self._start = None
        if (down == 0 or at_midpoint) and up > 0:
            prev = prev + randn_like(model_output, generator) * s_noise * up
        self.advance()
        return SchedulerOutput(prev.to(model_output.dtype), x0)

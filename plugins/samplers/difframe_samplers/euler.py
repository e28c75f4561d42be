"""Euler and Euler ancestral (Karras et al. 2022, Algorithm 2; k-diffusion's sample_euler / sample_euler_ancestral)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from difframe.scheduling import (
    SIGMA_BOUNDS,
    SchedulerOutput,
    SigmaScheduler,
    randn_like,
    x0_from_sigma,
)

from .options import refused_options


class EulerScheduler(SigmaScheduler):
    """First-order ODE steps x ← x + (σ_next - σ)·(x - x̂_0)/σ; ``s_churn`` > 0 in ``step`` adds Karras' noise
    injection."""

    layout_name = ("diffusers", "EulerDiscreteScheduler")
    refused_options = refused_options("EulerDiscreteScheduler")
    schedule_options = (*SigmaScheduler.schedule_options, *SIGMA_BOUNDS)

    def __init__(
        self,
        interpolation_type: Literal["linear"] = "linear",
        # 'continuous' with v-prediction gives the model c_noise = log(σ)/4 (EDM) instead of a training timestep.
        timestep_type: Literal["discrete", "continuous"] = "discrete",
    ) -> None:
        self._edm_timesteps = timestep_type == "continuous" and self.config.prediction_type == "v_prediction"

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        *,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        if self._edm_timesteps and timesteps is not None:
            raise ValueError("timestep_type='continuous' with v-prediction derives the timesteps from σ; pass sigmas")
        steps, sigmas_ = self.sigma_schedule(num_inference_steps, timesteps, sigmas)
        self.num_inference_steps = len(steps)
        self.sigmas = torch.from_numpy(sigmas_)
        if self._edm_timesteps:  # EDM's c_noise
            steps = 0.25 * np.log(sigmas_[:-1])
        self.timesteps = torch.from_numpy(steps.astype("float32")).to(device)
        self.restart()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        i = self.current_index(timestep)
        sample = sample.to(torch.float32)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:  # raise the noise level to σ̂ before the step
            sample = sample + randn_like(model_output, generator) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        # v-prediction is defined at the unperturbed σ, ε-prediction at σ̂.
        x0 = x0_from_sigma(self.config.prediction_type, model_output, sample, sigma if self._is_v() else sigma_hat)
        derivative = (sample - x0) / sigma_hat
        prev = sample + derivative * (sigma_next - sigma_hat)
        self.advance()
        return SchedulerOutput(prev.to(model_output.dtype), x0)

    def _is_v(self) -> bool:
        return self.config.prediction_type == "v_prediction"


class EulerAncestralScheduler(SigmaScheduler):
    """Euler to a lower σ_down, then fresh noise σ_up back up to σ_next (σ_down² + σ_up² = σ_next²)."""

    layout_name = ("diffusers", "EulerAncestralDiscreteScheduler")
    _edm_timesteps = False

    set_timesteps = EulerScheduler.set_timesteps

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> SchedulerOutput:
        i = self.current_index(timestep)
        sample = sample.to(torch.float32)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x0 = x0_from_sigma(self.config.prediction_type, model_output, sample, sigma)
        sigma_up = (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5
        down_squared = sigma_next**2 - sigma_up**2
        # When σ >> σ_next rounding can make that negative: use the equal σ_next²/σ instead of a NaN.
        sigma_down = down_squared**0.5 if down_squared > 0 else sigma_next**2 / sigma
        prev = sample + (sample - x0) / sigma * (sigma_down - sigma)
        prev = prev + randn_like(model_output, generator) * sigma_up
        self.advance()
        return SchedulerOutput(prev.to(model_output.dtype), x0)

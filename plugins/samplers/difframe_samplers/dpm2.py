"""DPM2 and DPM2 ancestral (k-diffusion's sample_dpm_2 / sample_dpm_2_ancestral, after Lu et al. 2022).

A midpoint method in log σ: a half step to σ_mid = sqrt(σ·σ_next), a second model call there, and the full step
with the slope from the midpoint. Each step takes two model calls, so ``timesteps`` interleaves the midpoints.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from difframe.scheduling import (
    SchedulerOutput,
    SigmaScheduler,
    defaults,
    randn_like,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    x0_from_sigma,
)


def doubled(values: torch.Tensor) -> torch.Tensor:
    """[a, b, c] -> [a, b, b, c, c, c]: every entry but the first twice, then the last once more."""
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


class _DPM2Base(SigmaScheduler):
    order = 2
    schedule_defaults = defaults(beta_start=0.00085, beta_end=0.012)
    sigmas_interpol: torch.Tensor

    def _schedule(self, num_inference_steps: int | None, train_steps: int | None) -> tuple[torch.Tensor, np.ndarray]:
        steps, sigmas = self.sigma_schedule(
            num_inference_steps, None, None, round_karras=True, num_train_timesteps=train_steps
        )
        self.num_inference_steps = len(steps)
        self._log_sigmas = np.log(sigmas_from_alphas_cumprod(self.alphas_cumprod))
        return torch.from_numpy(sigmas), steps

    def _interleave_timesteps(self, steps: np.ndarray, mid_sigmas: torch.Tensor, device: Any) -> None:
        mid = torch.from_numpy(sigma_to_t(mid_sigmas.numpy(), self._log_sigmas).astype(np.float32))
        steps_t = torch.from_numpy(steps.astype(np.float32))
        pairs = torch.stack((mid[: len(steps) - 1, None], steps_t[1:, None]), dim=-1).flatten()
        self.timesteps = torch.cat([steps_t[:1], pairs]).to(device)
        self._first_sample: torch.Tensor | None = None
        self.restart()

    @property
    def _in_first_half(self) -> bool:
        return self._first_sample is None


class DPM2Scheduler(_DPM2Base):
    layout_name = ("diffusers", "KDPM2DiscreteScheduler")

    def __init__(self) -> None:
        self._first_sample = None

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, num_train_timesteps: int | None = None
    ) -> None:
        """``num_train_timesteps``: space the steps over the first this many training timesteps."""
        sigmas, steps = self._schedule(num_inference_steps, num_train_timesteps)
        mid = sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()  # geometric mean with the previous σ
        self.sigmas, self.sigmas_interpol = doubled(sigmas), doubled(mid)
        self._interleave_timesteps(steps, mid[1:], device)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        i = self.current_index(timestep)
        sigma = self.sigmas[i] if self._in_first_half else self.sigmas_interpol[i]
        return sample / (sigma**2 + 1) ** 0.5

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *, generator: Any = None
    ) -> SchedulerOutput:
        i = self.current_index(timestep)
        if self._in_first_half:
            sigma, sigma_mid, sigma_next = self.sigmas[i], self.sigmas_interpol[i + 1], self.sigmas[i + 1]
        else:
            sigma, sigma_mid, sigma_next = self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i]
        first = self._in_first_half
        x0 = x0_from_sigma(self.config.prediction_type, model_output, sample, sigma if first else sigma_mid)
        if first:  # to the midpoint
            derivative, dt, self._first_sample = (sample - x0) / sigma, sigma_mid - sigma, sample
        else:  # the whole step from the start, with the midpoint's slope
            derivative, dt = (sample - x0) / sigma_mid, sigma_next - sigma
            sample, self._first_sample = self._first_sample, None
        self.advance()
        return SchedulerOutput(sample + derivative * dt, x0)


class DPM2AncestralScheduler(_DPM2Base):
    layout_name = ("diffusers", "KDPM2AncestralDiscreteScheduler")

    def __init__(self) -> None:
        self._first_sample = None

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, num_train_timesteps: int | None = None
    ) -> None:
        """``num_train_timesteps``: space the steps over the first this many training timesteps."""
        sigmas, steps = self._schedule(num_inference_steps, num_train_timesteps)
        sigmas_next = sigmas.roll(-1)
        sigmas_next[-1] = 0.0
        up = (sigmas_next**2 * (sigmas**2 - sigmas_next**2) / sigmas**2) ** 0.5
        down_squared = sigmas_next**2 - up**2
        # When σ >> σ_next rounding can make that negative: use the equal σ_next²/σ instead of a NaN.
        down = torch.where(down_squared > 0, down_squared.clamp(min=0) ** 0.5, sigmas_next**2 / sigmas)
        down[-1] = 0.0
        mid = sigmas.log().lerp(down.log(), 0.5).exp()  # midpoint between σ and σ_down
        mid[-2:] = 0.0
        self.sigmas, self.sigmas_interpol = doubled(sigmas), doubled(mid)
        self.sigmas_up, self.sigmas_down = doubled(up), doubled(down)
        self._interleave_timesteps(steps, mid[:-2], device)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        i = self.current_index(timestep)
        sigma = self.sigmas[i] if self._in_first_half else self.sigmas_interpol[i - 1]
        return sample / (sigma**2 + 1) ** 0.5

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> SchedulerOutput:
        i = self.current_index(timestep)
        first = self._in_first_half
        j = i if first else i - 1
        sigma, sigma_mid, sigma_up = self.sigmas[j], self.sigmas_interpol[j], self.sigmas_up[j]
        sigma_down = self.sigmas_down[i - 1]
        x0 = x0_from_sigma(self.config.prediction_type, model_output, sample, sigma if first else sigma_mid)
        if first:
            prev = sample + (sample - x0) / sigma * (sigma_mid - sigma)
            self._first_sample = sample
        else:  # the step to σ_down with the midpoint's slope, then noise back up to σ_next
            prev = self._first_sample + (sample - x0) / sigma_mid * (sigma_down - sigma)
            prev = prev + randn_like(model_output, generator) * sigma_up
            self._first_sample = None
        self.advance()
        return SchedulerOutput(prev, x0)

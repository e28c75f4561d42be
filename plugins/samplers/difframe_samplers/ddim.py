"""DDIM (Song et al. 2021): deterministic (eta=0) or partly stochastic jumps between training timesteps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difframe.scheduling import (
    AlphaScheduler,
    SchedulerOutput,
    defaults,
    randn_like,
    x0_from_alpha,
)


class DDIMScheduler(AlphaScheduler):
    layout_name = ("diffusers", "DDIMScheduler")
    schedule_defaults = defaults(clip_sample=True)

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, *, timesteps: Sequence[int] | None = None
    ) -> None:
        self.set_spaced_timesteps(num_inference_steps, timesteps, device)

    def _prev_timestep(self, timestep: int) -> int:
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps before stepping DDIMScheduler")
        return timestep - self.config.num_train_timesteps // self.num_inference_steps

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput:
        t = int(timestep)
        prev_t = self._prev_timestep(t)
        a_t, a_prev = self.alphas_cumprod[t], self.alpha_prod_at(prev_t)
        x0, eps = x0_from_alpha(self.config.prediction_type, model_output, sample, a_t)
        x0 = self.postprocess_x0(x0)
        if use_clipped_model_output:
            eps = (sample - a_t**0.5 * x0) / (1 - a_t) ** 0.5
        # σ_t of eq. 16: eta = 0 is DDIM, eta = 1 is DDPM's posterior variance.
        std = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise to DDIM's step, not both")
        if eta > 0:
            noise = variance_noise if variance_noise is not None else randn_like(model_output, generator)
            prev = prev + std * noise
        return SchedulerOutput(prev, x0)

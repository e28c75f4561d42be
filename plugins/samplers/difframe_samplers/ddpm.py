"""DDPM (Ho et al. 2020): ancestral sampling from the posterior q(x_{t-1} | x_t, x̂_0)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from difframe.scheduling import (
    AlphaScheduler,
    SchedulerOutput,
    defaults,
    randn_like,
    split_variance,
    x0_from_alpha,
)

from .options import refused_options


class DDPMScheduler(AlphaScheduler):
    layout_name = ("diffusers", "DDPMScheduler")
    refused_options = refused_options("DDPMScheduler")
    # No set_alpha_to_one: the last step always goes to ᾱ = 1, as in the reference.
    schedule_options = tuple(o for o in AlphaScheduler.schedule_options if o != "set_alpha_to_one")
    schedule_defaults = defaults(clip_sample=True)

    def __init__(
        self,
        # None (from a DPM-Solver config) is a model that predicts no variance: fixed_small, as in the reference.
        variance_type: Literal["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]
        | None = "fixed_small",
    ) -> None:
        """``variance_type``: the variance of each step's noise (the posterior's, the prior's, or the model's)."""

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, *, timesteps: Sequence[int] | None = None
    ) -> None:
        self.set_spaced_timesteps(num_inference_steps, timesteps, device)

    def _prev_timestep(self, timestep: int) -> int:
        if self.num_inference_steps is None:
            return timestep - 1
        index = int((self.timesteps == timestep).nonzero()[0][0])
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> SchedulerOutput:
        t = int(timestep)
        variance_type = self.config.variance_type
        model_output, predicted_variance = split_variance(variance_type, model_output, sample)
        a_t, a_prev = self.alphas_cumprod[t], self.alpha_prod_at(self._prev_timestep(t))
        alpha_t = a_t / a_prev
        beta_t = 1 - alpha_t  # the β of this (possibly multi-timestep) jump
        x0, _ = x0_from_alpha(self.config.prediction_type, model_output, sample, a_t)
        x0 = self.postprocess_x0(x0)
        # Posterior mean, eq. 7 of the paper.
        mean = (a_prev**0.5 * beta_t / (1 - a_t)) * x0 + (alpha_t**0.5 * (1 - a_prev) / (1 - a_t)) * sample
        if t == 0:
            return SchedulerOutput(mean, x0)
        noise = randn_like(model_output, generator)
        small = torch.clamp((1 - a_prev) / (1 - a_t) * beta_t, min=1e-20)  # the posterior's variance
        if variance_type == "fixed_small_log":
            std = torch.exp(0.5 * torch.log(small))
        elif variance_type == "fixed_large":  # the prior's variance β_t
            std = beta_t**0.5
        elif variance_type == "learned":  # the model's variance itself
            std = predicted_variance**0.5
        elif variance_type == "learned_range":  # the model interpolates between both, in log (Nichol & Dhariwal)
            fraction = (predicted_variance + 1) / 2
            std = torch.exp(0.5 * (fraction * torch.log(beta_t) + (1 - fraction) * torch.log(small)))
        else:  # fixed_small (or None)
            std = small**0.5
        return SchedulerOutput(mean + std * noise, x0)

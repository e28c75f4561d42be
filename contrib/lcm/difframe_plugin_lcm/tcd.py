"""TCD (Zheng et al. 2024): a consistency-model step to an intermediate timestep s = (1 - eta)·t_next, then
DDPM-style noise back up to t_next. eta = 0 is deterministic; eta = 1 is LCM-like."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from difframe.scheduling import (
    SchedulerOutput,
    randn_like,
    x0_from_alpha,
)

from .lcm import ConsistencyScheduler


class TCDScheduler(ConsistencyScheduler):
    layout_name = ("diffusers", "TCDScheduler")

    def __init__(
        self,
        original_inference_steps: int = 50,
        timestep_scaling: float = 10.0,
    ) -> None:
        """``original_inference_steps``: the distillation schedule's steps, which the timesteps are chosen from;
        ``timestep_scaling``: scales the timestep in the consistency boundary condition."""

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        *,
        original_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        strength: float = 1.0,
    ) -> None:
        if original_inference_steps is None:
            origin = self._origin_timesteps(self.config.original_inference_steps, strength)
        else:  # an explicit original_inference_steps picks from every training timestep (the reference's rule)
            origin = np.arange(0, int(self.config.num_train_timesteps * strength))
        self._choose(num_inference_steps, timesteps, origin, strength, device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        eta: float = 0.3,
        generator: torch.Generator | None = None,
    ) -> SchedulerOutput:
        if not 0 <= eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        i = self.current_index(timestep)
        timestep = torch.as_tensor(timestep).cpu()  # the schedule may live on the GPU; ᾱ stays on the CPU
        prev_t = self.timesteps[i + 1].cpu() if i + 1 < len(self.timesteps) else torch.tensor(0)
        s = torch.floor((1 - eta) * prev_t).to(dtype=torch.long)
        a_t, a_prev, a_s = self.alphas_cumprod[timestep], self.alpha_prod_at(prev_t), self.alphas_cumprod[s]
        x0, eps = x0_from_alpha(self.config.prediction_type, model_output, sample, a_t)
        noised = a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps  # the consistency estimate at timestep s
        if eta > 0 and i != self.num_inference_steps - 1:
            noise = randn_like(model_output, generator, noised.dtype)
            prev = (a_prev / a_s).sqrt() * noised + (1 - a_prev / a_s).sqrt() * noise
        else:
            prev = noised
        self.advance()
        return SchedulerOutput(prev, noised)

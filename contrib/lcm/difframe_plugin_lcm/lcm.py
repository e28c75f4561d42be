"""LCM (Luo et al. 2023): each step predicts the clean image with the consistency function, then re-noises it to
the next timestep of a schedule taken from the distillation's ``original_inference_steps`` timesteps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from difframe.scheduling import (
    AlphaScheduler,
    SchedulerOutput,
    StepTracking,
    check_steps,
    defaults,
    randn_like,
    x0_from_alpha,
)


class ConsistencyScheduler(StepTracking, AlphaScheduler):
    """What LCM and TCD share: the distillation timesteps, picking a subset of them, and tracking the step."""

    schedule_defaults = defaults(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")

    def _origin_timesteps(self, original_steps: int, strength: float) -> np.ndarray:
        """The timesteps the model was distilled on: every (T // original_steps)-th, ending at T - 1."""
        T = self.config.num_train_timesteps
        if original_steps > T:
            raise ValueError(f"original_inference_steps ({original_steps}) cannot exceed num_train_timesteps ({T})")
        return np.arange(1, int(original_steps * strength) + 1) * (T // original_steps) - 1

    def _choose(
        self,
        num_inference_steps: int | None,
        timesteps: Sequence[int] | None,
        origin: np.ndarray,
        strength: float,
        device: Any,
    ) -> None:
        check_steps(num_inference_steps, timesteps, None, self.config.num_train_timesteps)
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if timesteps is not None:
            chosen = np.array([int(t) for t in timesteps], dtype=np.int64)
            keep = min(int(len(chosen) * strength), len(chosen))  # image-to-image: skip the noisiest steps
            chosen = chosen[len(chosen) - keep :]
            self.num_inference_steps = len(timesteps)
        else:
            if len(origin) < num_inference_steps:
                raise ValueError(
                    f"num_inference_steps ({num_inference_steps}) cannot exceed the {len(origin)} distillation "
                    "timesteps (original_inference_steps x strength); use fewer steps or a higher strength"
                )
            # Evenly spaced picks from the distillation timesteps, noisiest first.
            picks = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
            chosen = origin[::-1][picks]
            self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(chosen.copy()).to(device=device, dtype=torch.long)
        self.restart()


class LCMScheduler(ConsistencyScheduler):
    layout_name = ("diffusers", "LCMScheduler")

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
        original = original_inference_steps or self.config.original_inference_steps
        self._choose(num_inference_steps, timesteps, self._origin_timesteps(original, strength), strength, device)

    def boundary_scalings(self, timestep: Any) -> tuple[Any, Any]:
        """c_skip, c_out of the consistency function: c_skip → 1, c_out → 0 as t → 0, so f(x, 0) = x."""
        sigma_data, t = 0.5, timestep * self.config.timestep_scaling
        return sigma_data**2 / (t**2 + sigma_data**2), t / (t**2 + sigma_data**2) ** 0.5

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> SchedulerOutput:
        i = self.current_index(timestep)
        timestep = torch.as_tensor(timestep).cpu()  # the schedule may live on the GPU; ᾱ stays on the CPU
        prev_t = self.timesteps[i + 1].cpu() if i + 1 < len(self.timesteps) else timestep
        a_t, a_prev = self.alphas_cumprod[timestep], self.alpha_prod_at(prev_t)
        c_skip, c_out = self.boundary_scalings(timestep)
        x0, _ = x0_from_alpha(self.config.prediction_type, model_output, sample, a_t)
        denoised = c_out * self.postprocess_x0(x0) + c_skip * sample
        if i != self.num_inference_steps - 1:  # re-noise to the next timestep; the last step returns the estimate
            prev = a_prev.sqrt() * denoised + (1 - a_prev).sqrt() * randn_like(model_output, generator, denoised.dtype)
        else:
            prev = denoised
        self.advance()
        return SchedulerOutput(prev, denoised)

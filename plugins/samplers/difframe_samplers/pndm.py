"""PNDM / PLMS (Liu et al. 2022): linear multistep on the noise prediction, with Runge-Kutta warm-up steps."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from difframe.scheduling import (
    NOISE_SCHEDULE,
    AlphaScheduler,
    SchedulerOutput,
    check_steps,
    defaults,
    spaced_timesteps,
)


class PNDMScheduler(AlphaScheduler):
    """``skip_prk_steps=True`` (the Stable Diffusion setting) is plain PLMS; otherwise the first three steps are
    pseudo Runge-Kutta (4 model calls each), so the timestep list is longer than ``num_inference_steps``."""

    layout_name = ("diffusers", "PNDMScheduler")
    schedule_options = (*NOISE_SCHEDULE, "set_alpha_to_one")
    schedule_defaults = defaults(set_alpha_to_one=False)
    finite_sigmas = True  # PNDM divides by ᾱ_t: with a zero-SNR schedule keep ᾱ_T just above 0

    def __init__(
        self,
        skip_prk_steps: bool = False,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
    ) -> None:
        self.prk_timesteps = np.array([], dtype=np.int64)
        self.ets: list[torch.Tensor] = []
        self.counter = 0

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None) -> None:
        c = self.config
        check_steps(num_inference_steps, None, None, c.num_train_timesteps)
        n, T = num_inference_steps, c.num_train_timesteps
        if n < 4 and not c.skip_prk_steps:
            raise ValueError(f"PNDM's Runge-Kutta warm-up needs at least 4 steps (got {n}); set skip_prk_steps=True")
        ts = spaced_timesteps(c.timestep_spacing, T, n, c.steps_offset).round()[::-1].astype(np.int64)  # ascending
        if c.skip_prk_steps:
            # PLMS needs one extra model call at the start: the second-to-last ascending timestep is visited twice.
            self.prk_timesteps = np.array([], dtype=np.int64)
            plms = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1]
        else:
            half = T // n // 2
            prk = np.array(ts[-4:]).repeat(2) + np.tile(np.array([0, half]), 4)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            plms = ts[:-3][::-1]
        self.num_inference_steps = n
        self.timesteps = torch.from_numpy(np.concatenate([self.prk_timesteps, plms]).astype(np.int64)).to(device)
        self.ets, self.counter, self._rk_sum, self._cur_sample = [], 0, 0, None

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *, generator: Any = None
    ) -> SchedulerOutput:
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self.step_prk(model_output, timestep, sample)
        return self.step_plms(model_output, timestep, sample)

    def _check_ready(self) -> None:
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps before stepping PNDMScheduler")

    def step_prk(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> SchedulerOutput:
        """One of the pseudo Runge-Kutta warm-up calls (``step`` calls it for the first timesteps).

        Four evaluations per step, combined with RK4 weights 1/6, 1/3, 1/3, 1/6; the even ones land half-way."""
        self._check_ready()
        if self.counter >= len(self.prk_timesteps):
            raise RuntimeError(
                f"PNDM has {len(self.prk_timesteps)} Runge-Kutta calls for this schedule (skip_prk_steps="
                f"{self.config.skip_prk_steps}) and all have run; continue with step_plms or step"
            )
        timestep = int(timestep)
        half = self.config.num_train_timesteps // self.num_inference_steps // 2
        prev_t = timestep - (0 if self.counter % 2 else half)
        t = int(self.prk_timesteps[self.counter // 4 * 4])
        stage = self.counter % 4
        if stage == 0:
            self._rk_sum = 1 / 6 * model_output
            self.ets.append(model_output)
            self._cur_sample = sample
        elif stage in (1, 2):
            self._rk_sum = self._rk_sum + 1 / 3 * model_output
        else:
            model_output = self._rk_sum + 1 / 6 * model_output
            self._rk_sum = 0
        base = self._cur_sample if self._cur_sample is not None else sample
        self.counter += 1
        return self._transfer(base, t, prev_t, model_output)

    def step_plms(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> SchedulerOutput:
        """One linear multistep call (``step`` calls it after the Runge-Kutta warm-up, or from the start with
        skip_prk_steps)."""
        self._check_ready()
        timestep = int(timestep)
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise RuntimeError("PNDM's PLMS steps must follow its Runge-Kutta steps: iterate scheduler.timesteps")
        jump = self.config.num_train_timesteps // self.num_inference_steps
        t, prev_t = timestep, timestep - jump
        if self.counter != 1:
            self.ets = [*self.ets[-3:], model_output]
        else:  # the repeated first timestep: a second evaluation for an improved (Heun-like) first step
            t, prev_t = timestep + jump, timestep
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self._cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample, self._cur_sample = self._cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = 1 / 24 * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        self.counter += 1
        return self._transfer(sample, t, prev_t, model_output)

    def _transfer(self, sample: torch.Tensor, t: int, prev_t: int, eps: torch.Tensor) -> SchedulerOutput:
        """The pseudo-numerical transfer φ(x_t, ε, t, t-δ) of eq. 11 (and the x̂_0 that ε implies)."""
        a_t, a_prev = self.alphas_cumprod[t], self.alpha_prod_at(prev_t)
        if self.config.prediction_type == "v_prediction":
            eps = a_t**0.5 * eps + (1 - a_t) ** 0.5 * sample
        denom = a_t * (1 - a_prev) ** 0.5 + (a_t * (1 - a_t) * a_prev) ** 0.5
        prev = (a_prev / a_t) ** 0.5 * sample - (a_prev - a_t) * eps / denom
        return SchedulerOutput(prev, (sample - (1 - a_t) ** 0.5 * eps) / a_t**0.5)

"""DPM-Solver++ multistep (Lu et al. 2022): DPM++ 2M (and 3M), and its SDE variant DPM++ 2M SDE.

With data prediction D_i = x̂_0 at step i, h = λ_next - λ_i and r = h_prev / h, the second-order update is
    x_next = (σ_next/σ_i)·x_i - α_next·(e^{-h} - 1)·(D_i + (D_i - D_{i-1}) / (2r))          (midpoint)
The SDE variant damps the sample by e^{-h} more and adds fresh noise σ_next·sqrt(1 - e^{-2h})·z.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from difframe.scheduling import (
    BetaSchedule,
    FinalSigmas,
    MultistepScheduler,
    PredictionType,
    SchedulerOutput,
    TimestepSpacing,
    randn_like,
)


class DPMSolverMultistepScheduler(MultistepScheduler):
    layout_name = ("diffusers", "DPMSolverMultistepScheduler")

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaSchedule = "linear",
        trained_betas: list[float] | None = None,
        solver_order: Literal[1, 2, 3] = 2,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        # "deis" (from a DEIS config) means the same data-prediction solver here.
        algorithm_type: Literal["dpmsolver++", "sde-dpmsolver++", "deis"] = "dpmsolver++",
        # UniPC's and DEIS' solver types (from their configs) fall back to midpoint.
        solver_type: Literal["midpoint", "heun", "logrho", "bh1", "bh2"] = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        final_sigmas_type: FinalSigmas = "zero",
        lambda_min_clipped: float = -float("inf"),
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        if algorithm_type == "deis":
            self.register_to_config(algorithm_type="dpmsolver++")
        if solver_type not in ("midpoint", "heun"):
            self.register_to_config(solver_type="midpoint")
        self._init_multistep()

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, *, timesteps: Sequence[int] | None = None
    ) -> None:
        c = self.config
        lambdas = torch.log(self.alphas_cumprod.sqrt()) - torch.log((1 - self.alphas_cumprod).sqrt())
        clipped = int(torch.searchsorted(torch.flip(lambdas, [0]), c.lambda_min_clipped))
        self._multistep_schedule(
            num_inference_steps,
            timesteps,
            device,
            round_karras=c.beta_schedule != "squaredcos_cap_v2",
            final_sigmas_type=c.final_sigmas_type,
            final_from_schedule=False,
            upto=c.num_train_timesteps - clipped,
        )

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> SchedulerOutput:
        c = self.config
        i = self._ensure_step_index(timestep)
        n = len(self.timesteps)
        short = c.lower_order_final and n < 15  # few steps: higher orders at the very end are unstable
        first_order = i == n - 1 and (c.euler_at_final or short or c.final_sigmas_type == "zero")
        second_order = i == n - 2 and short
        x0 = self.data_prediction(model_output, sample)
        self._remember(x0)
        sample = sample.to(torch.float32)
        sde = c.algorithm_type == "sde-dpmsolver++"
        noise = randn_like(model_output, generator, dtype=torch.float32) if sde else None
        if c.solver_order == 1 or self.lower_order_nums < 1 or first_order:
            prev = self._first_order(sample, noise)
        elif c.solver_order == 2 or self.lower_order_nums < 2 or second_order:
            prev = self._second_order(sample, noise)
        else:
            prev = self._third_order(sample, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self._step_index = i + 1
        return SchedulerOutput(prev.to(model_output.dtype), x0)

    def _first_order(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        i = self._step_index
        (alpha_t, sigma_t, lambda_t), (_, sigma_s, lambda_s) = self.lambdas(i + 1, i)
        h, d = lambda_t - lambda_s, self.model_outputs[-1]
        if noise is None:
            return sigma_t / sigma_s * x - alpha_t * (torch.exp(-h) - 1.0) * d
        return (
            sigma_t / sigma_s * torch.exp(-h) * x
            + alpha_t * (1 - torch.exp(-2.0 * h)) * d
            + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        )

    def _second_order(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        i = self._step_index
        (alpha_t, sigma_t, lambda_t), (_, sigma_s0, lambda_s0), (_, _, lambda_s1) = self.lambdas(i + 1, i, i - 1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        d0, d1 = m0, 1.0 / (h_0 / h) * (m0 - m1)
        midpoint = self.config.solver_type == "midpoint"
        if noise is None:
            if midpoint:
                correction = -0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
            else:
                correction = alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0) * d1
            return sigma_t / sigma_s0 * x - alpha_t * (torch.exp(-h) - 1.0) * d0 + correction
        if midpoint:
            correction = 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h))) * d1
        else:
            correction = alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0) * d1
        return (
            sigma_t / sigma_s0 * torch.exp(-h) * x
            + alpha_t * (1 - torch.exp(-2.0 * h)) * d0
            + correction
            + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        )

    def _third_order(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        i = self._step_index
        (alpha_t, sigma_t, lambda_t), (_, sigma_s0, lambda_s0), (_, _, lambda_s1), (_, _, lambda_s2) = self.lambdas(
            i + 1, i, i - 1, i - 2
        )
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0, d1_1 = 1.0 / r0 * (m0 - m1), 1.0 / r1 * (m1 - m2)
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = 1.0 / (r0 + r1) * (d1_0 - d1_1)
        if noise is None:
            return (
                sigma_t / sigma_s0 * x
                - alpha_t * (torch.exp(-h) - 1.0) * m0
                + alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0) * d1
                - alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5) * d2
            )
        return (
            sigma_t / sigma_s0 * torch.exp(-h) * x
            + alpha_t * (1.0 - torch.exp(-2.0 * h)) * m0
            + alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0) * d1
            + alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5) * d2
            + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
        )

"""DEIS (Zhang & Chen 2023), the log-ρ multistep variant: exact integration, in ρ = σ_t/α_t, of the Lagrange
polynomial through the last ``solver_order`` noise predictions, with the time variable log ρ."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from difframe.scheduling import (
    MultistepScheduler,
    SchedulerOutput,
    alpha_sigma,
)

from .options import refused_options


def log(value: torch.Tensor) -> torch.Tensor:
    # The coefficients below are differences of nearly equal terms, so 1-ulp differences in log change them
    # visibly; numpy's float32 log is the one the reference library uses.
    return torch.as_tensor(np.log(value.detach().cpu().numpy()))


def _integral_2(t: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Antiderivative (in ρ) of the degree-1 Lagrange basis in log ρ that is 1 at b and 0 at c."""
    return t * (-log(c) + log(t) - 1) / (log(b) - log(c))


def _integral_3(t: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Antiderivative of the degree-2 Lagrange basis in log ρ that is 1 at b and 0 at c and d."""
    lt, lc, ld = log(t), log(c), log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((log(b) - lc) * (log(b) - ld))


class DEISScheduler(MultistepScheduler):
    layout_name = ("diffusers", "DEISMultistepScheduler")
    refused_options = refused_options("DEISMultistepScheduler")

    def __init__(
        self,
        solver_order: Literal[1, 2, 3] = 2,
        # DPM-Solver's algorithm and the other solvers' types (from their configs) mean log-ρ DEIS here.
        algorithm_type: Literal["deis", "dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"] = "deis",
        solver_type: Literal["logrho", "midpoint", "heun", "bh1", "bh2"] = "logrho",
        lower_order_final: bool = True,
    ) -> None:
        if algorithm_type != "deis" or solver_type != "logrho":
            self.register_to_config(algorithm_type="deis", solver_type="logrho")

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, *, timesteps: Sequence[int] | None = None
    ) -> None:
        # DEIS never steps to σ = 0: it ends at the σ of timestep 0.
        self.set_multistep_schedule(num_inference_steps, timesteps, device, final_sigmas_type="sigma_min")

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *, generator: Any = None
    ) -> SchedulerOutput:
        c = self.config
        i = self.current_index(timestep)
        n = len(self.timesteps)
        short = c.lower_order_final and n < 15
        x0 = self.data_prediction(model_output, sample)
        alpha_t, sigma_t = alpha_sigma(self.sigmas[i])
        self.remember((sample - alpha_t * x0) / sigma_t)  # DEIS integrates noise predictions
        if c.solver_order == 1 or self.lower_order_nums < 1 or (i == n - 1 and short):
            prev = self._update(sample, 1)
        elif c.solver_order == 2 or self.lower_order_nums < 2 or (i == n - 2 and short):
            prev = self._update(sample, 2)
        else:
            prev = self._update(sample, 3)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self.advance()
        return SchedulerOutput(prev, x0)

    def _update(self, x: torch.Tensor, order: int) -> torch.Tensor:
        i = self.step_index
        (alpha_t, sigma_t, lambda_t), (alpha_s0, sigma_s0, lambda_s0) = self.lambdas(i + 1, i)
        m = self.model_outputs
        if order == 1:
            return alpha_t / alpha_s0 * x - sigma_t * (torch.exp(lambda_t - lambda_s0) - 1.0) * m[-1]
        rho_t, rho_s0 = sigma_t / alpha_t, sigma_s0 / alpha_s0
        rho = [alpha_sigma(self.sigmas[i - k]) for k in range(1, order)]
        rho = [s / a for a, s in rho]
        if order == 2:
            (rho_s1,) = rho
            coef1 = _integral_2(rho_t, rho_s0, rho_s1) - _integral_2(rho_s0, rho_s0, rho_s1)
            coef2 = _integral_2(rho_t, rho_s1, rho_s0) - _integral_2(rho_s0, rho_s1, rho_s0)
            return alpha_t * (x / alpha_s0 + coef1 * m[-1] + coef2 * m[-2])
        rho_s1, rho_s2 = rho
        coef1 = _integral_3(rho_t, rho_s0, rho_s1, rho_s2) - _integral_3(rho_s0, rho_s0, rho_s1, rho_s2)
        coef2 = _integral_3(rho_t, rho_s1, rho_s2, rho_s0) - _integral_3(rho_s0, rho_s1, rho_s2, rho_s0)
        coef3 = _integral_3(rho_t, rho_s2, rho_s0, rho_s1) - _integral_3(rho_s0, rho_s2, rho_s0, rho_s1)
        return alpha_t * (x / alpha_s0 + coef1 * m[-1] + coef2 * m[-2] + coef3 * m[-3])

"""DPM-Solver singlestep (Lu et al. 2022): the steps are grouped into runs of 1, 2 or 3 (``solver_order``); a run
of k steps is one k-th order step from the sample where the run began, through the intermediate model calls.

The k-th step of a run starts from the run's first sample x_s and uses the outputs at the run's k points: the same
DPM-Solver update as the multistep solver (``dpm_solver_update``), but with differences taken from the run's start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from difframe.scheduling import (
    FixedVariance,
    MultistepScheduler,
    SchedulerOutput,
    randn_like,
)

from .dpmpp import dpm_solver_update
from .options import refused_options


def run_orders(steps: int, order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """The order of each step: runs of 1, 2, ..., order; with ``lower_order_final`` the last run is cut short
    (so it ends with the schedule); a schedule that ends at σ = 0 ends with a first-order step."""
    full, rest = divmod(steps, order)
    if not lower_order_final:
        orders = list(range(1, order + 1)) * full
    elif rest == 0 and order > 1:  # end with a shorter run rather than a full one (more stable)
        orders = list(range(1, order + 1)) * (full - 1) + list(range(1, order)) + [1]
    else:
        orders = list(range(1, order + 1)) * full + list(range(1, rest + 1))
    if final_zero and orders:
        orders[-1] = 1
    return orders


class DPMSolverSinglestepScheduler(MultistepScheduler):
    layout_name = ("diffusers", "DPMSolverSinglestepScheduler")
    refused_options = refused_options("DPMSolverSinglestepScheduler")

    # Always linspace spacing over the whole schedule (as the reference): no timestep_spacing or steps_offset.
    schedule_options = (
        *(
            o
            for o in MultistepScheduler.schedule_options
            if o not in ("timestep_spacing", "steps_offset", "rescale_betas_zero_snr")
        ),
        "final_sigmas_type",
    )

    def __init__(
        self,
        solver_order: Literal[1, 2, 3] = 2,
        algorithm_type: Literal["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "deis"] = "dpmsolver++",
        solver_type: Literal["midpoint", "heun", "logrho", "bh1", "bh2"] = "midpoint",
        lower_order_final: bool = False,
        lambda_min_clipped: float = -float("inf"),
        # DDPM's fixed variance types (from its config) mean a model that predicts no variance, like None.
        variance_type: Literal["learned", "learned_range"] | FixedVariance | None = None,
    ) -> None:
        if algorithm_type == "deis":  # a DEIS config: the same data-prediction solver here
            self.register_to_config(algorithm_type="dpmsolver++")
        if solver_type not in ("midpoint", "heun"):
            self.register_to_config(solver_type="midpoint")
        if algorithm_type == "dpmsolver" and self.config.final_sigmas_type == "zero":
            raise ValueError(
                "algorithm_type='dpmsolver' cannot step to σ = 0 (its noise-prediction update divides by it); "
                "set final_sigmas_type='sigma_min' or use a '++' algorithm"
            )
        self.orders: list[int] = []
        self._run_start: torch.Tensor | None = None

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, *, timesteps: Sequence[int] | None = None
    ) -> None:
        c = self.config
        lambdas = torch.log(self.alphas_cumprod.sqrt()) - torch.log((1 - self.alphas_cumprod).sqrt())
        clipped = int(torch.searchsorted(torch.flip(lambdas, [0]), c.lambda_min_clipped))
        self.set_multistep_schedule(
            num_inference_steps,
            timesteps,
            device,
            final_sigmas_type=c.final_sigmas_type,
            final_from_schedule=False,
            upto=c.num_train_timesteps - clipped,
            spacing="linspace",
        )
        n, zero = len(self.timesteps), c.final_sigmas_type == "zero"
        # Whole runs only: an uneven count, or a schedule ending at σ = 0, needs the last run cut short (the
        # reference switches lower_order_final on in its config for these; this leaves the config as given).
        lower_order_final = c.lower_order_final or n % c.solver_order != 0 or zero
        self.orders = run_orders(n, c.solver_order, lower_order_final, zero)
        self._run_start = None

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> SchedulerOutput:
        c = self.config
        i = self.current_index(timestep)
        plus = c.algorithm_type.endswith("++")
        converted = self.data_prediction(model_output, sample) if plus else self.noise_prediction(model_output, sample)
        self.remember(converted)
        noise = randn_like(model_output, generator) if c.algorithm_type == "sde-dpmsolver++" else None
        order = self.orders[i]
        while self.model_outputs[-order] is None:  # an image-to-image start inside a run
            order -= 1
        if order == 1:
            self._run_start = sample
        prev = self._update(self._run_start, order, noise)
        self.advance()
        return SchedulerOutput(prev, converted if plus else None)

    def _update(self, x: torch.Tensor, order: int, noise: torch.Tensor | None) -> torch.Tensor:
        """From the run's first sample x (at step i - order + 1) to step i + 1, with the run's ``order`` outputs."""
        i, m = self.step_index, self.model_outputs
        points = self.lambdas(i + 1, *range(i - order + 1, i + 1))  # the target, then the run's points, oldest first
        (alpha_t, sigma_t, lambda_t), (alpha_s, sigma_s, lambda_s) = points[0], points[1]
        h = lambda_t - lambda_s
        ends = (alpha_s, sigma_s), (alpha_t, sigma_t)
        algorithm, midpoint = self.config.algorithm_type, self.config.solver_type == "midpoint"
        if order == 1:
            return dpm_solver_update(algorithm, x, *ends, h, m[-1], noise=noise)
        if order == 2:
            r0 = (points[2][2] - lambda_s) / h
            d1 = 1.0 / r0 * (m[-1] - m[-2])
            return dpm_solver_update(algorithm, x, *ends, h, m[-2], d1, midpoint=midpoint, noise=noise)
        r1, r0 = (points[2][2] - lambda_s) / h, (points[3][2] - lambda_s) / h
        d1_0, d1_1 = 1.0 / r1 * (m[-2] - m[-3]), 1.0 / r0 * (m[-1] - m[-3])
        if midpoint:  # the run's last difference alone, without the second-order term
            return dpm_solver_update(algorithm, x, *ends, h, m[-3], d1_1, noise=noise)
        d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
        d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
        return dpm_solver_update(algorithm, x, *ends, h, m[-3], d1, d2, noise=noise)

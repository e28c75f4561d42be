"""DPM-Solver multistep (Lu et al. 2022): DPM++ 2M (and 3M), its SDE variant DPM++ 2M SDE, and the original
noise-prediction DPM-Solver ('dpmsolver', 'sde-dpmsolver').

With data prediction D_i = x̂_0 at step i, h = λ_next - λ_i and r = h_prev / h, the second-order update is
    x_next = (σ_next/σ_i)·x_i - α_next·(e^{-h} - 1)·(D_i + (D_i - D_{i-1}) / (2r))          (midpoint)
The SDE variant damps the sample by e^{-h} more and adds fresh noise σ_next·sqrt(1 - e^{-2h})·z. The noise-prediction
variants integrate ε̂ instead, in e^{h}.
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

from .options import refused_options

Algorithm = Literal["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"]


def dpm_solver_update(
    algorithm: str,
    x: torch.Tensor,
    start: tuple[torch.Tensor, torch.Tensor],
    end: tuple[torch.Tensor, torch.Tensor],
    h: torch.Tensor,
    d0: torch.Tensor,
    d1: torch.Tensor | None = None,
    d2: torch.Tensor | None = None,
    *,
    midpoint: bool = False,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DPM-Solver step from x at (α_s, σ_s) to (α_t, σ_t), h = λ_t - λ_s, given the model output d0 and its first
    and second divided differences d1, d2 in λ (Taylor terms). ``midpoint``: the cheaper second-order rule (d1/2).
    '++' algorithms integrate x̂_0 (in e^{-h}), the others ε̂ (in e^{h}); 'sde-' ones add ``noise``."""
    (alpha_s, sigma_s), (alpha_t, sigma_t) = start, end
    # Each coefficient is grouped as the reference library groups it, so float32 rounding matches too.
    spread = None  # the scale of the fresh noise (SDE variants)
    if algorithm == "dpmsolver++":
        phi = torch.exp(-h) - 1.0
        out = sigma_t / sigma_s * x - alpha_t * phi * d0
        c1 = -(0.5 * (alpha_t * phi)) if midpoint else alpha_t * (phi / h + 1.0)
        c2 = -(alpha_t * ((phi + h) / h**2 - 0.5))
    elif algorithm == "dpmsolver":
        phi = torch.exp(h) - 1.0
        out = alpha_t / alpha_s * x - sigma_t * phi * d0
        c1 = -(0.5 * (sigma_t * phi)) if midpoint else -(sigma_t * (phi / h - 1.0))
        c2 = -(sigma_t * ((phi - h) / h**2 - 0.5))
    elif algorithm == "sde-dpmsolver++":
        phi = 1.0 - torch.exp(-2.0 * h)
        out = sigma_t / sigma_s * torch.exp(-h) * x + alpha_t * phi * d0
        c1 = 0.5 * (alpha_t * phi) if midpoint else alpha_t * (phi / (-2.0 * h) + 1.0)
        c2 = alpha_t * ((phi - 2.0 * h) / (2.0 * h) ** 2 - 0.5)
        spread = sigma_t * torch.sqrt(phi)
    elif algorithm == "sde-dpmsolver":
        phi = torch.exp(h) - 1.0
        out = alpha_t / alpha_s * x - 2.0 * (sigma_t * phi) * d0
        c1 = -(sigma_t * phi) if midpoint else -(2.0 * (sigma_t * (phi / h - 1.0)))
        c2 = None
        spread = sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0)
    else:
        raise ValueError(f"unknown algorithm_type {algorithm!r}")
    if d1 is not None:
        out = out + c1 * d1
    if d2 is not None:
        if c2 is None:
            raise ValueError(
                f"{algorithm} has no third-order update (nor has the reference library); use solver_order=2"
            )
        out = out + c2 * d2
    return out if spread is None else out + spread * noise


class DPMSolverMultistepScheduler(MultistepScheduler):
    layout_name = ("diffusers", "DPMSolverMultistepScheduler")
    refused_options = refused_options("DPMSolverMultistepScheduler")

    schedule_options = (*MultistepScheduler.schedule_options, "final_sigmas_type")

    def __init__(
        self,
        solver_order: Literal[1, 2, 3] = 2,
        # "deis" (from a DEIS config) means the same data-prediction solver here.
        algorithm_type: Algorithm | Literal["deis"] = "dpmsolver++",
        # UniPC's and DEIS' solver types (from their configs) fall back to midpoint.
        solver_type: Literal["midpoint", "heun", "logrho", "bh1", "bh2"] = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_lu_lambdas: bool = False,
        lambda_min_clipped: float = -float("inf"),
        # DDPM's fixed variance types (from its config) mean a model that predicts no variance, like None.
        variance_type: Literal["learned", "learned_range"] | FixedVariance | None = None,
    ) -> None:
        if algorithm_type == "deis":
            self.register_to_config(algorithm_type="dpmsolver++")
        if solver_type not in ("midpoint", "heun"):
            self.register_to_config(solver_type="midpoint")
        if algorithm_type in ("dpmsolver", "sde-dpmsolver") and self.config.final_sigmas_type == "zero":
            raise ValueError(
                f"algorithm_type={algorithm_type!r} cannot step to σ = 0 (its noise-prediction update divides by it); "
                "set final_sigmas_type='sigma_min' or use a '++' algorithm"
            )

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
            round_karras=c.beta_schedule != "squaredcos_cap_v2",
            final_sigmas_type=c.final_sigmas_type,
            final_from_schedule=False,
            upto=c.num_train_timesteps - clipped,
        )

    def convert(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """What the solver integrates: x̂_0 for the '++' algorithms, ε̂ for the others."""
        if self.config.algorithm_type.endswith("++"):
            return self.data_prediction(model_output, sample)
        return self.noise_prediction(model_output, sample)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput:
        c = self.config
        i = self.current_index(timestep)
        n = len(self.timesteps)
        short = c.lower_order_final and n < 15  # few steps: higher orders at the very end are unstable
        first_order = i == n - 1 and (c.euler_at_final or short or c.final_sigmas_type == "zero")
        second_order = i == n - 2 and short
        converted = self.convert(model_output, sample)
        self.remember(converted)
        sample = sample.to(torch.float32)
        noise = None
        if c.algorithm_type.startswith("sde-"):
            if variance_noise is not None:
                noise = variance_noise.to(device=model_output.device, dtype=torch.float32)
            else:
                noise = randn_like(model_output, generator, dtype=torch.float32)
        if c.solver_order == 1 or self.lower_order_nums < 1 or first_order:
            order = 1
        elif c.solver_order == 2 or self.lower_order_nums < 2 or second_order:
            order = 2
        else:
            order = 3
        prev = self._update(sample, order, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self.advance()
        x0 = converted if c.algorithm_type.endswith("++") else None
        return SchedulerOutput(prev.to(model_output.dtype), x0)

    def _update(self, x: torch.Tensor, order: int, noise: torch.Tensor | None) -> torch.Tensor:
        """The step from step i to i + 1 from the last ``order`` outputs: their divided differences in λ."""
        i = self.step_index
        (alpha_t, sigma_t, lambda_t), (alpha_s0, sigma_s0, lambda_s0) = self.lambdas(i + 1, i)
        h, m = lambda_t - lambda_s0, self.model_outputs
        ends = (alpha_s0, sigma_s0), (alpha_t, sigma_t)
        algorithm, midpoint = self.config.algorithm_type, self.config.solver_type == "midpoint"
        if order == 1:
            return dpm_solver_update(algorithm, x, *ends, h, m[-1], noise=noise)
        lambda_s1 = self.lambdas(i - 1)[0][2]
        r0 = (lambda_s0 - lambda_s1) / h
        d1_0 = 1.0 / r0 * (m[-1] - m[-2])
        if order == 2:
            return dpm_solver_update(algorithm, x, *ends, h, m[-1], d1_0, midpoint=midpoint, noise=noise)
        r1 = (lambda_s1 - self.lambdas(i - 2)[0][2]) / h
        d1_1 = 1.0 / r1 * (m[-2] - m[-3])
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = 1.0 / (r0 + r1) * (d1_0 - d1_1)
        return dpm_solver_update(algorithm, x, *ends, h, m[-1], d1, d2, noise=noise)

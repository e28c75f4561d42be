"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) and, after each model call, a corrector (UniC) that
refines the previous step with the new model output at no extra cost.

Both solve for coefficients ρ from the linear system R·ρ = b built from the step-size ratios r_k and the φ
functions of h (the B(h) variants bh1: B(h) = h, bh2: B(h) = e^h - 1).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import torch
from difframe.errors import ConfigError
from difframe.scheduling import (
    SIGMA_BOUNDS,
    MultistepScheduler,
    SchedulerMixin,
    SchedulerOutput,
    alpha_sigma,
)

from .options import refused_options


class UniPCScheduler(MultistepScheduler):
    layout_name = ("diffusers", "UniPCMultistepScheduler")
    refused_options = refused_options("UniPCMultistepScheduler")

    schedule_options = (*MultistepScheduler.schedule_options, *SIGMA_BOUNDS)

    def __init__(
        self,
        solver_order: Literal[1, 2, 3] = 2,
        predict_x0: bool = True,
        # DPM-Solver's and DEIS' solver types (from their configs) fall back to bh2.
        solver_type: Literal["bh1", "bh2", "midpoint", "heun", "logrho"] = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] = [],  # noqa: B006 - recorded in the config; never mutated
        # Another sampler as the predictor ("solver_p + UniC"): its step replaces UniP; the corrector stays.
        solver_p: SchedulerMixin | None = None,
    ) -> None:
        if solver_type not in ("bh1", "bh2"):
            self.register_to_config(solver_type="bh2")
        self.last_sample: torch.Tensor | None = None
        self.solver_p = solver_p

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, *, timesteps: Sequence[int] | None = None
    ) -> None:
        self.set_multistep_schedule(
            num_inference_steps, timesteps, device, final_sigmas_type=self.config.final_sigmas_type
        )
        self.last_sample, self._order = None, 1
        if self.solver_p is not None:
            self.solver_p.set_timesteps(self.num_inference_steps, device=device)

    def config_dict_for_saving(self) -> dict[str, Any]:
        if self.solver_p is not None:
            raise ConfigError(
                "a UniPC sampler with a solver_p cannot be saved: scheduler_config.json cannot hold another sampler; "
                "save the predictor's config on its own and pass solver_p again after loading"
            )
        return super().config_dict_for_saving()

    def _convert(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Data prediction x̂_0 (predict_x0) or noise prediction ε̂ (the original UniPC formulation)."""
        if self.config.predict_x0:
            return self.data_prediction(model_output, sample)
        kind = self.config.prediction_type
        if kind == "epsilon":
            return model_output
        alpha_t, sigma_t = alpha_sigma(self.sigmas[self.step_index])
        if kind == "sample":
            return (sample - alpha_t * model_output) / sigma_t
        return alpha_t * model_output + sigma_t * sample

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *, generator: Any = None
    ) -> SchedulerOutput:
        c = self.config
        i = self.current_index(timestep)
        converted = self._convert(model_output, sample)
        if i > 0 and (i - 1) not in c.disable_corrector and self.last_sample is not None:
            sample = self._update(self.last_sample, i - 1, self._order, corrector_output=converted)
        self.remember(converted)
        order = min(c.solver_order, len(self.timesteps) - i) if c.lower_order_final else c.solver_order
        self._order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        if self.solver_p is None:
            prev = self._update(sample, i, self._order)
        else:  # the predictor gets the raw model output, as a sampler of its own would
            takes_generator = "generator" in inspect.signature(self.solver_p.step).parameters
            extra = {"generator": generator} if takes_generator else {}
            prev = self.solver_p.step(model_output, timestep, sample, **extra).prev_sample
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self.advance()
        return SchedulerOutput(prev, converted if c.predict_x0 else None)

    def _update(
        self, x: torch.Tensor, s: int, order: int, corrector_output: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The step from the sample x at step s to step s + 1, using the stored outputs (the newest is step s's).

        UniP (``corrector_output`` None) predicts the new sample. UniC, given the model output at s + 1, recomputes
        the same step with it, one order more accurate; that replaces the predicted sample.
        """
        device = x.device
        outputs, m0 = self.model_outputs, self.model_outputs[-1]
        (alpha_t, sigma_t, lambda_t), (alpha_s0, sigma_s0, lambda_s0) = self.lambdas(s + 1, s, device=device)
        h = lambda_t - lambda_s0
        # Older steps enter through r_k = (λ_{s-k} - λ_s) / h and the divided differences (m_{s-k} - m_s) / r_k.
        rks, d1s = [], []
        for k in range(1, order):
            rk = (self.lambdas(s - k, device=device)[0][2] - lambda_s0) / h
            rks.append(rk)
            d1s.append((outputs[-(k + 1)] - m0) / rk)
        rks = torch.stack([*rks, torch.ones((), device=device)])
        hh = -h if self.config.predict_x0 else h
        h_phi_1 = torch.expm1(hh)
        b_h = hh if self.config.solver_type == "bh1" else torch.expm1(hh)
        # The order conditions R·ρ = b: R_kj = r_j^k, b_k = k!·φ_{k+1}(h)/B(h) (φ by its recurrence).
        R, b, factorial, h_phi_k = [], [], 1, h_phi_1 / hh - 1
        for k in range(1, order + 1):
            R.append(torch.pow(rks, k - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        R, b = torch.stack(R), torch.stack(b)
        differences = torch.stack(d1s, dim=1) if d1s else None
        if self.config.predict_x0:
            base, scale = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0, alpha_t
        else:
            base, scale = alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0, sigma_t
        half = torch.ones(1, dtype=x.dtype, device=device) * 0.5
        if corrector_output is None:
            if differences is None:
                return base.to(x.dtype)
            rhos = half if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).to(device).to(x.dtype)
            return (base - scale * b_h * torch.einsum("k,bkc...->bc...", rhos, differences)).to(x.dtype)
        rhos = half if order == 1 else torch.linalg.solve(R, b).to(device).to(x.dtype)
        res = torch.einsum("k,bkc...->bc...", rhos[:-1], differences) if differences is not None else 0
        return (base - scale * b_h * (res + rhos[-1] * (corrector_output - m0))).to(x.dtype)

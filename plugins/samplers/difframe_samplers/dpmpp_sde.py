"""DPM++ SDE (k-diffusion's sample_dpmpp_sde, Lu et al. 2022): a stochastic second-order single-step solver in
log σ, with the noise of both half steps drawn from one Brownian tree (needs ``torchsde``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from difframe.scheduling import (
    SchedulerOutput,
    SigmaScheduler,
    defaults,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    x0_from_sigma,
)

from .heun import interleave


class BrownianTreeNoise:
    """Unit-variance noise for the σ interval [σ_next, σ] from a Brownian motion W(σ): (W(σ) - W(σ_next)) / sqrt(Δσ).

    Noise for overlapping intervals is consistent (a half step and the full step share their randomness), which is
    what lets a second-order SDE solver converge; a seed makes the whole path reproducible.
    """

    def __init__(self, like: torch.Tensor, sigma_min: float, sigma_max: float, seed: int) -> None:
        import torchsde

        self.tree = torchsde.BrownianInterval(
            t0=torch.as_tensor(sigma_min),  # float32 tensors, as the tree's dyadic splits depend on the dtype
            t1=torch.as_tensor(sigma_max),
            size=like.shape,
            dtype=like.dtype,
            device=like.device,
            entropy=seed,
            tol=1e-6,
            pool_size=24,
            halfway_tree=True,
        )

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        lo, hi = sorted((torch.as_tensor(sigma), torch.as_tensor(sigma_next)))
        sign = 1.0 if sigma < sigma_next else -1.0
        return self.tree(lo, hi) * sign / (hi - lo).abs().sqrt()


class DPMSolverSDEScheduler(SigmaScheduler):
    schedule_defaults = defaults(beta_start=0.00085, beta_end=0.012)
    """``noise_sampler_seed`` fixes the Brownian tree; without it, the seed is drawn from the step's generator (or
    torch's global generator) on the first step."""

    layout_name = ("diffusers", "DPMSolverSDEScheduler")
    order = 2

    def __init__(
        self,
        noise_sampler_seed: int | None = None,
    ) -> None:
        self._first_sample: torch.Tensor | None = None
        self.noise_sampler: BrownianTreeNoise | None = None

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: Any = None, num_train_timesteps: int | None = None
    ) -> None:
        """``num_train_timesteps``: space the steps over the first this many training timesteps."""
        steps, sigmas = self.sigma_schedule(
            num_inference_steps, None, None, dtype=np.float64, num_train_timesteps=num_train_timesteps
        )
        self.num_inference_steps = len(steps)
        # The second call of each step is at the midpoint in log σ between σ and σ_next.
        s = -np.log(sigmas[:-1].astype(np.float64))
        mid_t = sigma_to_t(
            np.exp(-(s[:-1] + np.diff(s) * 0.5)), np.log(sigmas_from_alphas_cumprod(self.alphas_cumprod))
        )
        timesteps = interleave(torch.from_numpy(steps.astype(np.float64)), keep_last=False)
        timesteps[1::2] = torch.from_numpy(mid_t)
        self.sigmas = interleave(torch.from_numpy(sigmas))
        self.timesteps = timesteps.to(device=device)
        self._first_sample, self._mid_sigma, self.noise_sampler = None, None, None
        self.restart()

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        sigma = self.sigmas[self.current_index(timestep)]
        sigma = sigma if self._first_sample is None else self._mid_sigma
        return sample / (sigma**2 + 1) ** 0.5

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        s_noise: float = 1.0,
    ) -> SchedulerOutput:
        i = self.current_index(timestep)
        if self.noise_sampler is None:
            seed = self.config.noise_sampler_seed
            if seed is None:
                first = generator[0] if isinstance(generator, (list, tuple)) else generator
                seed = int(torch.randint(0, 2**63 - 1, [], generator=first).item())
            positive = self.sigmas[self.sigmas > 0]
            self.noise_sampler = BrownianTreeNoise(sample, positive.min().item(), self.sigmas.max().item(), seed)
        first = self._first_sample is None
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        # Work in s = -log σ, where the solver's steps are linear.
        s, s_next = sigma.log().neg(), sigma_next.log().neg()
        s_mid = s + (s_next - s) * 0.5
        x0 = x0_from_sigma(self.config.prediction_type, model_output, sample, sigma if first else s_mid.neg().exp())
        if sigma_next == 0:  # last step: plain Euler to σ = 0
            prev = sample + (sample - x0) / sigma * (sigma_next - sigma)
        else:
            target = s_mid if first else s_next
            if not first:
                sample = self._first_sample
            sigma_from, sigma_to = s.neg().exp(), target.neg().exp()
            sigma_up = min(sigma_to, (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
            s_down = ((sigma_to**2 - sigma_up**2) ** 0.5).log().neg()
            prev = s_down.neg().exp() / s.neg().exp() * sample - (s - s_down).expm1() * x0
            prev = prev + self.noise_sampler(sigma_from, sigma_to) * s_noise * sigma_up
            self._first_sample, self._mid_sigma = (sample, sigma_to) if first else (None, None)
        self.advance()
        return SchedulerOutput(prev, x0)

"""SchedulerMixin: the interface every sampler shares, and the noise-schedule math they all use."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .configuration import ConfigMixin


@dataclass
class SchedulerOutput:
    """What ``step`` returns: the sample for the next (lower-noise) timestep and the model's clean estimate."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __iter__(self):  # allows `prev, x0 = scheduler.step(...)`
        return iter((self.prev_sample, self.pred_original_sample))


def betas_for_alpha_bar(num_steps: int, alpha_bar: Any, max_beta: float = 0.999) -> torch.Tensor:
    """Discretize a continuous alpha_bar(t), t in [0, 1], into betas (Nichol & Dhariwal 2021)."""
    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Any = None,
) -> torch.Tensor:
    """The training noise schedule named in scheduler_config.json."""
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":  # linear in sqrt(beta): the Stable Diffusion schedule
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(num_train_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    if beta_schedule == "sqrt":  # alpha_bar(t) = 1 - sqrt(t + s), Li et al. 2022 (Diffusion-LM)
        return betas_for_alpha_bar(num_train_timesteps, lambda t: 1 - math.sqrt(t + 0.0001))
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}; use linear, scaled_linear, squaredcos_cap_v2 or sqrt")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift the schedule so the last timestep has zero signal (Lin et al. 2023, 'Common Diffusion Noise
    Schedules and Sample Steps are Flawed', Algorithm 1)."""
    sqrt_alpha_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * first / (first - last)
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[0:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


class SchedulerMixin(ConfigMixin):
    """Every sampler: set_timesteps, scale_model_input, step, add_noise, init_noise_sigma, order.

    Samplers read and write the shared scheduler_config.json, so any sampler swaps into any pipeline:
    ``EulerScheduler.from_config(pipe.scheduler.config)`` keeps the model's noise schedule.
    """

    config_name: ClassVar[str] = "scheduler_config.json"
    order: ClassVar[int] = 1
    init_noise_sigma: float = 1.0
    timesteps: torch.Tensor
    num_inference_steps: int | None = None

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> None:
        raise NotImplementedError

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None
    ) -> SchedulerOutput:
        raise NotImplementedError

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.config.get("num_train_timesteps", 1000))

"""Helpers for testing difframe and its plugins: toy components and a fake Hugging Face cache.

The toy classes are real (they save, load and run); they are small so tests stay fast.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .hookspecs import hookimpl
from .modeling import ModelMixin
from .pipeline import Component, DiffusionPipeline
from .scheduling import SchedulerMixin, SchedulerOutput, make_betas


class ToyDenoiser(ModelMixin):
    """A per-pixel MLP over channels, conditioned on the timestep."""

    layout_name = ("difframe-testing", "ToyDenoiser")
    supports_gradient_checkpointing = True

    def __init__(self, channels: int = 4, hidden: int = 16) -> None:
        super().__init__()
        self.inner = nn.Conv2d(channels + 1, hidden, 1)
        self.outer = nn.Conv2d(hidden, channels, 1)
        self.register_buffer("scale", torch.tensor(1.0 / 1000), persistent=False)
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=sample.dtype, device=sample.device) * self.scale
        t = t.reshape(-1, 1, 1, 1).expand(sample.shape[0], 1, *sample.shape[2:])
        hidden = torch.cat([sample, t], dim=1)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            hidden = torch.utils.checkpoint.checkpoint(self.inner, hidden, use_reentrant=False)
        else:
            hidden = self.inner(hidden)
        return self.outer(torch.nn.functional.silu(hidden))


class ToyScheduler(SchedulerMixin):
    """Deterministic DDIM (eta 0) with leading spacing: small, exact, good enough for core tests."""

    layout_name = ("difframe-testing", "ToyScheduler")

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
    ) -> None:
        betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule)
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> None:
        if not num_inference_steps or num_inference_steps < 1:
            raise ValueError("num_inference_steps must be at least 1")
        self.num_inference_steps = num_inference_steps
        stride = self.config.num_train_timesteps // num_inference_steps
        self.timesteps = (torch.arange(num_inference_steps - 1, -1, -1) * stride).to(device)

    def step(self, model_output, timestep, sample, generator=None) -> SchedulerOutput:
        t = int(timestep)
        previous = t - self.config.num_train_timesteps // (self.num_inference_steps or 1)
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[previous] if previous >= 0 else torch.tensor(1.0)
        x0 = (sample - (1 - a_t).sqrt() * model_output) / a_t.sqrt()
        return SchedulerOutput(a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * model_output, x0)

    def add_noise(self, original, noise, timesteps):
        a = self.alphas_cumprod.to(original.device)[timesteps].reshape(-1, *[1] * (original.ndim - 1))
        return a.sqrt() * original + (1 - a).sqrt() * noise


class ToyPipeline(DiffusionPipeline):
    """Unconditional denoising loop over ToyDenoiser: the smallest complete pipeline."""

    layout_name = ("difframe-testing", "ToyPipeline")
    denoiser = Component("model")
    scheduler = Component("scheduler")
    extra = Component("model", optional=True)

    @torch.no_grad()
    def __call__(self, batch_size: int = 1, size: int = 8, steps: int = 4, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        sample = torch.randn(batch_size, self.denoiser.config.channels, size, size, generator=generator)
        self.scheduler.set_timesteps(steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            sample = self.scheduler.step(self.denoiser(sample, t), t, sample).prev_sample
        return sample


class ToyPlugin:
    """Registers the toys, the way an installed plugin would."""

    __name__ = "difframe-toys"

    @hookimpl
    def register_model(self, register):
        register(
            name="toy-denoiser",
            factory="difframe.testing:ToyDenoiser",
            role="denoiser",
            loads=[("difframe-testing", "ToyDenoiser")],
        )

    @hookimpl
    def register_scheduler(self, register):
        register(
            name="toy",
            factory="difframe.testing:ToyScheduler",
            aliases=("Toy DDIM",),
            loads=[("difframe-testing", "ToyScheduler")],
        )

    @hookimpl
    def register_pipeline(self, register):
        register(name="toy", factory="difframe.testing:ToyPipeline")


class ToyBackend:
    """A backend for tests: routes the toy denoiser's forward through itself and counts the calls."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.calls = 0

    def apply(self, pipeline: DiffusionPipeline) -> None:
        denoiser = pipeline.denoiser
        eager = denoiser.forward

        def forward(sample: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
            self.calls += 1
            return eager(sample, timestep) * self.scale

        denoiser.forward = forward


def make_toy_pipeline(seed: int = 0) -> ToyPipeline:
    torch.manual_seed(seed)
    return ToyPipeline(denoiser=ToyDenoiser(), scheduler=ToyScheduler())


def make_hub_cache(cache_dir: str | Path, repo_id: str, folder: str | Path, revision: str = "0" * 40) -> Path:
    """Lay ``folder`` out as a Hugging Face cache snapshot of ``repo_id`` (the layout huggingface_hub reads).

    Files are stored once under blobs/ and linked from snapshots/<revision>/, as the hub's own cache does.
    """
    repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    for source in sorted(Path(folder).rglob("*")):
        if source.is_dir():
            continue
        relative = source.relative_to(folder)
        blob = repo / "blobs" / f"{abs(hash((repo_id, str(relative)))):x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, blob)
        target = snapshot / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(*[".."] * (len(relative.parts) - 1), "..", "..", "blobs", blob.name))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot

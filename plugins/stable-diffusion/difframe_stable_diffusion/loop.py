"""The denoising loop as a plain function: one chunk of images from its starting latents to its final ones, over the
UNet (through the pipeline's runner), the call's own sampler, the guider and the inference hooks."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .batching import ImageJob
from .concurrency import CallState
from .guided_steps import guided_prediction
from .numerics import FiniteWatch
from .request import GenerationRequest

AfterStep = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Chunk:
    """The images of one chunk: their jobs, noise generators and (guidance-ordered) text embeddings."""

    start: int
    stop: int
    jobs: list[ImageJob]
    generators: list[torch.Generator] | torch.Generator | None
    embeds: torch.Tensor  # [uncond..., cond...] with guidance, else cond
    guided: bool
    latents: torch.Tensor | None = None  # user-given starting latents for these images
    extras: dict[str, Any] = field(default_factory=dict)  # the pipeline's per-image inputs (init images, masks)
    sampler: Any = None  # this call's own copy of the pipeline's sampler
    call: CallState | None = None
    watch: FiniteWatch | None = None
    request: GenerationRequest | None = None
    progress: Any = None
    steps: int = 0  # sampler steps this chunk runs (what the progress bar counts)
    steps_done: int = 0  # of them, finished

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class Start:
    """What a pipeline gives the loop: starting latents, the timesteps to run, extra UNet input channels
    (inpainting UNets) and a function applied after each step (inpainting with a plain UNet)."""

    latents: torch.Tensor
    timesteps: torch.Tensor
    model_extra: torch.Tensor | None = None
    after_step: AfterStep | None = None


def steps_finished(iterations: int, loop_length: int, steps: int) -> int:
    """Sampler steps finished after ``iterations`` loop iterations: a sampler that calls the model twice per step
    runs about 2 iterations per step, and its progress is still counted in steps."""
    if loop_length <= 0:
        return steps
    return min(steps, math.ceil(iterations * steps / loop_length))


def model_input(sampler: Any, batch: torch.Tensor, t: Any, extra: torch.Tensor | None, rows: int) -> torch.Tensor:
    """The denoiser's input: the stacked latents scaled for the sampler, then the extra channels (inpainting)."""
    batch = sampler.scale_model_input(batch, t)
    if extra is None:
        return batch
    return torch.cat([batch, extra[:rows].repeat(batch.shape[0] // rows, 1, 1, 1)], dim=1)


def _step_accepts_generator(sampler: Any) -> bool:
    try:
        return "generator" in inspect.signature(sampler.step).parameters
    except (TypeError, ValueError):
        return False


def denoise(pipe: Any, chunk: Chunk, start: Start) -> torch.Tensor:
    """The sampling loop over ``start.timesteps`` for one chunk; returns the final latents. Stops with a
    NonFiniteError naming the step and stage where NaN or infinity first appears."""
    request = chunk.request
    assert request is not None, "a chunk carries its call's request"
    sampler, latents, timesteps, watch = chunk.sampler, start.latents, start.timesteps, chunk.watch
    step_kwargs = {"generator": chunk.generators} if _step_accepts_generator(sampler) else {}
    embeds, callback, total = chunk.embeds, request.callback_on_step_end, len(timesteps)
    if watch is not None:
        watch.steps = total
        watch.record(-1, None, "starting latents", latents, chunk.size)
    attention_kwargs = pipe.chunk_attention_kwargs(chunk, request.cross_attention_kwargs)  # its image prompts' rows
    pipe._activate(pipe.unet)
    guider = pipe.guider.begin(total)
    pipe._hook_set().reset()  # each chunk starts with empty hook state

    def run_unet(batch: torch.Tensor, rows: torch.Tensor, t: Any) -> torch.Tensor:
        return pipe._run("unet", pipe.unet, pipe.unet, batch, t, rows, cross_attention_kwargs=attention_kwargs)

    for i, t in enumerate(timesteps):
        if chunk.call is not None and chunk.call.interrupted:
            break
        raw, noise_pred = guided_prediction(
            guider,
            index=i,
            total=total,
            timestep=t,
            latents=latents,
            embeds=embeds,
            guided=chunk.guided,
            prepare=lambda batch, t=t: model_input(sampler, batch, t, start.model_extra, chunk.size),
            run_denoiser=lambda batch, rows, t=t: run_unet(batch, rows, t),
            guidance_scale=request.guidance_scale,
            guidance_rescale=request.guidance_rescale,
        )
        if watch is not None:
            watch.record(i, t, "UNet output", raw, chunk.size)
            if chunk.guided:
                watch.record(i, t, "guidance", noise_pred, chunk.size)
        latents = sampler.step(noise_pred, t, latents, **step_kwargs).prev_sample
        if watch is not None:
            watch.record(i, t, "sampler step", latents, chunk.size)
        if start.after_step is not None:
            latents = start.after_step(i, t, latents)
            if watch is not None:
                watch.record(i, t, "inpainting blend", latents, chunk.size)
        if callback is not None:
            latents, embeds = _call_back(pipe, callback, chunk, i, t, latents, embeds)
        done = steps_finished(i + 1, total, chunk.steps)
        if chunk.progress is not None and done > chunk.steps_done:
            chunk.progress.update(done - chunk.steps_done)
        chunk.steps_done = done
        if watch is not None:
            watch.end_step(i)
    if watch is not None:
        watch.check()
    return latents


def _call_back(
    pipe: Any, callback: Callable[..., Any], chunk: Chunk, i: int, t: Any, latents: torch.Tensor, embeds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = {"latents": latents, "prompt_embeds": embeds, "images": (chunk.start, chunk.stop)}
    returned = callback(pipe, i, t, tensors)
    if returned is not None and not isinstance(returned, dict):
        raise TypeError(
            f"callback_on_step_end must return a dict such as {{'latents': ...}} or None, got {type(returned).__name__}"
        )
    if returned and "latents" in returned and returned["latents"].shape != latents.shape:
        raise ValueError(
            f"callback_on_step_end returned latents of shape {tuple(returned['latents'].shape)}; they must keep the "
            f"shape {tuple(latents.shape)}"
        )
    if not returned:
        return latents, embeds
    latents = returned.get("latents", latents)
    if chunk.watch is not None:
        chunk.watch.record(i, t, "callback", latents, chunk.size)
    return latents, returned.get("prompt_embeds", embeds)

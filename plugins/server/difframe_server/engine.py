"""Runs one generation on the worker thread: loads the chosen model once (text-to-image and image-to-image share its
components), sets the sampler, reports progress per step and stops within one step when the job is interrupted."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from .catalog import ModelEntry
from .jobs import Job

log = logging.getLogger("difframe_server")
PIPELINES = {"img2img": "stable-diffusion-img2img", "inpaint": "stable-diffusion-inpaint"}
PREVIEW_INTERVAL = 1.0  # seconds between two previews: a VAE decode can cost as much as a denoising step


class ModelUnavailable(Exception):
    """The chosen model could not be loaded; the cause is logged, not sent to the client (it names server paths)."""

    def __init__(self, title: str, cause: Exception) -> None:
        super().__init__(
            f"model {title!r} could not be loaded ({type(cause).__name__}); the server log has the details"
        )


@dataclass(frozen=True)
class Generation:
    """The validated settings of one request, in difframe's terms."""

    model: ModelEntry
    prompt: str
    negative_prompt: str = ""
    networks: tuple[tuple[str, float], ...] = ()  # the prompts' <lora:NAME:WEIGHT> tags: one set per pipeline call
    scheduler: str = "dpmpp_2m"
    steps: int = 20
    guidance_scale: float = 7.0
    guidance_rescale: float = 0.0
    width: int | None = None
    height: int | None = None
    seed: int = 0
    count: int = 1
    clip_skip: int | None = None
    init_image: Any = None  # PIL image: image-to-image
    strength: float | None = None
    mask_image: Any = None  # PIL image ("L", white = repaint): inpainting of init_image

    @property
    def kind(self) -> str:
        if self.mask_image is not None:
            return "inpaint"
        return "img2img" if self.init_image is not None else "txt2img"

    @property
    def batch_key(self) -> tuple | None:
        """Generations with equal keys can run as one batch (they differ only in prompts, seeds and counts)."""
        if self.init_image is not None:
            return None
        return (
            self.model,
            self.networks,
            self.scheduler,
            self.steps,
            self.guidance_scale,
            self.guidance_rescale,
            self.width,
            self.height,
            self.clip_skip,
        )


class Engine:
    """Owns the loaded pipelines; used by the worker thread only."""

    def __init__(self, framework: Any, device: str | None = None, dtype: str | None = None) -> None:
        self.framework = framework
        self.device = device
        self.dtype = dtype
        self.loaded: ModelEntry | None = None
        self._pipes: dict[str, Any] = {}

    def load(self, entry: ModelEntry) -> Any:
        """The text-to-image pipeline of ``entry``, loading it (and dropping the previous model) if needed."""
        if self.loaded != entry:
            import torch

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = self.dtype or ("float32" if device == "cpu" else "float16")
            self._pipes = {}
            self.loaded = None
            log.info("loading model %s", entry.title)
            try:
                pipe = self.framework.build("stable-diffusion", model=entry.reference, device=device, dtype=dtype)
            except Exception as error:
                log.error("model %s could not be loaded: %s", entry.title, error)
                raise ModelUnavailable(entry.title, error) from error
            pipe.set_progress_bar_config(disable=True)
            self._pipes["txt2img"] = pipe
            self.loaded = entry
        return self._pipes["txt2img"]

    def pipeline(self, entry: ModelEntry, kind: str) -> Any:
        text_to_image = self.load(entry)
        if kind not in self._pipes:  # image-to-image, inpainting over the same components: one copy of the weights
            registration = self.framework.get("pipeline", PIPELINES[kind])
            pipe = self.framework.load_factory(registration)(**text_to_image.components)
            pipe.framework = self.framework
            pipe.model_name = text_to_image.model_name
            pipe.memory_budget = text_to_image.memory_budget
            pipe.set_progress_bar_config(disable=True)
            self._pipes[kind] = pipe
        return self._pipes[kind]

    def run(self, jobs: list[Job]) -> list[Any]:
        """Run the generations of ``jobs`` (one, or several with one batch key) as one call; one output per job."""
        generations: list[Generation] = [job.payload for job in jobs]
        first = generations[0]
        pipe = self.pipeline(first.model, first.kind)
        if pipe.scheduler_name != first.scheduler:
            pipe.set_scheduler(first.scheduler)
        steps = pipe.steps_to_run(first.steps, first.strength)
        leader = jobs[0]
        leader.progress.total = sum(g.count for g in generations)

        spans, begin = [], 0  # each job's images in the call
        for job, generation in zip(jobs, generations):
            spans.append((job, begin, begin + generation.count))
            begin += generation.count

        def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> None:
            progress = leader.progress
            progress.start, progress.stop = tensors.get("images", (0, progress.total))
            progress.step, progress.steps = step + 1, steps
            for job, first_image, end in spans:  # a step of a chunk counts for the jobs with images in it
                if first_image < progress.stop and progress.start < end:
                    job.steps_run += 1
            now = time.monotonic()
            if any(job.preview_wanted for job in jobs) and now - leader.preview_at >= PREVIEW_INTERVAL:
                for job in jobs:
                    job.preview_wanted = False
                leader.preview = pipeline.to_output(pipeline.decode_latents(tensors["latents"][:1]), "pil")[0]
                leader.preview_at = now
            if all(job.should_stop for job in jobs):  # a batch stops once none of its clients wants it
                pipeline.interrupt()

        call: dict[str, Any] = {}
        if first.init_image is not None:
            call["image"] = first.init_image
            call["strength"] = first.strength
        if first.mask_image is not None:
            call["mask_image"] = first.mask_image
        if len(generations) == 1:
            prompts: Any = first.prompt
            call.update(negative_prompt=first.negative_prompt or None, seed=first.seed)
            call["num_images_per_prompt"] = first.count
        else:
            prompts = [g.prompt for g in generations for _ in range(g.count)]
            call["negative_prompt"] = [g.negative_prompt for g in generations for _ in range(g.count)]
            call["seeds"] = [g.seed + i for g in generations for i in range(g.count)]
        output = pipe(
            prompts,
            height=first.height,
            width=first.width,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            guidance_rescale=first.guidance_rescale,
            clip_skip=first.clip_skip,
            callback_on_step_end=on_step,
            **call,
        )
        results, start = [], 0
        for generation in generations:
            stop = start + generation.count
            part = slice(start, stop)
            results.append(
                dataclasses.replace(
                    output, images=output.images[part], seeds=output.seeds[part], parameters=output.parameters[part]
                )
            )
            start = stop
        return results

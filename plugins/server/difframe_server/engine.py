"""Runs one generation on the worker thread: loads the chosen model once (text-to-image and image-to-image share its
components), sets the sampler, reports progress per step and stops within one step when the job is interrupted."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .catalog import ModelEntry
from .jobs import Job

log = logging.getLogger("difframe_server")


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

    @property
    def kind(self) -> str:
        return "img2img" if self.init_image is not None else "txt2img"


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
        if kind not in self._pipes:  # image-to-image over the same components: no second copy of the weights
            registration = self.framework.get("pipeline", "stable-diffusion-img2img")
            pipe = self.framework.load_factory(registration)(**text_to_image.components)
            pipe.framework = self.framework
            pipe.model_name = text_to_image.model_name
            pipe.memory_budget = text_to_image.memory_budget
            pipe.set_progress_bar_config(disable=True)
            self._pipes[kind] = pipe
        return self._pipes[kind]

    def run(self, generation: Generation, job: Job) -> Any:
        pipe = self.pipeline(generation.model, generation.kind)
        if pipe.scheduler_name != generation.scheduler:
            pipe.set_scheduler(generation.scheduler)
        steps = pipe.steps_to_run(generation.steps, generation.strength)
        job.progress.total = generation.count

        def on_step(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> None:
            start, stop = tensors["images"]
            progress = job.progress
            progress.start, progress.stop, progress.step, progress.steps = start, stop, step + 1, steps
            job.steps_run += 1
            if job.preview_wanted:
                job.preview_wanted = False
                job.preview = pipeline.to_output(pipeline.decode_latents(tensors["latents"][:1]), "pil")[0]
            if job.should_stop:
                pipeline.interrupt()

        call: dict[str, Any] = {}
        if generation.init_image is not None:
            call["image"] = generation.init_image
            call["strength"] = generation.strength
        return pipe(
            generation.prompt,
            negative_prompt=generation.negative_prompt or None,
            height=generation.height,
            width=generation.width,
            num_inference_steps=generation.steps,
            guidance_scale=generation.guidance_scale,
            guidance_rescale=generation.guidance_rescale,
            num_images_per_prompt=generation.count,
            seed=generation.seed,
            clip_skip=generation.clip_skip,
            callback_on_step_end=on_step,
            **call,
        )

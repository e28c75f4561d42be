"""A job worker: builds each pipeline it needs once and keeps it, runs batches of jobs with equal settings, and
returns each image as finished PNG bytes with its parameters embedded. The same class runs in this process (the
local engine) and as a Ray actor, so both engines make the same bytes."""

from __future__ import annotations

import io
import os
import socket
from dataclasses import dataclass
from typing import Any

from .spec import Job


@dataclass
class JobResult:
    key: str
    png: bytes | None = None
    error: str | None = None
    worker: str = ""
    threads: int = 0  # torch threads that made it: pixels can depend on it (docs/ray.md, "Identical results")


class ModelLoadFailed(RuntimeError):
    """A pipeline that does not build: every job that needs it fails with this one message."""

    def __init__(self, pipeline_key: tuple[Any, ...], message: str) -> None:
        self.pipeline_key = pipeline_key
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> Any:  # crosses process boundaries (Ray) intact
        return (type(self), (self.pipeline_key, self.message))


class JobWorker:
    """``threads``: torch threads of this process (None: leave torch's setting). ``device`` None: cuda when present.
    ``memory_budget``: bytes one chunk of a batch may use (the pipeline splits larger batches)."""

    def __init__(
        self, threads: int | None = None, device: str | None = None, memory_budget: int | str | None = None
    ) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.memory_budget = memory_budget
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._pipelines: dict[tuple[Any, ...], tuple[Any, Any]] = {}  # key -> (pipeline, its own sampler)

    def pid(self) -> int:
        return os.getpid()

    def load(self, pipeline_key: tuple[Any, ...]) -> None:
        """Build the pipeline for (model, dtype, attention) now, rather than with the first job that needs it."""
        self._pipeline(pipeline_key)

    def _pipeline(self, pipeline_key: tuple[Any, ...]) -> Any:
        if pipeline_key in self._pipelines:
            return self._pipelines[pipeline_key][0]
        import torch
        from difframe import Framework

        from ..cli import package_folder

        model, dtype, attention = pipeline_key
        dtype = dtype or ("float32" if self.device == "cpu" else "float16")
        options: dict[str, Any] = {"device": self.device, "dtype": getattr(torch, dtype), "attention": attention}
        if self.memory_budget is not None:
            options["memory_budget"] = self.memory_budget
        try:
            pipe = Framework().build("stable-diffusion", model=package_folder(model) if model else None, **options)
        except Exception as error:
            raise ModelLoadFailed(
                pipeline_key, f"model {model or '(built-in)'} did not load: {type(error).__name__}: {error}"
            ) from None
        pipe.set_progress_bar_config(disable=True)
        self._pipelines[pipeline_key] = (pipe, pipe.scheduler)
        return pipe

    def run(self, jobs: list[Job]) -> list[JobResult]:
        """One result per job. A batch that fails is retried job by job, so one bad job fails alone."""
        import torch

        threads = torch.get_num_threads()
        try:
            pngs = self._generate(jobs)
            return [JobResult(job.key, png, worker=self.name, threads=threads) for job, png in zip(jobs, pngs)]
        except ModelLoadFailed:
            raise
        except Exception as error:
            if len(jobs) > 1:
                return [result for job in jobs for result in self.run([job])]
            return [JobResult(jobs[0].key, error=f"{type(error).__name__}: {error}", worker=self.name)]

    def _generate(self, jobs: list[Job]) -> list[bytes]:
        from ..metadata import png_info

        first = jobs[0]
        pipe = self._pipeline(first.pipeline_key)
        pipe.scheduler = self._pipelines[first.pipeline_key][1]  # each batch starts from the model's own sampler
        pipe.set_scheduler(first.sampler)
        size = {"width": first.width, "height": first.height} if first.width and first.height else {}
        if bool(first.width) != bool(first.height):
            raise ValueError("give both width and height (or size), or neither")
        output = pipe(
            [job.prompt for job in jobs],
            negative_prompt=[job.negative_prompt for job in jobs],
            seeds=[job.seed for job in jobs],
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            guidance_rescale=first.guidance_rescale,
            clip_skip=first.clip_skip,
            **size,
        )
        if output.interrupted or len(output.images) != len(jobs):
            raise RuntimeError(f"the pipeline returned {len(output.images)} of {len(jobs)} images")
        pngs = []
        for image, parameters in zip(output.images, output.parameters):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", pnginfo=png_info(parameters))
            pngs.append(buffer.getvalue())
        return pngs

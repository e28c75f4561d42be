"""What one running server holds: its settings, the model catalog, the job queue, the engine, and the options a
client can set (the current model and clip skip), plus the sampler names it offers."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from .catalog import ModelCatalog, ModelEntry
from .engine import Engine, Generation
from .errors import FieldError
from .jobs import Job, JobQueue
from .settings import ServerSettings

MAX_SEED = 4294967294  # the web UI draws random seeds below this


@dataclass
class Options:
    model: ModelEntry
    clip_skip: int = 1  # the web UI's count: 1 = the last CLIP layer (no skip)


@dataclass
class ServerState:
    settings: ServerSettings
    framework: Any
    catalog: ModelCatalog
    queue: JobQueue
    engine: Engine
    options: Options

    @classmethod
    def create(cls, settings: ServerSettings, framework: Any = None, engine: Engine | None = None) -> ServerState:
        """``engine``: reuse one that already holds a loaded model (tests, benchmarks)."""
        from difframe import Framework
        from difframe.errors import DifframeError
        from difframe.framework import packaged_folder

        framework = framework or Framework()
        default = framework.get("pipeline", "stable-diffusion").spec.default_model
        try:
            builtin_title = Path(packaged_folder(default)).name if default else "built-in"
        except DifframeError:  # not installed: loading it at start-up says so
            builtin_title = "built-in"
        catalog = ModelCatalog(settings.model, settings.models_dir, builtin_title)
        return cls(
            settings=settings,
            framework=framework,
            catalog=catalog,
            queue=JobQueue(settings.limits.max_queue, max_batch_images=settings.limits.max_batch),
            engine=engine or Engine(framework, device=settings.device, dtype=settings.dtype),
            options=Options(model=catalog.default),
        )

    # --- samplers ---------------------------------------------------------------------------------------------
    def sampler_names(self) -> list[str]:
        """Registered samplers that can run here."""
        return sorted(r.name for r in self.framework.registry.all("scheduler") if r.unavailable_reason is None)

    def check_sampler(self, name: str, field_name: str) -> str:
        """The registered name ``name`` resolves to (an alias too), or a 422 naming the field."""
        from difframe.errors import DifframeError

        try:
            registration = self.framework.get("scheduler", name)
        except (DifframeError, KeyError, LookupError):
            raise FieldError(
                field_name,
                f"unknown sampler {name!r}; use a label from /sdapi/v1/samplers or one of difframe's names: "
                f"{', '.join(self.sampler_names())}",
            ) from None
        if registration.unavailable_reason is not None:
            raise FieldError(field_name, f"sampler {name!r} cannot run here: {registration.unavailable_reason}")
        return registration.name

    # --- limits -----------------------------------------------------------------------------------------------
    def check_generation(self, generation: Generation, names: dict[str, str]) -> None:
        """Request limits, each error naming the request's own field (``names`` maps ours to the request's)."""
        limits = self.settings.limits
        if generation.steps > limits.max_steps:
            raise FieldError(names["steps"], f"at most {limits.max_steps} steps are allowed, got {generation.steps}")
        for side in ("width", "height"):
            value = getattr(generation, side)
            if value is not None and value > limits.max_side:
                raise FieldError(names[side], f"at most {limits.max_side} pixels are allowed, got {value}")
            if value is not None and value % 8:
                raise FieldError(names[side], f"must be a multiple of 8, got {value}")
        if generation.count > limits.max_images:
            raise FieldError(
                names["count"], f"at most {limits.max_images} images per request are allowed, got {generation.count}"
            )

    @staticmethod
    def resolve_seed(seed: int | None) -> int:
        return random.randrange(MAX_SEED) if seed is None or seed < 0 else seed

    def submit(self, generation: Generation) -> Job:
        """Queue a generation; it may run batched with waiting ones that share its settings."""
        return self.queue.submit(
            generation.kind,
            self.engine.run,
            batch_key=generation.batch_key,
            images=generation.count,
            payload=generation,
        )


def current_state(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(current_state)]  # the running server's state, as a route parameter

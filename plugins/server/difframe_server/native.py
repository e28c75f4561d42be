"""difframe's own JSON API (/api/v1, documented at /docs): generation in difframe's terms, and what is installed,
as `difframe plugins --json` lists it (the same report function)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from .catalog import UnknownModel
from .engine import Generation
from .errors import FieldError
from .images import decode_image, encode_png
from .state import State
from .waiting import wait_for

router = APIRouter(prefix="/api/v1", tags=["native API"])

# route name -> the registration kinds it lists (the first that this difframe has)
KIND_ROUTES = {
    "samplers": ("scheduler",),
    "conditioners": ("conditioner",),
    "guiders": ("guider",),
    "hooks": ("hook", "inference_hook"),
}


class GenerateRequest(BaseModel):
    """One generation. Unknown fields are refused (this API has no legacy clients to stay lenient for)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="what to draw")
    negative_prompt: str = ""
    sampler: str = Field("dpmpp_2m", description="a registered sampler name or alias (GET /api/v1/samplers)")
    steps: int = Field(20, ge=1)
    guidance_scale: float = Field(7.5, ge=0, allow_inf_nan=False)
    guidance_rescale: float = Field(0.0, ge=0, le=1)
    width: int | None = Field(None, ge=8, description="default: the model's size")
    height: int | None = Field(None, ge=8, description="default: the model's size")
    seed: int | None = Field(None, ge=0, description="image i gets seed + i; default random")
    batch: int = Field(1, ge=1, description="how many images")
    clip_skip: int | None = Field(None, ge=0, le=11, description="CLIP layers to skip (0: none)")
    model: str | None = Field(None, description="a title from GET /api/v1/models; default the current model")
    init_image: str | None = Field(None, description="base64 image: image-to-image")
    strength: float = Field(0.75, ge=0, le=1, description="image-to-image: how much of the schedule runs")


class OptionsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    clip_skip: int | None = Field(None, ge=0, le=11)


def _registrations(kinds: tuple[str, ...], framework: Any) -> list[dict[str, Any]]:
    from difframe.cli import KINDS, plugins_report

    kind = next((k for k in kinds if k in KINDS), None)
    if kind is None:
        raise FieldError("kind", f"this difframe has no {kinds[0]!r} plugins kind; kinds: {', '.join(KINDS)}", 404)
    return [
        {**registration, "plugin": plugin["name"]}
        for plugin in plugins_report(framework, kind=kind)
        for registration in plugin["registrations"]
    ]


@router.get("/plugins")
def plugins(
    state: State,
    kind: Annotated[str | None, Query(description="only registrations of this kind")] = None,
    hook: Annotated[str | None, Query(description="only plugins implementing this hook")] = None,
) -> list[dict[str, Any]]:
    """Installed plugins exactly as `difframe plugins --json` prints them."""
    from difframe.cli import KINDS, plugins_report

    if kind is not None and kind not in KINDS:
        raise FieldError("kind", f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    return plugins_report(state.framework, kind=kind, hook=hook)


def _kind_route(route: str, kinds: tuple[str, ...]) -> None:
    def listing(state: State) -> list[dict[str, Any]]:
        return _registrations(kinds, state.framework)

    listing.__doc__ = f"Registered {route}, each with its plugin (as in `difframe plugins --json`)."
    router.add_api_route(f"/{route}", listing, methods=["GET"], name=route)


for _route, _kinds in KIND_ROUTES.items():
    _kind_route(_route, _kinds)


@router.get("/models")
def models(state: State) -> dict[str, Any]:
    return {
        "current": state.options.model.title,
        "models": [{"title": e.title, "source": e.filename} for e in state.catalog.entries()],
    }


@router.get("/options")
def get_options(state: State) -> dict[str, Any]:
    return {"model": state.options.model.title, "clip_skip": state.options.clip_skip - 1}


@router.post("/options")
def set_options(req: OptionsRequest, state: State) -> dict[str, Any]:
    if req.model is not None:
        try:
            state.options.model = state.catalog.resolve(req.model)
        except UnknownModel as error:
            raise FieldError("model", str(error), 404) from None
    if req.clip_skip is not None:
        state.options.clip_skip = req.clip_skip + 1
    return get_options(state)


@router.post("/generate")
async def generate(req: GenerateRequest, request: Request, state: State) -> dict[str, Any]:
    """Generate images; each comes back as base64 PNG with its seed and its PNG 'parameters' text."""
    model = state.options.model
    if req.model is not None:
        try:
            model = state.catalog.resolve(req.model)
        except UnknownModel as error:
            raise FieldError("model", str(error), 404) from None
    init_image = None
    if req.init_image is not None:
        init_image = decode_image(req.init_image, "init_image", state.settings.limits.max_upload_pixels)
    clip_skip = req.clip_skip if req.clip_skip is not None else state.options.clip_skip - 1
    generation = Generation(
        model=model,
        prompt=req.prompt,
        negative_prompt=req.negative_prompt,
        scheduler=state.check_sampler(req.sampler, "sampler"),
        steps=req.steps,
        guidance_scale=req.guidance_scale,
        guidance_rescale=req.guidance_rescale,
        width=req.width,
        height=req.height,
        seed=state.resolve_seed(req.seed),
        count=req.batch,
        clip_skip=clip_skip or None,
        init_image=init_image,
        strength=req.strength if init_image is not None else None,
    )
    state.check_generation(generation, {"steps": "steps", "width": "width", "height": "height", "count": "batch"})
    output = await wait_for(request, state.submit(generation))
    return {
        "images": [
            {
                "image": encode_png(image, params.to_text()),
                "seed": params.seed,
                "parameters": params.to_text(),
                "settings": {
                    "prompt": params.prompt,
                    "negative_prompt": params.negative_prompt,
                    "sampler": params.scheduler,
                    "steps": params.steps,
                    "guidance_scale": params.guidance_scale,
                    "guidance_rescale": params.guidance_rescale,
                    "width": params.width,
                    "height": params.height,
                    "seed": params.seed,
                    "clip_skip": params.clip_skip,
                    "model": model.title,
                    "strength": params.strength,
                },
            }
            for image, params in zip(output.images, output.parameters)
        ],
        "interrupted": bool(output.interrupted),
    }


@router.get("/progress")
def progress(state: State, preview: bool = True) -> dict[str, Any]:
    """The running job's progress (0-1), step, and a preview of its first image (made at its next step)."""
    job = state.queue.current
    waiting = state.queue.waiting
    if job is None or job.started is None:
        return {"running": False, "waiting": waiting, "fraction": 0.0, "step": 0, "steps": 0, "preview": None}
    if preview:
        job.preview_wanted = True
    fraction = job.progress.fraction
    elapsed = time.monotonic() - job.started
    return {
        "running": True,
        "job": job.id,
        "waiting": waiting,
        "fraction": fraction,
        "step": job.progress.step,
        "steps": job.progress.steps,
        "images": [job.progress.start, job.progress.stop, job.progress.total],
        "eta_seconds": elapsed / fraction - elapsed if fraction > 0 else None,
        "preview": encode_png(job.preview) if preview and job.preview is not None else None,
    }


@router.post("/interrupt")
def interrupt(state: State) -> dict[str, Any]:
    """Stop the running job after its current step; its client gets the images as they are."""
    job = state.queue.current
    state.queue.interrupt_current()
    return {"interrupted": job.id if job is not None else None}


@router.get("/status")
def status(state: State) -> dict[str, Any]:
    """The queue, job counts, the last jobs and the limits requests are held to."""
    queue = state.queue
    current = queue.current
    return {
        "model": state.options.model.title,
        "loaded": state.engine.loaded.title if state.engine.loaded else None,
        "running": current.summary() if current is not None else None,
        "waiting": queue.waiting,
        "counts": dict(queue.counts),
        "recent": [job.summary() for job in list(queue.history)[-20:]],
        "limits": state.settings.limits.model_dump(),
    }

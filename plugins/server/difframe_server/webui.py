"""The web UI's HTTP API (/sdapi/v1), at its paths and with its JSON shapes, over difframe's pipelines.

Request fields follow the web UI's processing classes (same names and defaults). Fields this server does not use
are ignored when the web UI would not change the image for them either (send_images, save_images, subseed with no
variation strength, ...); a value that would change the image in the web UI but cannot be honoured here (high-res
fix, variation seeds, face restoration, scripts, inpainting masks, ...) is refused with a 422 naming the field.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .catalog import ModelEntry, UnknownModel
from .engine import Generation
from .errors import FieldError
from .images import decode_image, encode_png, fit_image, open_image
from .inpainting import InpaintPlan
from .inpainting import plan as plan_inpainting
from .state import ServerState, State
from .waiting import wait_for

router = APIRouter(prefix="/sdapi/v1", tags=["web UI API"])

# override_settings / options keys this server understands
MODEL_KEY, CLIP_SKIP_KEY = "sd_model_checkpoint", "CLIP_stop_at_last_layers"
SCHEDULE_TYPES = {"automatic": None, "karras": "Karras"}


class Txt2ImgRequest(BaseModel):
    """The web UI's txt2img request (StableDiffusionProcessingTxt2Img's fields, same defaults)."""

    model_config = ConfigDict(extra="ignore")  # as the web UI: unknown fields are dropped

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int = Field(50, ge=1)
    cfg_scale: float = Field(7.0, allow_inf_nan=False)
    width: int = Field(512, ge=8)
    height: int = Field(512, ge=8)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    enable_hr: bool = False
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    force_task_id: str | None = None
    infotext: str | None = None


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] | None = None
    resize_mode: int = 0
    denoising_strength: float | None = 0.75
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    mask_round: bool = True
    initial_noise_multiplier: float | None = None
    include_init_images: bool = False


class ImagesResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="the generated images, base64 PNG")
    parameters: dict[str, Any]
    info: str = Field(description="JSON text: the generation's settings, with the PNG 'parameters' text per image")


def _eta_of(scheduler: str) -> float | None:
    """The eta a sampler runs with here (None: the sampler has no eta, so the web UI ignores it as well)."""
    if scheduler == "ddim":
        return 0.0
    if "_a" in scheduler or "sde" in scheduler:
        return 1.0
    return None


def _refuse_unsupported(req: Txt2ImgRequest, scheduler: str) -> None:
    """Values that change the image in the web UI but that this server cannot honour."""
    checks: list[tuple[str, bool, str]] = [
        ("enable_hr", req.enable_hr, "the high-resolution fix is not available; generate at the final size"),
        ("styles", bool(req.styles), "saved prompt styles are not available; put the text in the prompt"),
        ("subseed_strength", req.subseed_strength != 0, "variation seeds are not available; use 0"),
        (
            "seed_resize_from_w",
            req.seed_resize_from_w > 0 or req.seed_resize_from_h > 0,
            "seed resizing is not available; use -1",
        ),
        ("restore_faces", bool(req.restore_faces), "face restoration is not available"),
        ("tiling", bool(req.tiling), "tiling is not available"),
        ("s_churn", bool(req.s_churn), "churn (s_churn) is not available; use 0"),
        ("s_noise", req.s_noise not in (None, 1.0), "a noise multiplier (s_noise) other than 1 is not available"),
        ("s_min_uncond", bool(req.s_min_uncond), "negative guidance minimum sigma is not available; use 0"),
        ("refiner_checkpoint", bool(req.refiner_checkpoint), "refiner models are not available"),
        ("script_name", bool(req.script_name), "scripts are not available"),
        (
            "infotext",
            bool(req.infotext),
            "applying an infotext to the request is not available; send its values as fields "
            "(POST /sdapi/v1/png-info reads them)",
        ),
        (
            "alwayson_scripts",
            bool(req.alwayson_scripts),
            f"extensions are not available (got {', '.join(map(str, req.alwayson_scripts))})",
        ),
    ]
    eta = _eta_of(scheduler)
    if req.eta is not None and eta is not None and not math.isclose(req.eta, eta):
        checks.append(("eta", True, f"sampler {scheduler!r} runs with eta {eta:g} here; send {eta:g} or leave it out"))
    for field, refused, why in checks:
        if refused:
            raise FieldError(field, why)


def _scheduler(state: ServerState, req: Txt2ImgRequest) -> str:
    from difframe_stable_diffusion.metadata import scheduler_from_label

    label = req.sampler_name or req.sampler_index or "Euler"
    field = "sampler_name" if req.sampler_name else "sampler_index"
    schedule = (req.scheduler or "automatic").strip().lower()
    if schedule not in SCHEDULE_TYPES:
        raise FieldError("scheduler", f"schedule type {req.scheduler!r} is not available; use one of Automatic, Karras")
    return state.check_sampler(scheduler_from_label(label, SCHEDULE_TYPES[schedule]), field)


def _settings(state: ServerState, overrides: dict[str, Any] | None) -> tuple[Any, int]:
    """The model entry and web-UI clip skip for a request: the server's options, with override_settings applied."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - {MODEL_KEY, CLIP_SKIP_KEY})
    if unknown:
        raise FieldError(
            f"override_settings.{unknown[0]}",
            f"this option is not available; supported: {MODEL_KEY}, {CLIP_SKIP_KEY}",
        )
    model = state.options.model
    if overrides.get(MODEL_KEY):
        model = _model(state, overrides[MODEL_KEY], f"override_settings.{MODEL_KEY}")
    clip_skip = state.options.clip_skip
    if CLIP_SKIP_KEY in overrides:
        clip_skip = _clip_skip(overrides[CLIP_SKIP_KEY], f"override_settings.{CLIP_SKIP_KEY}")
    return model, clip_skip


def _model(state: ServerState, title: Any, field: str) -> ModelEntry:
    """A model by its /sd-models title; never a path."""
    if not isinstance(title, str):
        raise FieldError(field, f"must be a model title from /sdapi/v1/sd-models, got {title!r}")
    try:
        return state.catalog.resolve(title)
    except UnknownModel as error:
        raise FieldError(field, str(error), status=404) from None


def _clip_skip(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
        raise FieldError(field, f"must be an integer from 1 (no skip) to 12, got {value!r}")
    return value


def _networks(req: Txt2ImgRequest) -> tuple[str, str, tuple[tuple[str, float], ...]]:
    """The prompts and the ``<lora:NAME:WEIGHT>`` tags they hold. With ``disable_extra_networks`` the tags are taken
    out of the prompts and not applied, as the web UI does; otherwise the pipeline applies them."""
    from difframe_stable_diffusion.prompt_networks import parse_lora_tags

    found: dict[str, float] = {}
    texts = []
    for field, text in (("prompt", req.prompt), ("negative_prompt", req.negative_prompt)):
        try:
            stripped, tags = parse_lora_tags(text)
        except ValueError as error:
            raise FieldError(field, str(error)) from None
        found.update(tags)
        texts.append(stripped if req.disable_extra_networks else text)
    networks = () if req.disable_extra_networks else tuple(sorted(found.items()))
    if networks:  # checked here, and answered without the server's paths
        from difframe_stable_diffusion.prompt_networks import LORA_DIR_ENV, available_loras, lora_folder

        try:
            folder = lora_folder(None)
        except ValueError:
            folder = None
        names = set(available_loras(folder)) if folder is not None else set()
        for name, _ in networks:
            if name not in names:
                where = "this server has no LoRA folder" if folder is None else "this server has no LoRA of that name"
                raise FieldError(
                    "prompt",
                    f"<lora:{name}:...>: {where} (${LORA_DIR_ENV} on the server); remove the tag, or send "
                    "disable_extra_networks: true to ignore tags",
                )
    return texts[0], texts[1], networks


def _generation(
    state: ServerState, req: Txt2ImgRequest, init_image: Any = None, mask_image: Any = None
) -> tuple[Generation, int]:
    """The request in difframe's terms, and the web-UI clip skip it runs with."""
    scheduler = _scheduler(state, req)
    _refuse_unsupported(req, scheduler)
    model, clip_skip = _settings(state, req.override_settings)
    prompt, negative_prompt, networks = _networks(req)
    strength = None
    if init_image is not None:
        strength = req.denoising_strength
        if strength is None or not 0.0 <= strength <= 1.0:
            raise FieldError("denoising_strength", f"must be between 0 and 1, got {strength!r}")
    generation = Generation(
        model=model,
        prompt=prompt,
        negative_prompt=negative_prompt,
        networks=networks,
        scheduler=scheduler,
        steps=req.steps,
        guidance_scale=req.cfg_scale,
        width=req.width,
        height=req.height,
        seed=state.resolve_seed(req.seed),
        count=req.batch_size * req.n_iter,
        clip_skip=clip_skip - 1 if clip_skip > 1 else None,
        init_image=init_image,
        strength=strength,
        mask_image=mask_image,
    )
    names = {"steps": "steps", "width": "width", "height": "height", "count": "batch_size"}
    state.check_generation(generation, names)
    return generation, clip_skip


def _info(generation: Generation, output: Any, req: Txt2ImgRequest, clip_skip: int) -> str:
    """The web UI's Processed.js(): settings of the whole request plus each image's "parameters" text."""
    from difframe_stable_diffusion.metadata import sampler_label

    seeds = [p.seed for p in output.parameters] or [generation.seed]
    first = output.parameters[0] if output.parameters else None
    info = {
        "prompt": generation.prompt,
        "all_prompts": [p.prompt for p in output.parameters],
        "negative_prompt": generation.negative_prompt,
        "all_negative_prompts": [p.negative_prompt for p in output.parameters],
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": seeds[0],
        "all_subseeds": seeds,
        "subseed_strength": 0,
        "width": first.width if first else generation.width,
        "height": first.height if first else generation.height,
        "sampler_name": sampler_label(generation.scheduler),
        "cfg_scale": generation.guidance_scale,
        "steps": generation.steps,
        "batch_size": req.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": generation.model.title,
        "sd_model_hash": None,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": generation.strength,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [p.to_text() for p in output.parameters],
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": clip_skip,
        "is_using_inpainting_conditioning": False,
        "interrupted": bool(output.interrupted),
    }
    return json.dumps(info)


async def _generate(
    request: Request,
    state: ServerState,
    req: Txt2ImgRequest,
    init_image: Any = None,
    inpaint: InpaintPlan | None = None,
) -> dict:
    if inpaint is not None:
        init_image = inpaint.image
    generation, clip_skip = _generation(state, req, init_image, inpaint.mask if inpaint else None)
    output = await wait_for(request, state.submit(generation))
    finished = [inpaint.finish(image) for image in output.images] if inpaint else output.images
    images = [encode_png(image, p.to_text()) for image, p in zip(finished, output.parameters)]
    parameters = req.model_dump()
    if isinstance(req, Img2ImgRequest) and not req.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    return {
        "images": images if req.send_images else [],
        "parameters": parameters,
        "info": _info(generation, output, req, clip_skip),
    }


@router.post("/txt2img", response_model=ImagesResponse)
async def txt2img(req: Txt2ImgRequest, request: Request, state: State) -> dict:
    return await _generate(request, state, req)


@router.post("/img2img", response_model=ImagesResponse)
async def img2img(req: Img2ImgRequest, request: Request, state: State) -> dict:
    if not req.init_images:
        raise FieldError("init_images", "image-to-image needs one init image (base64)")
    if len(req.init_images) > 1:
        raise FieldError("init_images", f"one init image per request is supported, got {len(req.init_images)}")
    if req.resize_mode not in (0, 1, 2):
        raise FieldError(
            "resize_mode",
            f"resize mode {req.resize_mode!r} is not available; use 0 (just resize), 1 (crop and resize) or 2 "
            "(resize and fill)" + (" (3, latent upscale, resizes in latent space)" if req.resize_mode == 3 else ""),
        )
    if req.initial_noise_multiplier not in (None, 1.0):
        raise FieldError("initial_noise_multiplier", "only 1 is available")
    if req.mask_round is False:
        raise FieldError("mask_round", "only a rounded (binary) mask is available; send true or leave it out")
    limit = state.settings.limits.max_upload_pixels
    image = decode_image(req.init_images[0], "init_images[0]", limit)
    if req.mask:
        blur = (req.mask_blur, req.mask_blur) if req.mask_blur is not None else (req.mask_blur_x, req.mask_blur_y)
        inpaint = plan_inpainting(
            image,
            open_image(req.mask, "mask", limit),
            width=req.width,
            height=req.height,
            resize_mode=req.resize_mode,
            blur=blur,
            fill=req.inpainting_fill,
            full_res=req.inpaint_full_res,
            padding=req.inpaint_full_res_padding,
            invert=bool(req.inpainting_mask_invert),
        )
        return await _generate(request, state, req, inpaint=inpaint)
    image = fit_image(image, req.width, req.height, req.resize_mode)
    return await _generate(request, state, req, image)


class PngInfoRequest(BaseModel):
    image: str = Field(description="a PNG, base64-encoded (or a data:image/png;base64, URL)")


@router.post("/png-info")
def png_info(req: PngInfoRequest, state: State) -> dict[str, Any]:
    """The generation parameters stored in an image, as the web UI reads them: ``info`` is the "parameters" text,
    ``parameters`` its fields (Prompt, Negative prompt, Steps, Sampler, Size-1, Size-2, ...), ``items`` the
    image's other text chunks. An image without parameters answers empty values, as the web UI does."""
    from difframe_stable_diffusion.metadata import PNG_KEY, split_parameters

    image = open_image(req.image, "image", state.settings.limits.max_upload_pixels)
    text = image.info.get(PNG_KEY)
    items = {k: v for k, v in image.info.items() if k != PNG_KEY and isinstance(v, str)}
    if not isinstance(text, str) or not text.strip():
        return {"info": "", "items": items, "parameters": {}}
    prompt, negative, settings = split_parameters(text)
    parameters: dict[str, Any] = {"Prompt": prompt, "Negative prompt": negative, **settings}
    size = settings.get("Size", "")
    if "x" in size:
        parameters["Size-1"], _, parameters["Size-2"] = (part.strip() for part in size.partition("x"))
    return {"info": text, "items": items, "parameters": parameters}


@router.get("/samplers")
def samplers(state: State) -> list[dict[str, Any]]:
    """The samplers that can run here, by their web-UI label, with difframe's names as aliases."""
    from difframe_stable_diffusion.metadata import sampler_label

    by_label: dict[str, list[str]] = {}
    for name in state.sampler_names():
        by_label.setdefault(sampler_label(name), []).append(name)
    return [{"name": label, "aliases": names, "options": {}} for label, names in sorted(by_label.items())]


@router.get("/schedulers")
def schedulers() -> list[dict[str, Any]]:
    return [
        {"name": name, "label": name.capitalize(), "aliases": None, "default_rho": None, "need_inner_model": False}
        for name in SCHEDULE_TYPES
    ]


@router.get("/sd-models")
def sd_models(state: State) -> list[dict[str, Any]]:
    return [
        {
            "title": e.title,
            "model_name": e.title,
            "hash": None,
            "sha256": None,
            "filename": e.filename,
            "config": None,
        }
        for e in state.catalog.entries()
    ]


@router.get("/options")
def get_options(state: State) -> dict[str, Any]:
    return {
        MODEL_KEY: state.options.model.title,
        CLIP_SKIP_KEY: state.options.clip_skip,
        "sd_checkpoint_hash": None,
        "samples_format": "png",
    }


@router.post("/options")
def set_options(req: dict[str, Any], state: State) -> None:
    """Sets the model (a title from /sd-models) and clip skip for the requests that follow. The model loads on
    the next generation, in the queue, so a running job keeps its model."""
    unknown = sorted(set(req) - {MODEL_KEY, CLIP_SKIP_KEY, "samples_format"})
    if unknown:
        raise FieldError(unknown[0], f"this option is not available; supported: {MODEL_KEY}, {CLIP_SKIP_KEY}")
    if req.get("samples_format", "png") != "png":
        raise FieldError("samples_format", "images are sent as PNG only")
    model = _model(state, req[MODEL_KEY], MODEL_KEY) if MODEL_KEY in req else state.options.model
    clip_skip = _clip_skip(req[CLIP_SKIP_KEY], CLIP_SKIP_KEY) if CLIP_SKIP_KEY in req else state.options.clip_skip
    state.options.model, state.options.clip_skip = model, clip_skip
    return None


@router.get("/progress")
def progress(state: State, skip_current_image: bool = False) -> dict[str, Any]:
    job = state.queue.current
    waiting = state.queue.waiting
    idle_state = {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": "",
        "job_count": waiting,
        "job_timestamp": "0",
        "job_no": 0,
        "sampling_step": 0,
        "sampling_steps": 0,
    }
    if job is None or job.started is None:
        return {"progress": 0, "eta_relative": 0, "state": idle_state, "current_image": None, "textinfo": None}
    fraction = max(job.progress.fraction, 0.01)
    elapsed = time.monotonic() - job.started
    current_image = None
    if not skip_current_image:
        job.preview_wanted = True  # made on the worker at the next step; this answer has the previous one
        if job.preview is not None:
            current_image = encode_png(job.preview)
    return {
        "progress": min(fraction, 1.0),
        "eta_relative": max(elapsed / fraction - elapsed, 0.0),
        "state": {
            **idle_state,
            "interrupted": job.should_stop,
            "job": f"{job.kind} {job.id}",
            "job_count": waiting + 1,
            "sampling_step": job.progress.step,
            "sampling_steps": job.progress.steps,
        },
        "current_image": current_image,
        "textinfo": None,
    }


@router.post("/interrupt")
def interrupt(state: State) -> dict:
    """Stops the running job after its current step (it answers with what it has); waiting jobs still run."""
    state.queue.interrupt_current()
    return {}


@router.post("/skip")
def skip(state: State) -> dict:
    state.queue.interrupt_current()
    return {}


@router.get("/scripts")
def scripts() -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}


@router.get("/cmd-flags")
def cmd_flags(state: State) -> dict[str, Any]:
    settings = state.settings
    return {"api": True, "listen": settings.host != "127.0.0.1", "port": settings.port, "nowebui": False}

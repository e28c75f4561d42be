"""`difframe generate`: text-to-image (and image-to-image / inpainting) from the command line, and reproducing an
image from the parameters embedded in its PNG. Importing this module does not import torch."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difframe.library_progress import quiet_library_progress

INTERRUPTED_KEY = "Interrupted"  # as common.INTERRUPTED_KEY; common imports torch, this module must not

DTYPES = ("float32", "float16", "bfloat16", "auto")


def parse_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '768x512' -> width 768, height 512 (the web UIs' WxH)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like 512 or 768x512 (width x height), got {text!r}")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return width, height


def add_generate_command(cli: Any) -> None:
    parser = cli.add_parser(
        "generate",
        help="generate images with a Stable Diffusion pipeline",
        description="Generate images; each PNG carries its parameters (the web UIs' 'parameters' text chunk). "
        "`--from-png image.png` makes that image again.",
    )
    parser.add_argument(
        "prompt", nargs="*", help="the prompt; several make -b images each, in one run (omit with --from-png)"
    )
    parser.add_argument(
        "-m",
        "--model",
        help="model folder, hub id, single-file checkpoint (.safetensors), or PACKAGE:FOLDER inside an installed "
        "package (difframe_shapes_model:difframe-shapes) (default with --from-png: the PNG's Model)",
    )
    parser.add_argument(
        "--model-config",
        help="a single-file --model's architecture, where its keys cannot tell (SD 2.x epsilon or v): a family "
        "(sd1, sd1-inpainting, sd2-base, sd2-v, sd2-inpainting) or a model folder of the same architecture",
    )
    parser.add_argument(
        "--allow-pickle", action="store_true", help="allow a .ckpt (pickle) --model, read by torch's safe loader"
    )
    parser.add_argument("-n", "--negative", "--negative-prompt", dest="negative", help="negative prompt")
    parser.add_argument("-s", "--scheduler", "--sampler", dest="scheduler", help="sampler name (default dpmpp)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 25)")
    parser.add_argument("-g", "--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--guidance-rescale", type=float, help="guidance rescale in [0, 1] (default 0)")
    parser.add_argument(
        "--seed", type=int, help="seed of the first image, 0 to 4294967295; image i gets seed+i (default or -1: random)"
    )
    parser.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT or one number (default: the model's)")
    parser.add_argument("-b", "--batch", type=int, default=1, help="how many images (default 1)")
    parser.add_argument("--clip-skip", type=int, help="skip the last N CLIP layers")
    parser.add_argument("--image", help="init image: image-to-image (or inpainting with --mask)")
    parser.add_argument("--mask", help="inpainting mask (white = repaint)")
    parser.add_argument("--strength", type=float, help="image-to-image / inpainting strength in [0, 1]")
    parser.add_argument(
        "--ip-adapter", action="append", help="IP-Adapter file (.safetensors; its image encoder in image_encoder/ "
        "beside it); repeat for several adapters (docs/ip-adapter.md)"
    )  # fmt: skip
    parser.add_argument(
        "--ip-image", action="append", help="image prompt: one per --ip-adapter (with one adapter, several allowed)"
    )
    parser.add_argument("--ip-scale", type=float, help="IP-Adapter scale (default 1.0): 0 ignores the image prompt")
    parser.add_argument("-o", "--out", default="outputs", help="output folder (default ./outputs)")
    parser.add_argument("--from-png", dest="from_png", help="reproduce the image whose parameters this PNG holds")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help="weights dtype (default float32 on CPU, float16 on GPU; auto: bfloat16 on CPUs with it)",
    )
    parser.add_argument(
        "--backend", help="where the models run: eager (default), openvino, torch-compile, cuda-kernels"
    )
    parser.add_argument(
        "--backend-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the backend, repeatable (e.g. precision=bf16 for openvino); see docs/backends.md",
    )
    parser.add_argument(
        "--attention",
        help="attention backend: auto (default: the best here), sdpa, sliced, reference or a plugin's (with "
        "--from-png: the PNG's Attention); see docs/attention.md",
    )
    parser.add_argument(
        "--attention-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the attention backend, repeatable (e.g. slice_size=max for sliced; values read as JSON "
        "where they are JSON); not written to the PNG: backend options change memory and speed",
    )
    parser.add_argument(
        "--attention-addon",
        action="append",
        default=[],
        metavar="'NAME [{JSON options}]'",
        help="a registered attention add-on, with its options as a JSON object (e.g. 'my-addon {\"factor\": 0.5}'), "
        "repeatable; recorded in the PNG and used again by --from-png (docs/attention.md)",
    )
    parser.add_argument(
        "--guider",
        metavar="'NAME [{JSON options}]'",
        help="how a step combines its guidance batch: cfg (default), apg, cfg-zero-star, pag or a plugin's, with its "
        "options as a JSON object (e.g. 'apg {\"eta\": 0.0}', 'cfg {\"stop\": 0.5}'); recorded in the PNG (with "
        "--from-png: the PNG's Guider)",
    )
    parser.add_argument(
        "--hook",
        action="append",
        default=[],
        metavar="'NAME [{JSON options}]'",
        help="an inference hook (e.g. 'deepcache {\"interval\": 3}', tome), repeatable, run in the order given; "
        "recorded in the PNG (with --from-png: the PNG's Hooks; --hook none: no hooks)",
    )
    parser.add_argument(
        "--reproducible",
        action=argparse.BooleanOptionalAction,
        help="--no-reproducible: the images of a batch share each model call (faster; each differs from the image "
        "made alone by a few 1e-6). Default --reproducible: image i is bit-identical alone or in any batch",
    )
    parser.add_argument(
        "--conditioner", help="text conditioner: a registered conditioner's name (default clip-text); see docs/hooks.md"
    )
    parser.add_argument(
        "--no-prompt-weighting",
        action="store_true",
        help="read (word:1.3), [word] and BREAK as plain text instead of web-UI prompt weighting (recorded in the PNG)",
    )
    parser.add_argument(
        "--lora-dir",
        help="folder of the LoRA files that <lora:NAME:WEIGHT> in a prompt names (default $DIFFRAME_LORA_DIR)",
    )
    parser.add_argument(
        "--embedding",
        action="append",
        default=[],
        metavar="[TOKEN=]FILE",
        help="a textual-inversion embedding, used in prompts as TOKEN (default: the file's name); repeatable",
    )
    parser.add_argument("--memory-budget", help="bytes one chunk of the batch may use, e.g. 6GB (default auto)")
    parser.add_argument("--cpu-offload", action="store_true", help="keep models in RAM, each on the GPU as it runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    from .jobs.command import add_job_options

    add_job_options(parser)
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    if args.prompts:  # a job file, on the local engine or Ray
        from .jobs.command import run_job_file

        with quiet_library_progress(args.no_progress):
            return run_job_file(args)
    import warnings

    from difframe.errors import DifframeError

    shown: set[str] = set()

    def show(message: Any, category: Any, *rest: Any, **options: Any) -> None:  # one line, once, no source line
        if str(message) not in shown:
            shown.add(str(message))
            print(f"warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            return _run(args)
    except (ValueError, TypeError, OSError, DifframeError) as error:  # bad input: a message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: images not listed above were not saved", file=sys.stderr)
        return 130


@dataclass
class Request:
    """A `difframe generate` run, checked whole before any weight is read."""

    pipeline: str
    params: Any
    call: dict[str, Any]
    build: dict[str, Any]
    out: Path
    prompts: list[str]  # params.prompt, or every prompt of `difframe generate "a" "b"`


def _run(args: argparse.Namespace) -> int:
    request = validate(args)
    if request is None:
        return 2
    return _generate(args, request)


def validate(args: argparse.Namespace) -> Request | None:
    """Every check that needs no weights: the numbers, the names, the files, the model's configs, the memory one
    image needs and the output folder. Returns None after printing why when the run cannot go ahead."""
    from .metadata import GenerationParameters, read_parameters

    params = read_parameters(args.from_png) if args.from_png else None
    prompts: list[str] = list(args.prompt or [])
    if params is None and not prompts:
        print("error: give a prompt, or --from-png IMAGE", file=sys.stderr)
        return None
    if args.from_png and INTERRUPTED_KEY in params.extra and args.steps is None:
        print(
            f"error: {args.from_png} is an unfinished image (Interrupted: {params.extra[INTERRUPTED_KEY]}): it "
            "cannot be made again; pass --steps N to make a finished image from its other parameters",
            file=sys.stderr,
        )
        return None
    if params is None:
        params = GenerationParameters(prompt=prompts[0], steps=25, scheduler="dpmpp", width=0, height=0)
    overrides = {
        "prompt": prompts[0] if prompts else None,
        "negative_prompt": args.negative,
        "steps": args.steps,
        "scheduler": args.scheduler,
        "guidance_scale": args.guidance,
        "guidance_rescale": args.guidance_rescale,
        "seed": args.seed,
        "clip_skip": args.clip_skip,
        "strength": args.strength,
        "model": package_folder(args.model) if args.model else None,
    }
    if args.size:
        overrides["width"], overrides["height"] = args.size
    params = params.replace(**{k: v for k, v in overrides.items() if v is not None})
    params.extra.pop(INTERRUPTED_KEY, None)
    if params.seed == -1:  # the web UIs' "random"
        params = params.replace(seed=None)
    default = _default_model_name()
    if params.model == default:  # a PNG made with the built-in model names it by its folder
        params = params.replace(model=None)
    if not params.model and default is None:
        print("error: no model: pass --model FOLDER_OR_HUB_ID", file=sys.stderr)
        return None
    if args.model_config and not (params.model and Path(params.model).expanduser().is_file()):
        print("error: --model-config applies to a single-file --model (a .safetensors file)", file=sys.stderr)
        return None
    if args.mask and not args.image:
        print("error: --mask needs --image", file=sys.stderr)
        return None
    if args.strength is not None and not args.image:
        print("error: --strength needs --image (image-to-image or inpainting)", file=sys.stderr)
        return None
    if args.from_png and params.strength is not None and not args.image:
        print(
            f"error: {args.from_png} was made from an init image (Denoising strength {params.strength}); pass it "
            "with --image",
            file=sys.stderr,
        )
        return None
    _check_numbers(args, params)
    if args.from_png and "IP-Adapter" in params.extra and not args.ip_image:
        raise ValueError(
            f"{args.from_png} was made with an image prompt (IP-Adapter: {params.extra['IP-Adapter']}); pass the "
            "adapter and the image with --ip-adapter and --ip-image"
        )
    from .prompt_networks import check_networks

    check_networks(params, args.lora_dir, args.embedding, from_png=bool(args.from_png))
    build = _build_options(args, params)
    call: dict[str, Any] = {}
    if args.ip_adapter or args.ip_image or args.ip_scale is not None:
        call["ip_adapter_image"] = _image_prompts(args, build)
    pipeline = "stable-diffusion"
    if args.image:
        pipeline = "stable-diffusion-inpaint" if args.mask else "stable-diffusion-img2img"
        call["image"] = _open_image(args.image, "--image")
        if args.mask:
            call["mask_image"] = _open_image(args.mask, "--mask")
            if call["mask_image"].size != call["image"].size:
                raise ValueError(
                    f"--mask is {call['mask_image'].size[0]}x{call['mask_image'].size[1]} but --image is "
                    f"{call['image'].size[0]}x{call['image'].size[1]}; they must have the same size"
                )
        if params.strength is not None:
            call["strength"] = params.strength
    _check_against_model(params, build, call, args.batch * max(1, len(prompts)))
    if params.width and params.height:
        call["width"], call["height"] = params.width, params.height
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out} is not writable")
    return Request(
        pipeline=pipeline, params=params, call=call, build=build, out=out, prompts=prompts or [params.prompt]
    )


def _check_numbers(args: argparse.Namespace, params: Any) -> None:
    from .request import check_guidance, check_positive_int, check_seed, check_strength

    check_positive_int("--steps", params.steps)
    check_positive_int("--batch", args.batch)
    check_guidance(params.guidance_scale, bool(params.negative_prompt))
    if not 0.0 <= params.guidance_rescale <= 1.0:
        raise ValueError(f"--guidance-rescale must be in [0, 1], got {params.guidance_rescale}")
    if params.seed is not None:
        check_seed(params.seed)
    if params.clip_skip is not None and params.clip_skip < 0:
        raise ValueError(f"--clip-skip must be 0 or more, got {params.clip_skip}")
    if params.strength is not None:
        check_strength(params.strength, params.steps)
    for name, value in (("width", params.width), ("height", params.height)):
        if value < 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _build_options(args: argparse.Namespace, params: Any) -> dict[str, Any]:
    import torch
    from difframe import Framework

    from .batching import parse_bytes
    from .conditioning import CONDITIONER_KEY, DEFAULT_CONDITIONER, parse_conditioner_metadata
    from .request import check_device

    device = check_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = args.dtype or ("float32" if device.type == "cpu" else "float16")
    framework = Framework()
    scheduler = params.scheduler or "dpmpp"
    framework.get("scheduler", scheduler)  # an unknown name: the list of installed ones, before loading
    options: dict[str, Any] = {"scheduler": scheduler, "framework": framework}
    options.update(_attention_options(args, params, framework))
    options.update(_guidance_options(args, params, framework))
    if args.conditioner:
        options["conditioner"] = args.conditioner
    elif CONDITIONER_KEY in params.extra:  # --from-png of an image made with another conditioner
        options["conditioner"], options["conditioner_options"] = parse_conditioner_metadata(
            params.extra[CONDITIONER_KEY]
        )
    if args.no_prompt_weighting:
        options.setdefault("conditioner", DEFAULT_CONDITIONER)
        options["conditioner_options"] = {**options.get("conditioner_options", {}), "weighting": False}
    if args.memory_budget:
        parse_bytes(args.memory_budget)
        options["memory_budget"] = args.memory_budget
    if args.cpu_offload:
        options["cpu_offload"] = str(device)
    else:
        options["device"] = str(device)
    if args.lora_dir:
        options["lora_dir"] = args.lora_dir
    if args.model_config:
        options["config"] = args.model_config
    if args.allow_pickle:
        options["allow_pickle"] = True
    if dtype == "auto":  # resolved here: the memory check below needs the real item size
        from difframe.backends import auto_dtype

        supported = framework.get("backend", args.backend or "eager").spec.supports.dtypes
        dtype = auto_dtype(device.type, supported)
    options["dtype"] = getattr(torch, dtype)
    if args.backend:
        options["backend"] = args.backend
    if args.backend_option:
        options["backend_options"] = parse_backend_options(args.backend_option)
    if args.reproducible is not None:
        options["reproducible"] = args.reproducible
    return options


def _attention_options(args: argparse.Namespace, params: Any, framework: Any) -> dict[str, Any]:
    """--attention, --attention-option and --attention-addon as build options, checked here (names, options, where
    the add-ons go) before any weight is read. With --from-png, the PNG's Attention is used where these are not
    given: its backend (when it runs here) and its add-ons."""
    from .metadata import ATTENTION_KEY, parse_attention_record
    from .runtime import addon_names, check_attention_build_options, check_attention_name

    attention = args.attention
    addons = [parse_addon_option(text) for text in args.attention_addon]
    if ATTENTION_KEY in params.extra:  # --from-png of an image whose attention was not the default
        backends, recorded = parse_attention_record(params.extra[ATTENTION_KEY])
        if attention is None:
            attention = _recorded_backend(framework, backends, args.from_png)
        if not args.attention_addon:
            installed = addon_names(framework)
            for name, addon_options in recorded:
                if name in installed:
                    addons.append((name, addon_options))
                elif "IP-Adapter" not in params.extra:  # an IP-Adapter's own add-on comes back with --ip-adapter
                    raise ValueError(
                        f"{args.from_png} was made with the attention add-on {name!r}, which is not an installed "
                        f"add-on (installed: {', '.join(installed) or 'none'}); install the plugin that registers "
                        "it, or choose add-ons with --attention-addon"
                    )
    options: dict[str, Any] = {"attention": attention or "auto"}
    check_attention_name(framework, options["attention"])
    if args.attention_option:
        if attention is None:
            raise ValueError("--attention-option needs --attention NAME (the backend whose options they are)")
        options["attention_options"] = parse_backend_options(args.attention_option, "--attention-option")
    if addons:
        options["attention_addons"] = addons
    check_attention_build_options(framework, options)
    return options


def _guidance_options(args: argparse.Namespace, params: Any, framework: Any) -> dict[str, Any]:
    """--guider and --hook as build options; with --from-png, the PNG's Guider and Hooks where they are not given.
    The names are checked here, before any weight is read (the options by the build, also before)."""
    from .metadata import GUIDER_KEY, HOOKS_KEY, parse_component_record

    options: dict[str, Any] = {}
    if args.guider:
        guider = parse_addon_option(args.guider, "--guider")
        _check_named(framework, "guider", guider[0], None)
    elif GUIDER_KEY in params.extra:
        recorded = parse_component_record(GUIDER_KEY, params.extra[GUIDER_KEY])
        if len(recorded) != 1:
            raise ValueError(f"PNG parameters: {GUIDER_KEY} must name one guider, got {params.extra[GUIDER_KEY]!r}")
        guider = recorded[0]
        _check_named(framework, "guider", guider[0], args.from_png)
    else:
        guider = None
    if guider is not None:
        options["guider"], options["guider_options"] = guider
    if [text.strip().lower() for text in args.hook] == ["none"]:
        hooks: list[tuple[str, dict[str, Any]]] = []
    elif args.hook:
        hooks = [parse_addon_option(text, "--hook") for text in args.hook]
        for name, _ in hooks:
            _check_named(framework, "inference_hook", name, None)
    elif HOOKS_KEY in params.extra:
        hooks = parse_component_record(HOOKS_KEY, params.extra[HOOKS_KEY])
        for name, _ in hooks:
            _check_named(framework, "inference_hook", name, args.from_png)
    else:
        hooks = []
    if hooks:
        options["hooks"] = hooks
    if args.from_png:  # the recorded options checked against the plugins installed here, with what to do
        from .guided_steps import create_checked

        built = [("guider", *guider, args.guider)] if guider is not None else []
        built += [("inference_hook", *hook, args.hook) for hook in hooks]
        for kind, name, given, flag in built:
            try:
                create_checked(framework, kind, name, given)
            except (TypeError, ValueError) as error:
                if flag:
                    raise
                other = "--guider NAME" if kind == "guider" else "--hook NAME (or --hook none)"
                raise ValueError(
                    f"{args.from_png} records options that the installed {name!r} refuses ({error}); install "
                    f"the version of its plugin that made it, or pass {other} to make it with other settings"
                ) from None
    return options


def _check_named(framework: Any, kind: str, name: str, png: str | None) -> None:
    """A guider or hook name that is installed; else an error naming it, the installed ones and what to do."""
    from difframe.errors import UnknownComponentError

    label, flag = (
        ("guider", "--guider NAME") if kind == "guider" else ("inference hook", "--hook NAME (none: no hooks)")
    )
    if png and name.startswith("<"):
        raise ValueError(
            f"{png} was made with the {label} object {name[1:-1]}, set as an object rather than by a registered "
            f"name, so its options are not recorded; pass {flag} to make it with a registered one"
        )
    try:
        framework.get(kind, name)
    except UnknownComponentError:
        installed = ", ".join(framework.registry.names(kind)) or "none"
        if png is None:
            raise
        raise ValueError(
            f"{png} was made with the {label} {name!r}, which is not installed (installed: {installed}); install the "
            f"plugin that registers it, or pass {flag} to make the image with another (the pixels will differ)"
        ) from None


def _recorded_backend(framework: Any, backends: list[str], png: str) -> str | None:
    """The backend a PNG's Attention names, if it is one this machine runs; else an error that says what to do."""
    if len(backends) != 1:
        raise ValueError(
            f"{png} was made with several attention backends ({', '.join(backends)}), one per module; choose one with "
            "--attention NAME (auto: the best here)"
        )
    from .runtime import check_attention_name

    try:
        check_attention_name(framework, backends[0])
    except (LookupError, ValueError) as error:
        raise ValueError(
            f"{png} was made with the attention backend {backends[0]!r}, which cannot be used here ({error}); pass "
            "--attention NAME (auto: the best here) to make it with another (the pixels may differ)"
        ) from None
    return backends[0]


def parse_addon_option(text: str, flag: str = "--attention-addon") -> tuple[str, dict[str, Any]]:
    """--attention-addon (or --guider, --hook) 'NAME' or 'NAME {"key": value}' -> (name, options)."""
    name, _, rest = text.strip().partition(" ")
    if not name:
        raise ValueError(f"{flag} takes a registered name, optionally followed by JSON options")
    try:
        options = json.loads(rest) if rest.strip() else {}
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{flag} {text!r}: the options after the name must be a JSON object, e.g. "
            f"'{name} {{\"factor\": 0.5}}' ({error})"
        ) from None
    if not isinstance(options, dict):
        raise ValueError(f"{flag} {text!r}: the options after the name must be a JSON object")
    return name, options


def parse_backend_options(pairs: list[str], flag: str = "--backend-option") -> dict[str, Any]:
    """['precision=bf16', 'num_threads=2'] -> {'precision': 'bf16', 'num_threads': 2} (values read as JSON if they
    are JSON, else kept as text)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _open_image(path: str, option: str) -> Any:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except OSError as error:
        raise ValueError(f"{option} {path}: not a readable image ({error})") from None


def _image_prompts(args: argparse.Namespace, build: dict[str, Any]) -> Any:
    """--ip-adapter files into the build options, --ip-image files opened: one image per adapter (one adapter may
    take several)."""
    adapters, images = args.ip_adapter or [], args.ip_image or []
    if not adapters or not images:
        raise ValueError("--ip-adapter FILE and --ip-image IMAGE go together (and --ip-scale needs both)")
    if len(adapters) > 1 and len(images) != len(adapters):
        raise ValueError(f"{len(images)} --ip-image for {len(adapters)} --ip-adapter: give one image per adapter")
    for adapter in adapters:
        if not Path(adapter).expanduser().is_file():
            raise ValueError(f"--ip-adapter {adapter}: no such file")
    build["ip_adapter"] = [
        {"pretrained": str(Path(a).expanduser().parent), "weight_name": Path(a).name} for a in adapters
    ]
    if args.ip_scale is not None:
        build["ip_adapter_scale"] = args.ip_scale
    opened = [_open_image(image, "--ip-image") for image in images]
    return opened if len(adapters) > 1 else (opened if len(opened) > 1 else opened[0])


def _check_against_model(params: Any, build: dict[str, Any], call: dict[str, Any], batch: int) -> None:
    """Size, VAE scale and memory from the model folder's configs (a local folder or the built-in model)."""
    from difframe import Framework
    from difframe.framework import packaged_folder

    from .batching import available_memory
    from .images import default_size
    from .request import check_memory, check_scaling_factor, check_size, minimum_image_bytes, read_geometry

    if params.model:
        folder = Path(os.path.expanduser(params.model))
    else:
        folder = Path(packaged_folder(Framework().get("pipeline", "stable-diffusion").spec.default_model))
    geometry = read_geometry(folder) if folder.is_dir() else None
    if geometry is None:  # a hub id or a plugin's layout: the pipeline checks after loading, before denoising
        return
    check_scaling_factor(geometry.scaling_factor, str(folder / "vae" / "config.json"))
    multiple = geometry.size_multiple
    if params.width and params.height:
        height, width = params.height, params.width
    elif "image" in call:
        height, width = default_size(call["image"], multiple)
    else:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        sample = unet.get("sample_size", 64)
        height = width = int(sample if isinstance(sample, int) else sample[0]) * geometry.vae_factor
    why = f"the VAE's factor {geometry.vae_factor}"
    if geometry.unet_downsampling != 1:
        why += f" times the UNet's downsampling {geometry.unet_downsampling}"
    check_size(height, width, multiple, why)
    itemsize = build["dtype"].itemsize
    device = build.get("device") or build.get("cpu_offload")
    needed = minimum_image_bytes(height, width, geometry.vae_factor, geometry.unet_channels, itemsize)
    free = available_memory(device)
    check_memory(needed, free, height, width, device)
    check_memory(batch * height * width * 3 * 4, free, height, width, device, images=batch)


def _default_model_name() -> str | None:
    """The folder name of the text-to-image pipeline's built-in model, if it has one installed."""
    from difframe import Framework
    from difframe.errors import DifframeError
    from difframe.framework import packaged_folder

    default = Framework().get("pipeline", "stable-diffusion").spec.default_model
    try:
        return Path(packaged_folder(default)).name if default else None
    except DifframeError:
        return None


def _generate(args: argparse.Namespace, request: Request) -> int:
    from difframe import Framework

    params = request.params
    framework = request.build.pop("framework", None) or Framework()
    with quiet_library_progress(args.no_progress):
        pipe = framework.build(request.pipeline, model=params.model, **request.build)
    if getattr(pipe, "single_file", None) is not None:
        print(f"{pipe.single_file.path.name}: {pipe.single_file.description}", file=sys.stderr)
    pipe.set_progress_bar_config(desc="denoising", leave=True, disable=args.no_progress)
    if args.embedding:
        from .prompt_networks import parse_embedding_option

        given = [parse_embedding_option(option) for option in args.embedding]
        pipe.load_textual_inversion([file for _, file in given], token=[token for token, _ in given])
    output = pipe(
        request.prompts if len(request.prompts) > 1 else params.prompt,
        negative_prompt=params.negative_prompt or None,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale,
        guidance_rescale=params.guidance_rescale,
        num_images_per_prompt=args.batch,
        seed=params.seed,
        clip_skip=params.clip_skip,
        **request.call,
    )
    for path in output.save(request.out):
        print(path, flush=True)
    return 0


def package_folder(model: str) -> str:
    """--model PACKAGE:FOLDER (a folder inside an installed package) -> that folder; anything else as it is."""
    package, separator, _ = model.partition(":")
    if not separator or Path(model).expanduser().exists() or not all(p.isidentifier() for p in package.split(".")):
        return model
    from difframe.framework import packaged_folder

    folder = packaged_folder(model)
    if not Path(folder).is_dir():
        raise ValueError(f"model {model}: the package {package!r} has no folder {model.partition(':')[2]!r}")
    return folder

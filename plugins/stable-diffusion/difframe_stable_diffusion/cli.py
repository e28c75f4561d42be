"""`difframe generate`: text-to-image (and image-to-image / inpainting) from the command line, and reproducing an
image from the parameters embedded in its PNG. Importing this module does not import torch."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

DTYPES = ("float32", "float16", "bfloat16")


def parse_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '768x512' -> width 768, height 512 (the web UIs' WxH)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"size must look like 512 or 768x512 (width x height), got {text!r}")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    return width, height


def add_generate_command(cli: Any) -> None:
    parser = cli.add_parser(
        "generate",
        help="generate images with a Stable Diffusion pipeline",
        description="Generate images; each PNG carries its parameters (the web UIs' 'parameters' text chunk). "
        "`--from-png image.png` makes that image again.",
    )
    parser.add_argument("prompt", nargs="?", help="the prompt (omit with --from-png)")
    parser.add_argument(
        "-m",
        "--model",
        help="model folder, hub id or single-file checkpoint (.safetensors) (default with --from-png: the PNG's Model)",
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
    parser.add_argument("--seed", type=int, help="seed of the first image; image i gets seed+i (default random)")
    parser.add_argument("--size", type=parse_size, help="WIDTHxHEIGHT or one number (default: the model's)")
    parser.add_argument("-b", "--batch", type=int, default=1, help="how many images (default 1)")
    parser.add_argument("--clip-skip", type=int, help="skip the last N CLIP layers")
    parser.add_argument("--image", help="init image: image-to-image (or inpainting with --mask)")
    parser.add_argument("--mask", help="inpainting mask (white = repaint)")
    parser.add_argument("--strength", type=float, help="image-to-image / inpainting strength in [0, 1]")
    parser.add_argument("-o", "--out", default="outputs", help="output folder (default ./outputs)")
    parser.add_argument("--from-png", dest="from_png", help="reproduce the image whose parameters this PNG holds")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda if available)")
    parser.add_argument("--dtype", choices=DTYPES, help="weights dtype (default float32 on CPU, float16 on GPU)")
    parser.add_argument("--attention", default="auto", help="attention backend (default auto)")
    parser.add_argument("--memory-budget", help="bytes one chunk of the batch may use, e.g. 6GB (default auto)")
    parser.add_argument("--cpu-offload", action="store_true", help="keep models in RAM, each on the GPU as it runs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, TypeError, OSError) as error:  # bad input: a message, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from .metadata import GenerationParameters, read_parameters

    params = read_parameters(args.from_png) if args.from_png else None
    if params is None and not args.prompt:
        print("error: give a prompt, or --from-png IMAGE", file=sys.stderr)
        return 2
    if params is None:
        params = GenerationParameters(prompt=args.prompt, steps=25, scheduler="dpmpp", width=0, height=0)
    overrides = {
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "steps": args.steps,
        "scheduler": args.scheduler,
        "guidance_scale": args.guidance,
        "guidance_rescale": args.guidance_rescale,
        "seed": args.seed,
        "clip_skip": args.clip_skip,
        "strength": args.strength,
        "model": args.model,
    }
    if args.size:
        overrides["width"], overrides["height"] = args.size
    params = params.replace(**{k: v for k, v in overrides.items() if v is not None})
    default = _default_model_name()
    if params.model == default:  # a PNG made with the built-in model names it by its folder
        params = params.replace(model=None)
    if not params.model and default is None:
        print("error: no model: pass --model FOLDER_OR_HUB_ID", file=sys.stderr)
        return 2
    if args.model_config and not (params.model and Path(params.model).expanduser().is_file()):
        print("error: --model-config applies to a single-file --model (a .safetensors file)", file=sys.stderr)
        return 2
    if args.mask and not args.image:
        print("error: --mask needs --image", file=sys.stderr)
        return 2
    if args.from_png and params.strength is not None and not args.image:
        print(
            f"error: {args.from_png} was made from an init image (Denoising strength {params.strength}); pass it "
            "with --image",
            file=sys.stderr,
        )
        return 2
    return _generate(args, params)


def _default_model_name() -> str | None:
    """The folder name of the text-to-image pipeline's built-in model, if it has one installed."""
    from pathlib import Path

    from difframe import Framework
    from difframe.errors import DifframeError
    from difframe.framework import packaged_folder

    default = Framework().get("pipeline", "stable-diffusion").spec.default_model
    try:
        return Path(packaged_folder(default)).name if default else None
    except DifframeError:
        return None


def _generate(args: argparse.Namespace, params: Any) -> int:
    import torch
    from difframe import Framework
    from PIL import Image

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("float32" if device == "cpu" else "float16")
    pipeline = "stable-diffusion"
    call: dict[str, Any] = {}
    if args.image:
        pipeline = "stable-diffusion-inpaint" if args.mask else "stable-diffusion-img2img"
        call["image"] = Image.open(args.image).convert("RGB")
        if args.mask:
            call["mask_image"] = Image.open(args.mask)
        if params.strength is not None:
            call["strength"] = params.strength
    options: dict[str, Any] = {"scheduler": params.scheduler or "dpmpp", "attention": args.attention}
    if args.memory_budget:
        options["memory_budget"] = args.memory_budget
    if args.cpu_offload:
        options["cpu_offload"] = device
    else:
        options["device"] = device
    if args.model_config:
        options["config"] = args.model_config
    if args.allow_pickle:
        options["allow_pickle"] = True
    pipe = Framework().build(pipeline, model=params.model, dtype=getattr(torch, dtype), **options)
    if getattr(pipe, "single_file", None) is not None:
        print(f"{pipe.single_file.path.name}: {pipe.single_file.description}", file=sys.stderr)
    pipe.set_progress_bar_config(desc="denoising", leave=True, disable=args.no_progress)
    if params.width and params.height:
        call["width"], call["height"] = params.width, params.height
    output = pipe(
        params.prompt,
        negative_prompt=params.negative_prompt or None,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale,
        guidance_rescale=params.guidance_rescale,
        num_images_per_prompt=args.batch,
        seed=params.seed,
        clip_skip=params.clip_skip,
        **call,
    )
    for path in output.save(args.out):
        print(path)
    return 0

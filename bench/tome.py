"""Token merging (contrib/tome): quality on the built-in model, speed on the full SD 1.5 architecture.

quality: the shipped difframe-shapes model, 64x64, 20 DPM++ 2M steps, guidance 7.5; every caption with seed i,
    exact and with token merging at its default settings (ratio 0.5, max_downsample 1, random destinations from
    seed 0), and deterministic (use_rand=False). Reports the scorer's adherence (both colours right, shape kind
    right), the mean absolute pixel difference to the exact image and the time per image.
speed: SD 1.5's UNet, VAE and text encoder with random weights (bench/pipelines.py's folder), 512x512 by default,
    20 DPM++ 2M steps, guidance 7.5, one image, one call per configuration in one process: ours exact, ours with
    token merging, the reference pipeline (diffusers) exact and with the `tomesd` package at the same ratio
    (deterministic merging in both, so the two images can be compared). Reports wall times and ratios.

Run: flock /tmp/heavy.lock .venv/bin/python bench/tome.py quality [--count 90] [--threads 1]
     flock /tmp/heavy.lock .venv/bin/python bench/tome.py speed [--size 512] [--steps 20] [--ratio 0.5] [--threads N]
Prints markdown tables for docs/benchmarks.md ("## Token merging (issue 13)").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a watercolor painting of a fox in a forest"


def header(command: str) -> str:
    import torch

    return (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, torch {torch.__version__}; "
        f"`{command}`."
    )


def quality(count: int) -> str:
    import numpy as np
    import torch
    from difframe import Framework
    from difframe_shapes_model.evaluate import prompts_and_seeds
    from difframe_shapes_model.score import score

    pipe = Framework().build("stable-diffusion", scheduler="dpmpp")
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = prompts_and_seeds(count)

    def run() -> tuple[list, float]:
        images, started = [], time.perf_counter()
        for prompt, seed in zip(prompts, seeds):
            out = pipe(prompt, seed=seed, num_inference_steps=20, guidance_scale=7.5, output_type="np")
            images.append((np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8))
        return images, (time.perf_counter() - started) / len(prompts)

    exact, exact_seconds = run()
    rows = [("exact", exact, exact_seconds)]
    for label, options in (
        ("tome, defaults (ratio 0.5, random destinations)", {}),
        ("tome, ratio 0.5, use_rand=False", {"use_rand": False}),
    ):
        hook = pipe.add_hook("tome", **options)
        images, seconds = run()
        pipe.remove_hook(hook)
        rows.append((label, images, seconds))
    lines = [
        header(f".venv/bin/python bench/tome.py quality --count {count} --threads {torch.get_num_threads()}")
        + f" {count} images per row.",
        "",
        "| run | both colours right | shape right | all three | mean abs pixel difference to exact (0-255) "
        "| s / image |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, images, seconds in rows:
        scores = [score(image, prompt) for image, prompt in zip(images, prompts)]
        percent = {key: 100 * sum(s[key] for s in scores) / len(scores) for key in scores[0]}
        every = 100 * sum(s["both_colours"] and s["shape"] for s in scores) / len(scores)
        difference = float(np.mean([np.abs(a.astype(float) - b.astype(float)).mean() for a, b in zip(images, exact)]))
        lines.append(
            f"| {name} | {percent['both_colours']:.1f}% | {percent['shape']:.1f}% | {every:.1f}% | {difference:.2f} "
            f"| {seconds:.3f} |"
        )
    return "\n".join(lines)


def speed(size: int, steps: int, ratio: float, model_dir: Path, model: Path | None = None) -> str:
    import numpy as np
    import tomesd
    import torch
    from difframe import Framework
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pipelines import make_model

    folder = model or model_dir / "sd15-random"
    if not (folder / "model_index.json").exists():
        make_model(folder)
    settings = dict(height=size, width=size, num_inference_steps=steps, guidance_scale=7.5, output_type="np")
    ours = Framework().build("stable-diffusion", model=folder, scheduler="dpmpp")
    ours.set_progress_bar_config(disable=True)
    theirs = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    theirs.scheduler = DPMSolverMultistepScheduler.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)

    def timed(function) -> tuple[float, np.ndarray]:
        started = time.perf_counter()
        with torch.inference_mode():
            images = function()
        return time.perf_counter() - started, images

    def ours_with(merge: bool) -> tuple[float, np.ndarray]:
        hook = ours.add_hook("tome", ratio=ratio, use_rand=False) if merge else None
        try:
            return timed(lambda: ours(PROMPT, seed=0, **settings).images)
        finally:
            if hook is not None:
                ours.remove_hook(hook)

    def reference(merge: bool) -> tuple[float, np.ndarray]:
        if merge:
            tomesd.apply_patch(theirs, ratio=ratio, use_rand=False)
        try:
            return timed(lambda: theirs(PROMPT, generator=torch.Generator().manual_seed(0), **settings).images)
        finally:
            tomesd.remove_patch(theirs)

    warm_up = {**settings, "num_inference_steps": 1, "height": 256, "width": 256}
    ours("warm-up", seed=0, **warm_up)
    theirs("warm-up", generator=torch.Generator().manual_seed(0), **warm_up)
    merged = f"ratio {ratio}, use_rand=False"
    results = {
        "ours, exact": ours_with(False),
        f"ours, tome ({merged})": ours_with(True),
        "reference (diffusers), exact": reference(False),
        f"reference + tomesd ({merged})": reference(True),
    }
    base, reference_base = results["ours, exact"][0], results["reference (diffusers), exact"][0]
    mine, theirs_merged = results[f"ours, tome ({merged})"], results[f"reference + tomesd ({merged})"]
    lines = [
        header(f"bench/tome.py speed --size {size} --steps {steps} --ratio {ratio}")
        + f" {size}x{size}, {steps} DPM++ 2M steps, guidance 7.5, one image, one call per row.",
        "",
        "| run | wall time | speed-up over ours exact | over reference exact | max abs difference to its exact image |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, (seconds, images) in results.items():
        exact_images = results["ours, exact" if name.startswith("ours") else "reference (diffusers), exact"][1]
        lines.append(
            f"| {name} | {seconds:.1f} s | {base / seconds:.2f}x | {reference_base / seconds:.2f}x "
            f"| {float(np.abs(images - exact_images).max()):.3f} |"
        )
    lines += [
        "",
        f"ours / theirs with token merging: {mine[0] / theirs_merged[0]:.2f}x the time; max abs image difference "
        f"{float(np.abs(mine[1] - theirs_merged[1]).max()):.1e}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    measure = commands.add_parser("quality", help="adherence and pixel difference on the built-in model")
    measure.add_argument("--count", type=int, default=90, help="images per run (every caption once at 90)")
    measure.add_argument("--threads", type=int, default=1, help="one thread: the tiny model gains nothing from more")
    timing = commands.add_parser("speed", help="SD 1.5 architecture, random weights: ours and the reference")
    timing.add_argument("--size", type=int, default=512)
    timing.add_argument("--steps", type=int, default=20)
    timing.add_argument("--ratio", type=float, default=0.5)
    timing.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    timing.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "difframe-bench")
    timing.add_argument("--model", type=Path, help="another model folder (a check of this script on a tiny one)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.command == "quality":
        print(quality(args.count))
    else:
        print(speed(args.size, args.steps, args.ratio, args.model_dir, args.model))


if __name__ == "__main__":
    main()

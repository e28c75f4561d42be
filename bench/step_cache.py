"""The step caches of contrib/step-cache (DeepCache, first-block cache): quality on the built-in model, speed on the
full SD 1.5 architecture.

quality: the shipped difframe-shapes model, 64x64, 20 DPM++ 2M steps, guidance 7.5, one image per call (the
    first-block cache decides per call, so a batch would decide for all its images together); every caption with
    seed i, exact and with each cache at its default settings. Reports the scorer's adherence (both colours right,
    shape kind right), the mean absolute pixel difference to the exact image, the share of UNet calls run in full,
    and the time per image.
speed: SD 1.5's UNet, VAE and text encoder with random weights (bench/pipelines.py's folder), 512x512 by default,
    20 DPM++ 2M steps, guidance 7.5, batch of one, one call per configuration in one process: ours exact, ours with
    each cache, the reference pipeline (diffusers) exact and with the `deepcache` package's DeepCacheSDHelper at
    the same interval and branch. Reports wall times and ratios, and the difference between the two DeepCache
    images (the parity test's claim at full size).

Run: .venv/bin/python bench/step_cache.py quality [--count 90]
     .venv/bin/python bench/step_cache.py speed [--size 512] [--steps 20] [--threads N]
Prints markdown tables for docs/benchmarks.md ("## Step caching (issue 13)").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

CACHES = {"deepcache": {}, "first-block-cache": {}}  # the defaults: interval 3, branch 0; threshold 0.2
DEEPCACHE_DEFAULTS = dict(interval=3, branch=0)
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
    from difframe import Framework
    from difframe_shapes_model.evaluate import prompts_and_seeds
    from difframe_shapes_model.score import score

    pipe = Framework().build("stable-diffusion", scheduler="dpmpp")
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = prompts_and_seeds(count)

    def run() -> tuple[list, float, float]:
        images, full, calls, started = [], 0, 0, time.perf_counter()
        for prompt, seed in zip(prompts, seeds):
            out = pipe(prompt, seed=seed, num_inference_steps=20, guidance_scale=7.5, output_type="np")
            images.append((np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8))
            for hook in pipe.hooks:
                full, calls = full + sum(hook.steps_run), calls + len(hook.steps_run)
        return images, (time.perf_counter() - started) / len(prompts), (full / calls if calls else 1.0)

    exact, exact_seconds, _ = run()
    rows = [("exact", exact, exact_seconds, 1.0)]
    for name, options in CACHES.items():
        pipe.add_hook(name, **options)
        images, seconds, share = run()
        pipe.remove_hook(name)
        rows.append((name, images, seconds, share))
    lines = [
        header(f".venv/bin/python bench/step_cache.py quality --count {count}") + f" {count} images per row.",
        "",
        "| run | both colours right | shape right | all three | mean abs pixel difference to exact (0-255) "
        "| UNet calls run in full | s / image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, images, seconds, share in rows:
        scores = [score(image, prompt) for image, prompt in zip(images, prompts)]
        percent = {key: 100 * sum(s[key] for s in scores) / len(scores) for key in scores[0]}
        every = 100 * sum(s["both_colours"] and s["shape"] for s in scores) / len(scores)
        difference = float(np.mean([np.abs(a.astype(float) - b.astype(float)).mean() for a, b in zip(images, exact)]))
        lines.append(
            f"| {name} | {percent['both_colours']:.1f}% | {percent['shape']:.1f}% | {every:.1f}% | {difference:.2f} "
            f"| {100 * share:.0f}% | {seconds:.3f} |"
        )
    return "\n".join(lines)


def speed(size: int, steps: int, model_dir: Path, model: Path | None = None) -> str:
    import numpy as np
    import torch
    from DeepCache import DeepCacheSDHelper
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

    def ours_with(name: str | None, **options) -> tuple[float, np.ndarray, str]:
        hook = ours.add_hook(name, **options) if name else None
        try:
            seconds, images = timed(lambda: ours(PROMPT, seed=0, **settings).images)
        finally:
            if hook is not None:
                ours.remove_hook(hook)
        runs = f"{sum(hook.steps_run)}/{len(hook.steps_run)}" if hook else f"{steps}/{steps}"
        return seconds, images, runs

    def reference(deepcache: bool) -> tuple[float, np.ndarray, str]:
        helper = None
        if deepcache:
            helper = DeepCacheSDHelper(pipe=theirs)
            helper.set_params(
                cache_interval=DEEPCACHE_DEFAULTS["interval"], cache_branch_id=DEEPCACHE_DEFAULTS["branch"]
            )
            helper.enable()
        try:
            generator = torch.Generator().manual_seed(0)
            seconds, images = timed(lambda: theirs(PROMPT, generator=generator, **settings).images)
        finally:
            if helper is not None:
                helper.disable()
        full = len(range(0, steps, DEEPCACHE_DEFAULTS["interval"])) if deepcache else steps
        return seconds, images, f"{full}/{steps}"

    results = {
        "ours, exact": ours_with(None),
        "ours, deepcache (interval 3, branch 0)": ours_with("deepcache", **DEEPCACHE_DEFAULTS),
        "ours, first-block-cache (threshold 0.2)": ours_with("first-block-cache"),
        "reference (diffusers), exact": reference(False),
        "reference + deepcache package (interval 3, branch 0)": reference(True),
    }
    base, reference_base = results["ours, exact"][0], results["reference (diffusers), exact"][0]
    ours_dc, theirs_dc = (
        results["ours, deepcache (interval 3, branch 0)"],
        results["reference + deepcache package (interval 3, branch 0)"],
    )
    lines = [
        header(f".venv/bin/python bench/step_cache.py speed --size {size} --steps {steps}")
        + f" {size}x{size}, {steps} DPM++ 2M steps, guidance 7.5, one call per row.",
        "",
        "| run | wall time | speed-up over ours exact | over reference exact | UNet calls in full "
        "| max abs difference to its exact image |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (seconds, images, runs) in results.items():
        exact_images = results["ours, exact" if name.startswith("ours") else "reference (diffusers), exact"][1]
        lines.append(
            f"| {name} | {seconds:.1f} s | {base / seconds:.2f}x | {reference_base / seconds:.2f}x | {runs} "
            f"| {float(np.abs(images - exact_images).max()):.3f} |"
        )
    lines += [
        "",
        f"ours / theirs with DeepCache: {ours_dc[0] / theirs_dc[0]:.2f}x the time; max abs image difference "
        f"{float(np.abs(ours_dc[1] - theirs_dc[1]).max()):.1e}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    measure = commands.add_parser("quality", help="adherence and pixel difference on the built-in model")
    measure.add_argument("--count", type=int, default=90, help="images per run (every caption once at 90)")
    timing = commands.add_parser("speed", help="SD 1.5 architecture, random weights: ours and the reference")
    timing.add_argument("--size", type=int, default=512)
    timing.add_argument("--steps", type=int, default=20)
    timing.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    timing.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "difframe-bench")
    timing.add_argument("--model", type=Path, help="another model folder (a check of this script on a tiny one)")
    args = parser.parse_args()

    import torch

    if args.command == "quality":
        print(quality(args.count))
    else:
        torch.set_num_threads(args.threads)
        print(speed(args.size, args.steps, args.model_dir, args.model))


if __name__ == "__main__":
    main()

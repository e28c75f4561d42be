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
import tempfile
from pathlib import Path

import accelerators as shared

CACHES = {"deepcache": {}, "first-block-cache": {}}  # the defaults: interval 3, branch 0; threshold 0.2
DEEPCACHE_DEFAULTS = dict(interval=3, branch=0)


def quality(count: int) -> str:
    from difframe_shapes_model.evaluate import prompts_and_seeds

    pipe = shared.builtin_pipeline()
    prompts, seeds = prompts_and_seeds(count)
    unet_calls = {"full": 0, "all": 0}

    def count_calls() -> None:
        for hook in pipe.hooks:
            unet_calls["full"] += sum(hook.steps_run)
            unet_calls["all"] += len(hook.steps_run)

    def run(name: str) -> shared.QualityRun:
        unet_calls.update(full=0, all=0)
        images, seconds = shared.generate(pipe, prompts, seeds, count_calls)
        share = unet_calls["full"] / unet_calls["all"] if unet_calls["all"] else 1.0
        return shared.QualityRun(name, images, seconds, (f"{100 * share:.0f}%",))

    runs = [run("exact")]
    for name, options in CACHES.items():
        pipe.add_hook(name, **options)
        runs.append(run(name))
        pipe.remove_hook(name)
    heading = (
        shared.header(f".venv/bin/python bench/step_cache.py quality --count {count}") + f" {count} images per row."
    )
    return shared.quality_table(heading, prompts, runs, ("UNet calls run in full",))


def speed(size: int, steps: int, model_dir: Path, model: Path | None = None) -> str:
    import torch
    from DeepCache import DeepCacheSDHelper

    ours, theirs = shared.sd15_pipelines(model_dir, model)
    settings = dict(height=size, width=size, num_inference_steps=steps, guidance_scale=7.5, output_type="np")

    def ours_with(name: str | None, **options) -> shared.SpeedRun:
        hook = ours.add_hook(name, **options) if name else None
        try:
            seconds, images = shared.timed(lambda: ours(shared.PROMPT, seed=0, **settings).images)
        finally:
            if hook is not None:
                ours.remove_hook(hook)
        runs = f"{sum(hook.steps_run)}/{len(hook.steps_run)}" if hook else f"{steps}/{steps}"
        return shared.SpeedRun(seconds, images, (runs,))

    def reference(deepcache: bool) -> shared.SpeedRun:
        helper = None
        if deepcache:
            helper = DeepCacheSDHelper(pipe=theirs)
            helper.set_params(
                cache_interval=DEEPCACHE_DEFAULTS["interval"], cache_branch_id=DEEPCACHE_DEFAULTS["branch"]
            )
            helper.enable()
        try:
            generator = torch.Generator().manual_seed(0)
            seconds, images = shared.timed(lambda: theirs(shared.PROMPT, generator=generator, **settings).images)
        finally:
            if helper is not None:
                helper.disable()
        full = len(range(0, steps, DEEPCACHE_DEFAULTS["interval"])) if deepcache else steps
        return shared.SpeedRun(seconds, images, (f"{full}/{steps}",))

    results = {
        "ours, exact": ours_with(None),
        "ours, deepcache (interval 3, branch 0)": ours_with("deepcache", **DEEPCACHE_DEFAULTS),
        "ours, first-block-cache (threshold 0.2)": ours_with("first-block-cache"),
        "reference (diffusers), exact": reference(False),
        "reference + deepcache package (interval 3, branch 0)": reference(True),
    }
    heading = (
        shared.header(f".venv/bin/python bench/step_cache.py speed --size {size} --steps {steps}")
        + f" {size}x{size}, {steps} DPM++ 2M steps, guidance 7.5, one call per row."
    )
    compared = ("ours, deepcache (interval 3, branch 0)", "reference + deepcache package (interval 3, branch 0)")
    return shared.speed_table(heading, results, compared, "DeepCache", ("UNet calls in full",))


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

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
import tempfile
from pathlib import Path

import accelerators as shared


def quality(count: int) -> str:
    import torch
    from difframe_shapes_model.evaluate import prompts_and_seeds

    pipe = shared.builtin_pipeline()
    prompts, seeds = prompts_and_seeds(count)
    runs = [shared.QualityRun("exact", *shared.generate(pipe, prompts, seeds))]
    for label, options in (
        ("tome, defaults (ratio 0.5, random destinations)", {}),
        ("tome, ratio 0.5, use_rand=False", {"use_rand": False}),
    ):
        hook = pipe.add_hook("tome", **options)
        runs.append(shared.QualityRun(label, *shared.generate(pipe, prompts, seeds)))
        pipe.remove_hook(hook)
    heading = (
        shared.header(f".venv/bin/python bench/tome.py quality --count {count} --threads {torch.get_num_threads()}")
        + f" {count} images per row."
    )
    return shared.quality_table(heading, prompts, runs)


def speed(size: int, steps: int, ratio: float, model_dir: Path, model: Path | None = None) -> str:
    import tomesd
    import torch

    ours, theirs = shared.sd15_pipelines(model_dir, model)
    settings = dict(height=size, width=size, num_inference_steps=steps, guidance_scale=7.5, output_type="np")

    def ours_with(merge: bool) -> shared.SpeedRun:
        hook = ours.add_hook("tome", ratio=ratio, use_rand=False) if merge else None
        try:
            return shared.SpeedRun(*shared.timed(lambda: ours(shared.PROMPT, seed=0, **settings).images))
        finally:
            if hook is not None:
                ours.remove_hook(hook)

    def reference(merge: bool) -> shared.SpeedRun:
        if merge:
            tomesd.apply_patch(theirs, ratio=ratio, use_rand=False)
        try:
            generator = torch.Generator().manual_seed(0)
            return shared.SpeedRun(*shared.timed(lambda: theirs(shared.PROMPT, generator=generator, **settings).images))
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
    heading = (
        shared.header(f"bench/tome.py speed --size {size} --steps {steps} --ratio {ratio}")
        + f" {size}x{size}, {steps} DPM++ 2M steps, guidance 7.5, one image, one call per row."
    )
    compared = (f"ours, tome ({merged})", f"reference + tomesd ({merged})")
    return shared.speed_table(heading, results, compared, "token merging")


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

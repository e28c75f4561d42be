"""Token merging (contrib/tome): quality on the built-in model, speed on the full SD 1.5 architecture.

quality: the shipped difframe-shapes model, 64x64, 20 DPM++ 2M steps, guidance 7.5; every caption with seed i,
    exact and with token merging at its default settings (ratio 0.5, max_downsample 1, random destinations from
    seed 0), and deterministic (use_rand=False). Reports the scorer's adherence (both colours right, shape kind
    right), the mean absolute pixel difference to the exact image and the time per image.
speed: SD 1.5's UNet, VAE and text encoder with random weights (bench/pipelines.py's folder), 512x512 by default,
    20 DPM++ 2M steps, guidance 7.5, one image, one call per configuration in one process: ours exact, ours with
    token merging, the reference pipeline (diffusers) exact and with the `tomesd` package at the same ratio
    (deterministic merging in both, so the two images can be compared). Reports wall times and ratios.
unet: the same models, one UNet call (a guidance pair: batch 2) at --size, the four contenders of ``speed``
    alternating round by round (--rounds), so that slow drifts of a shared machine fall on all of them; reports
    medians and spreads, what merging saves on each side and ours / theirs.

Run: flock /tmp/heavy.lock .venv/bin/python bench/tome.py quality [--count 90] [--threads 1]
     flock /tmp/heavy.lock .venv/bin/python bench/tome.py speed [--size 512] [--steps 20] [--ratio 0.5] [--threads N]
     flock /tmp/heavy.lock .venv/bin/python bench/tome.py unet [--size 512] [--rounds 5] [--ratio 0.5] [--threads N]
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


def unet_calls(size: int, rounds: int, ratio: float, model_dir: Path, model: Path | None = None) -> str:
    import statistics

    import tomesd
    import torch

    ours, theirs = shared.sd15_pipelines(model_dir, model)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, size // 8, size // 8, generator=generator)
    context = torch.randn(2, 77, ours.unet.config.cross_attention_dim, generator=generator)
    timestep = torch.tensor(500)

    def ours_call(merge: bool) -> float:
        hook = ours.add_hook("tome", ratio=ratio, use_rand=False) if merge else None
        try:
            return shared.timed(lambda: ours.unet(sample, timestep, context))[0]
        finally:
            if hook is not None:
                ours.remove_hook(hook)

    def reference_call(merge: bool) -> float:
        if merge:
            tomesd.apply_patch(theirs, ratio=ratio, use_rand=False)
        try:
            return shared.timed(lambda: theirs.unet(sample, timestep, encoder_hidden_states=context).sample)[0]
        finally:
            tomesd.remove_patch(theirs)

    contenders = {
        "ours, exact": lambda: ours_call(False),
        "reference (diffusers), exact": lambda: reference_call(False),
        "ours, tome": lambda: ours_call(True),
        "reference + tomesd": lambda: reference_call(True),
    }
    for call in contenders.values():  # warm-up
        call()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, call in contenders.items():
            times[name].append(call())
    median = {name: statistics.median(values) for name, values in times.items()}
    lines = [
        shared.header(f"bench/tome.py unet --size {size} --rounds {rounds} --ratio {ratio}")
        + f" One UNet call, {size}x{size} (batch 2: a guidance pair), ratio {ratio} with use_rand=False, "
        f"{rounds} alternating rounds.",
        "",
        "| contender | per call (median) | spread | saved by merging |",
        "| --- | ---: | ---: | ---: |",
    ]
    exact_of = {"ours, tome": "ours, exact", "reference + tomesd": "reference (diffusers), exact"}
    for name, values in times.items():
        saved = f"{100 * (1 - median[name] / median[exact_of[name]]):.1f}%" if name in exact_of else ""
        lines.append(f"| {name} | {median[name]:.3f} s | {min(values):.3f}-{max(values):.3f} s | {saved} |")
    lines += [
        "",
        f"ours / reference: exact {median['ours, exact'] / median['reference (diffusers), exact']:.3f}x the time, "
        f"with token merging {median['ours, tome'] / median['reference + tomesd']:.3f}x.",
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
    calls = commands.add_parser("unet", help="one UNet call, ours and the reference's, alternating rounds")
    calls.add_argument("--size", type=int, default=512)
    calls.add_argument("--rounds", type=int, default=5)
    calls.add_argument("--ratio", type=float, default=0.5)
    calls.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    calls.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "difframe-bench")
    calls.add_argument("--model", type=Path, help="another model folder (a check of this script on a tiny one)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.command == "quality":
        print(quality(args.count))
    elif args.command == "unet":
        print(unet_calls(args.size, args.rounds, args.ratio, args.model_dir, args.model))
    else:
        print(speed(args.size, args.steps, args.ratio, args.model_dir, args.model))


if __name__ == "__main__":
    main()

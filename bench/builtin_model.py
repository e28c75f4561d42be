"""One image from the built-in model: ours (prepacked and plain convolutions) against the reference library.

The shipped difframe-shapes folder loaded by both libraries, 64x64, 20 DPM++ 2M steps, guidance 7.5, batch of one,
in one process: the three pipelines take turns, round after round, so drifts in the machine's speed (a shared
machine's neighbours) fall on all three alike. Reports the median and the 10th-90th percentiles of the wall time
of a call, and the ratios of the medians to the reference.

Run: .venv/bin/python bench/builtin_model.py [--rounds 10] [--threads N]
Prints a markdown table for docs/benchmarks.md ("## Built-in model").
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

PROMPT = "a red circle on a blue background"
SETTINGS = dict(height=64, width=64, num_inference_steps=20, guidance_scale=7.5, output_type="np")


def pipelines() -> dict:
    import diffusers
    import torch
    from difframe import Framework
    from difframe_shapes_model import WEIGHTS

    framework = Framework()
    load = diffusers.StableDiffusionPipeline.from_pretrained
    reference = load(WEIGHTS, safety_checker=None, torch_dtype=torch.float32)
    reference.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    build = framework.build
    return {
        "ours, prepacked convolutions (the default)": build("stable-diffusion", scheduler="dpmpp"),
        "ours, plain convolutions": build("stable-diffusion", scheduler="dpmpp", prepacked_convolutions=False),
        "reference": reference,
    }


def call(name: str, pipe, seed: int):
    import torch

    if name == "reference":
        return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **SETTINGS).images
    return pipe(PROMPT, seed=seed, **SETTINGS).images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of 3 images per pipeline")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    pipes = pipelines()
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    images = {name: call(name, pipe, 0) for name, pipe in pipes.items()}  # warm-up, and the images to compare
    times: dict[str, list[float]] = {name: [] for name in pipes}
    for round_ in range(args.rounds):
        order = list(pipes) if round_ % 2 == 0 else list(reversed(pipes))
        for name in order:
            for seed in range(3):
                started = time.perf_counter()
                call(name, pipes[name], seed)
                times[name].append(time.perf_counter() - started)

    reference = statistics.median(times["reference"])
    command = f"{Path(sys.executable).name} bench/builtin_model.py --rounds {args.rounds} --threads {args.threads}"
    print(
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, {args.threads} "
        f"threads, Python {platform.python_version()}, torch {torch.__version__}; `{command}`; "
        f"{3 * args.rounds} images per pipeline.\n"
    )
    print("| pipeline | median | 10th-90th percentile | ratio of medians (/ reference) | max abs image difference |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, measured in times.items():
        deciles = statistics.quantiles(measured, n=10)
        difference = float(np.abs(images[name] - images["reference"]).max())
        print(
            f"| {name} | {statistics.median(measured):.3f} s | {deciles[0]:.3f}-{deciles[-1]:.3f} s | "
            f"{statistics.median(measured) / reference:.3f}x | {difference:.1e} |"
        )


if __name__ == "__main__":
    main()

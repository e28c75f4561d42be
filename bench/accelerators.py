"""What the accelerator benchmarks (bench/step_cache.py, bench/tome.py) share.

quality: the shipped difframe-shapes model, 64x64, 20 DPM++ 2M steps, guidance 7.5, one image per call; the
    scorer's adherence (both colours right, shape kind right), the mean absolute pixel difference to the exact
    images and the time per image, as one markdown table.
speed: SD 1.5's UNet, VAE and text encoder with random weights (bench/pipelines.py's folder), ours and the
    reference pipeline (diffusers) with DPM++ 2M; wall times, ratios and image differences as one markdown table.

Not a script: the two benchmarks import it (their folder is on sys.path when they run).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUALITY_SETTINGS = dict(num_inference_steps=20, guidance_scale=7.5, output_type="np")
PROMPT = "a watercolor painting of a fox in a forest"


def header(command: str) -> str:
    """The line that says where and how a table was measured."""
    import torch

    return (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, torch {torch.__version__}; "
        f"`{command}`."
    )


# --- quality on the built-in model ----------------------------------------------------------------------------------
@dataclass
class QualityRun:
    """One row of the quality table: its images (uint8 HxWx3), seconds per image and any extra cells."""

    name: str
    images: list[Any]
    seconds: float
    extra: tuple[str, ...] = field(default_factory=tuple)


def builtin_pipeline() -> Any:
    """The built-in model's pipeline with DPM++ 2M, quiet."""
    from difframe import Framework

    pipe = Framework().build("stable-diffusion", scheduler="dpmpp")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(
    pipe: Any, prompts: list[str], seeds: list[int], after_call: Callable[[], None] | None = None
) -> tuple[list[Any], float]:
    """One image per (prompt, seed), one call each: the images as uint8 and the mean seconds per image.

    after_call runs after each call (a step cache's count of the UNet calls it ran in full is read there)."""
    import numpy as np

    images, started = [], time.perf_counter()
    for prompt, seed in zip(prompts, seeds):
        out = pipe(prompt, seed=seed, **QUALITY_SETTINGS)
        images.append((np.clip(out.images[0], 0, 1) * 255).round().astype(np.uint8))
        if after_call is not None:
            after_call()
    return images, (time.perf_counter() - started) / len(prompts)


def quality_table(heading: str, prompts: list[str], runs: list[QualityRun], extra_columns: tuple[str, ...] = ()) -> str:
    """The markdown table: the first run is the exact one that the others' pixel differences are taken against."""
    import numpy as np
    from difframe_shapes_model.score import score

    exact = runs[0].images
    columns = ["run", "both colours right", "shape right", "all three", "mean abs pixel difference to exact (0-255)"]
    columns += [*extra_columns, "s / image"]
    lines = [heading, "", "| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for run in runs:
        scores = [score(image, prompt) for image, prompt in zip(run.images, prompts)]
        percent = {key: 100 * sum(s[key] for s in scores) / len(scores) for key in scores[0]}
        every = 100 * sum(s["both_colours"] and s["shape"] for s in scores) / len(scores)
        difference = np.mean([np.abs(a.astype(float) - b.astype(float)).mean() for a, b in zip(run.images, exact)])
        cells = [run.name, f"{percent['both_colours']:.1f}%", f"{percent['shape']:.1f}%", f"{every:.1f}%"]
        cells += [f"{float(difference):.2f}", *run.extra, f"{run.seconds:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- speed on the SD 1.5 architecture -------------------------------------------------------------------------------
@dataclass
class SpeedRun:
    """One row of the speed table: the call's wall time, its images and any extra cells."""

    seconds: float
    images: Any
    extra: tuple[str, ...] = field(default_factory=tuple)


def sd15_pipelines(model_dir: Path, model: Path | None = None) -> tuple[Any, Any]:
    """(ours, the reference's) over the random SD 1.5 folder (made in model_dir once), both with DPM++ 2M, quiet."""
    from difframe import Framework
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from pipelines import make_model

    folder = model or model_dir / "sd15-random"
    if not (folder / "model_index.json").exists():
        make_model(folder)
    ours = Framework().build("stable-diffusion", model=folder, scheduler="dpmpp")
    ours.set_progress_bar_config(disable=True)
    theirs = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    theirs.scheduler = DPMSolverMultistepScheduler.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)
    return ours, theirs


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, what it returned) of one call under torch.inference_mode."""
    import torch

    started = time.perf_counter()
    with torch.inference_mode():
        images = function()
    return time.perf_counter() - started, images


def speed_table(
    heading: str,
    results: dict[str, SpeedRun],
    compared: tuple[str, str],
    what: str,
    extra_columns: tuple[str, ...] = (),
) -> str:
    """The markdown table, then the ratio of the two runs named in compared (ours, theirs) and their difference.

    Rows whose name starts with "ours" are set against "ours, exact", the others against
    "reference (diffusers), exact"; both must be in results."""
    import numpy as np

    base, reference_base = results["ours, exact"].seconds, results["reference (diffusers), exact"].seconds
    columns = ["run", "wall time", "speed-up over ours exact", "over reference exact", *extra_columns]
    columns.append("max abs difference to its exact image")
    lines = [heading, "", "| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for name, run in results.items():
        exact = results["ours, exact" if name.startswith("ours") else "reference (diffusers), exact"].images
        cells = [name, f"{run.seconds:.1f} s", f"{base / run.seconds:.2f}x", f"{reference_base / run.seconds:.2f}x"]
        cells += [*run.extra, f"{float(np.abs(run.images - exact).max()):.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    mine, theirs = results[compared[0]], results[compared[1]]
    lines += [
        "",
        f"ours / theirs with {what}: {mine.seconds / theirs.seconds:.2f}x the time; max abs image difference "
        f"{float(np.abs(mine.images - theirs.images).max()):.1e}.",
    ]
    return "\n".join(lines)

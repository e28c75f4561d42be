"""Measure the built-in model: generate fixed prompts with fixed seeds and score every image automatically.

    python -m difframe_shapes_model.evaluate                       # the shipped model, the standard grid
    python -m difframe_shapes_model.evaluate --model runs/x/model --prompts 240 --json out.json
    python -m difframe_shapes_model.evaluate --model runs/x/snapshots/* --setting dpmpp:20:1 --setting dpmpp:20:7.5
    python -m difframe_shapes_model.evaluate --time-only           # only the time of one image, 21 runs

The scorer is checked first on drawn ground-truth images (it must read at least 98% of them right).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data import all_captions, make_dataset
from .score import score

DEFAULT_SETTINGS = [
    # (sampler, steps, guidance)
    ("dpmpp", 20, 1.0),
    ("dpmpp", 20, 3.0),
    ("dpmpp", 20, 7.5),
    ("dpmpp", 10, 7.5),
    ("euler_a", 20, 7.5),
    ("ddim", 20, 7.5),
]


def prompts_and_seeds(count: int) -> tuple[list[str], list[int]]:
    """Every caption in turn (90 of them), seed i for the i-th image: the same list on every run."""
    captions = all_captions()
    return [captions[i % len(captions)] for i in range(count)], list(range(count))


def check_scorer(count: int = 500, seed: int = 12345) -> float:
    """The fraction of drawn ground-truth images the scorer reads right on all three counts."""
    images, scenes = make_dataset(count, seed)
    right = [all(score(image, scene.caption).values()) for image, scene in zip(images, scenes)]
    return sum(right) / len(right)


def generate(pipe: Any, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int) -> list:
    images = []
    for start in range(0, len(prompts), batch):
        out = pipe(
            prompts[start : start + batch],
            seeds=seeds[start : start + batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
            output_type="np",
        )
        images += [(np.clip(image, 0, 1) * 255).round().astype(np.uint8) for image in out.images]
    return images


def evaluate(pipe: Any, settings: list[tuple[str, int, float]], count: int, batch: int = 30) -> list[dict]:
    prompts, seeds = prompts_and_seeds(count)
    rows = []
    for sampler, steps, guidance in settings:
        pipe.set_scheduler(sampler)
        started = time.perf_counter()
        images = generate(pipe, prompts, seeds, steps, guidance, batch)
        seconds = time.perf_counter() - started
        scores = [score(image, prompt) for image, prompt in zip(images, prompts)]
        rows.append(
            {
                "sampler": sampler,
                "steps": steps,
                "guidance": guidance,
                "images": len(images),
                **{key: round(100 * sum(s[key] for s in scores) / len(scores), 1) for key in scores[0]},
                "seconds_per_image_batched": round(seconds / len(images), 4),
            }
        )
    return rows


def time_single_image(pipe: Any, repeat: int = 21) -> dict[str, float]:
    """Wall time of one 64x64 image (20 DPM++ steps, guidance 7.5, batch of one): median, 10th and 90th percentile.

    A shared machine's speed drifts with its neighbours' load, so one median of a few runs is not enough.
    """
    pipe.set_scheduler("dpmpp")
    pipe("a red circle on a blue background", seed=0, num_inference_steps=20, guidance_scale=7.5)  # warm-up
    times = []
    for seed in range(repeat):
        started = time.perf_counter()
        pipe("a red circle on a blue background", seed=seed, num_inference_steps=20, guidance_scale=7.5)
        times.append(time.perf_counter() - started)
    deciles = statistics.quantiles(times, n=10)
    return {"median": statistics.median(times), "p10": deciles[0], "p90": deciles[-1], "runs": repeat}


def describe_timing(timing: dict[str, float]) -> str:
    return (
        f"one image, 20 DPM++ steps, guidance 7.5, batch of one: median {timing['median']:.3f} s "
        f"(10th-90th percentile {timing['p10']:.3f}-{timing['p90']:.3f} s, {timing['runs']} runs)"
    )


def grid(pipe: Any, path: Path, guidances: tuple[float, ...] = (1.0, 3.0, 7.5), columns: int = 8) -> Path:
    """Rows: guidance scales; columns: the same prompts and seeds."""
    captions = all_captions()
    prompts = [captions[i * len(captions) // columns] for i in range(columns)]
    pipe.set_scheduler("dpmpp")
    rows = [generate(pipe, prompts, list(range(columns)), 20, g, columns) for g in guidances]
    height, width = rows[0][0].shape[:2]
    sheet = Image.new("RGB", (columns * (width + 2), len(rows) * (height + 2)), "black")
    for r, images in enumerate(rows):
        for c, image in enumerate(images):
            sheet.paste(Image.fromarray(image), (c * (width + 2), r * (height + 2)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.Resampling.NEAREST).save(path)
    (path.with_suffix(".txt")).write_text(
        "rows: guidance "
        + ", ".join(map(str, guidances))
        + "; columns (seed = column index):\n"
        + "\n".join(prompts)
        + "\n"
    )
    return path


def parse_setting(text: str) -> tuple[str, int, float]:
    """'dpmpp:20:7.5' -> ("dpmpp", 20, 7.5)."""
    try:
        sampler, steps, guidance = text.split(":")
        return sampler, int(steps), float(guidance)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not sampler:steps:guidance, e.g. dpmpp:20:7.5") from None


def guidance_gap(rows: list[dict]) -> float | None:
    """Both-colours-right at guidance 7.5 minus at 1.0, with 20 DPM++ steps: how much guidance adds."""
    both = {r["guidance"]: r["both_colours"] for r in rows if (r["sampler"], r["steps"]) == ("dpmpp", 20)}
    return round(both[7.5] - both[1.0], 1) if {1.0, 7.5} <= both.keys() else None


def markdown(rows: list[dict]) -> str:
    by_model = len({r.get("model") for r in rows}) > 1
    lines = [
        ("| model " if by_model else "")
        + "| sampler | steps | guidance | images | background right | shape colour right | both colours right "
        "| shape kind right | s/image (batched) |",
        ("| --- " if by_model else "") + "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            (f"| {r['model']} " if by_model else "")
            + f"| {r['sampler']} | {r['steps']} | {r['guidance']} | {r['images']} | {r['background']}% "
            f"| {r['colour']}% | {r['both_colours']}% | {r['shape']}% | {r['seconds_per_image_batched']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from difframe import Framework

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", nargs="+", default=[None], help="model folder(s) (default: the shipped model); several compare them"
    )
    parser.add_argument(
        "--setting",
        type=parse_setting,
        action="append",
        help="sampler:steps:guidance to measure, repeatable (default: the six settings of the model card)",
    )
    parser.add_argument("--prompts", type=int, default=240, help="images per setting (at least 200 for the report)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--grid", type=Path, default=None, help="write an image grid (PNG) here")
    parser.add_argument("--time-only", action="store_true", help="only time one image (21 runs); no scoring")
    args = parser.parse_args(argv)
    framework, rows = Framework(), []
    if args.time_only:
        for model in args.model:
            pipe = framework.build("stable-diffusion", model=model, progress=False, prepacked_convolutions="auto")
            print(f"{model or 'difframe-shapes'}: {describe_timing(time_single_image(pipe))}")
        return
    accuracy = check_scorer()
    print(f"scorer on 500 drawn ground-truth images: {100 * accuracy:.1f}% read right")
    if accuracy < 0.98:
        raise SystemExit("the scorer reads fewer than 98% of ground-truth images right: its figures mean nothing")
    for model in args.model:
        pipe = framework.build("stable-diffusion", model=model, progress=False, prepacked_convolutions="auto")
        measured = evaluate(pipe, args.setting or DEFAULT_SETTINGS, args.prompts)
        rows += [{"model": Path(model).name if model else "difframe-shapes", **row} for row in measured]
        if len(args.model) > 1:
            print(f"{rows[-1]['model']}: guidance gap {guidance_gap(measured)}", flush=True)
    print(markdown(rows))
    if len(args.model) == 1:
        print(f"\nguidance gap (both colours right, 20 DPM++ steps, 7.5 minus 1.0): {guidance_gap(rows)} points")
        print(describe_timing(time_single_image(pipe)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.grid:
        print(f"grid: {grid(pipe, args.grid)}")


if __name__ == "__main__":
    main()

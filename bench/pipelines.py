"""Stable Diffusion pipelines end to end: ours against the reference (diffusers StableDiffusionPipeline).

The full SD 1.5 architecture with random weights, 256x256, 4 DPM++ 2M steps, guidance 7.5, on the CPU. Every run
is a fresh subprocess (same thread count for both) that loads the model folder and makes one image; it reports
the call's wall time, the process's peak resident memory, and (ours) the time spent inside the UNet, VAE and text
encoder calls, so the pipeline's own overhead is the rest.

Run: .venv/bin/python bench/pipelines.py [--repeat 3] [--threads N] [--model-dir DIR]
Prints a markdown table for docs/benchmarks.md ("## Pipelines (issue 5)").

With --batch N it instead compares, in ours only, a batch of N images (one prompt, seeds 0..N-1, --steps steps)
made reproducibly (the default: each image's guidance pair in a model call of its own, bit-identical to the image
made alone) and batched (``reproducible=False``: all N images in each model call), and prints images per second,
the reproducible mode's throughput cost, and each mode's overhead outside the model calls ("## Reproducible
batches (issue 12)").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT, NEGATIVE, SEED = "a watercolor painting of a fox in a forest", "blurry", 0
SETTINGS = dict(height=256, width=256, num_inference_steps=4, guidance_scale=7.5, output_type="np")


def make_model(folder: Path) -> None:
    """SD 1.5's UNet, VAE and text encoder with random weights, saved by the reference library."""
    import torch
    from difframe_clip import write_tokenizer_folder
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    text = CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, vocab_size=49408,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
        eos_token_id=49407, pad_token_id=49407,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512,
    )  # fmt: skip
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
        skip_prk_steps=True, steps_offset=1,
    )  # fmt: skip
    StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=CLIPTextModel(text).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(write_tokenizer_folder(folder.parent / "tokenizer")),
        unet=UNet2DConditionModel(sample_size=64, cross_attention_dim=768).eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)


def batch_worker(mode: str, model: str, threads: int, images: int, steps: int) -> None:
    import torch
    from difframe import Framework

    torch.set_num_threads(threads)
    pipe = Framework().build("stable-diffusion", model=model, scheduler="dpmpp", reproducible=mode == "reproducible")
    pipe.set_progress_bar_config(disable=True)
    settings = {**SETTINGS, "num_inference_steps": steps}
    pipe(PROMPT, negative_prompt=NEGATIVE, seed=SEED, **{**settings, "num_inference_steps": 1})  # warm-up
    pipe.timings = {}
    begin = time.perf_counter()
    pipe(PROMPT, negative_prompt=NEGATIVE, seed=SEED, num_images_per_prompt=images, **settings)
    call = time.perf_counter() - begin
    print(json.dumps({"call_s": call, "model_s": sum(pipe.timings.values())}))


def compare_batches(model: Path, threads: int, images: int, steps: int, repeat: int) -> None:
    runs: dict[str, list[dict]] = {"reproducible": [], "batched": []}
    for i in range(repeat):
        for mode in ("reproducible", "batched") if i % 2 == 0 else ("batched", "reproducible"):
            command = [sys.executable, __file__, "--batch-worker", mode, "--model-dir", str(model)]
            command += ["--threads", str(threads), "--batch", str(images), "--steps", str(steps)]
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            runs[mode].append(json.loads(result.stdout.strip().splitlines()[-1]))
    rate = {mode: images / statistics.median(r["call_s"] for r in runs[mode]) for mode in runs}
    print(
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, {threads} threads; "
        f"`{Path(sys.executable).name} bench/pipelines.py --batch {images} --steps {steps} --repeat {repeat} "
        f"--threads {threads}`; medians of {repeat} fresh processes each (after a one-step warm-up call).\n"
    )
    print("| mode | images/s | overhead outside model calls |")
    print("| --- | ---: | ---: |")
    for mode in runs:
        overhead = statistics.median((r["call_s"] - r["model_s"]) / r["call_s"] for r in runs[mode])
        print(f"| {mode} | {rate[mode]:.3f} | {overhead:.2%} |")
    cost = 1 - rate["reproducible"] / rate["batched"]
    print(f"\nReproducible mode's throughput cost against the batched run: {cost:.1%}.")


def worker(which: str, model: str, threads: int, image_out: str) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    begin = time.perf_counter()
    if which == "ours":
        from difframe import Framework

        pipe = Framework().build("stable-diffusion", model=model, scheduler="dpmpp")
    else:
        import diffusers

        pipe = diffusers.StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
        pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter()
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if which == "ours":
        pipe.timings = {}
        images = pipe(PROMPT, negative_prompt=NEGATIVE, seed=SEED, **SETTINGS).images
    else:
        generator = [torch.Generator().manual_seed(SEED)]
        images = pipe(PROMPT, negative_prompt=NEGATIVE, generator=generator, **SETTINGS).images
    done = time.perf_counter()
    np.save(image_out, images)
    report = {
        "load_s": loaded - begin,
        "call_s": done - loaded,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "load_rss_mb": rss_loaded,
        "model_s": sum(pipe.timings.values()) if which == "ours" else None,
    }
    print(json.dumps(report))


def run_once(which: str, model: Path, threads: int, image_out: Path) -> dict:
    command = [sys.executable, __file__, "--worker", which, "--model-dir", str(model), "--threads", str(threads)]
    command += ["--image-out", str(image_out)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "difframe-bench" / "sd15-random"))
    parser.add_argument("--worker", choices=("ours", "reference"))
    parser.add_argument("--image-out")
    parser.add_argument("--batch", type=int, help="compare reproducible and batched runs of this many images")
    parser.add_argument("--steps", type=int, default=2, help="with --batch: sampler steps")
    parser.add_argument("--batch-worker", choices=("reproducible", "batched"))
    args = parser.parse_args()
    model = Path(args.model_dir)
    if args.worker:
        worker(args.worker, str(model), args.threads, args.image_out)
        return
    if args.batch_worker:
        batch_worker(args.batch_worker, str(model), args.threads, args.batch, args.steps)
        return
    if not (model / "model_index.json").is_file():
        make_model(model)
    if args.batch:
        compare_batches(model, args.threads, args.batch, args.steps, args.repeat)
        return

    import numpy as np

    runs: dict[str, list[dict]] = {"ours": [], "reference": []}
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.repeat):
            for which in ("reference", "ours") if i % 2 == 0 else ("ours", "reference"):
                runs[which].append(run_once(which, model, args.threads, Path(scratch) / f"{which}.npy"))
        difference = float(np.abs(np.load(Path(scratch) / "ours.npy") - np.load(Path(scratch) / "reference.npy")).max())

    def median(which: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[which])

    overhead = statistics.median((r["call_s"] - r["model_s"]) / r["call_s"] for r in runs["ours"])
    print(
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, {args.threads} "
        f"threads, Python {platform.python_version()}; `{Path(sys.executable).name} bench/pipelines.py --repeat "
        f"{args.repeat} --threads {args.threads}`; medians of {args.repeat} fresh processes each. Max abs "
        f"difference between the two images: {difference:.1e}.\n"
    )
    print("| what | ours | reference | ratio (ours / reference) |")
    print("| --- | ---: | ---: | ---: |")
    for label, key, unit in (
        ("call: prompt to image (wall)", "call_s", "s"),
        ("load the model folder (wall)", "load_s", "s"),
        ("peak resident memory of the process", "peak_rss_mb", "MB"),
        ("peak resident memory after loading", "load_rss_mb", "MB"),
    ):
        ours, theirs = median("ours", key), median("reference", key)
        print(f"| {label} | {ours:.2f} {unit} | {theirs:.2f} {unit} | {ours / theirs:.3f}x |")
    print(f"\nOur pipeline's own overhead (call time outside the UNet, VAE and text encoder calls): {overhead:.2%}.")


if __name__ == "__main__":
    main()

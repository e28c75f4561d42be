"""GPU backends (issue 19): Stable Diffusion 1.5 architecture (random weights), float16, 512x512, 20 steps, guidance
7.5 (a UNet batch of 2): iterations per second against the reference library's pipeline with its defaults, with and
without each of our backends, in one process, the contenders alternating round by round.

Contenders: reference (diffusers StableDiffusionPipeline, its default attention processor), ours with
attention="auto" (the eager default), ours with attention="xformers" (if xformers is installed), ours with the
cuda-kernels backend (Triton GroupNorm+SiLU and GEGLU), both together, and with --compile torch.compile.
it/s = steps / seconds of the whole call (text encoding and VAE decoding included, on both sides).

Needs an NVIDIA GPU; on a machine without one it says so and exits 0 (bench/run.py runs every script).
Run: .venv/bin/python bench/gpu.py [--rounds 3] [--steps 20] [--compile] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

PROMPT = "a watercolor painting of a fox in a forest"


def contenders(model: Path, steps: int, with_compile: bool) -> dict[str, Callable[[], Any]]:
    import importlib.util

    import torch
    from difframe import Framework
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    call = dict(num_inference_steps=steps, guidance_scale=7.5, height=512, width=512, output_type="np")
    reference = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float16).to("cuda")
    reference.scheduler = DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    framework = Framework()
    options = dict(model=model, device="cuda", dtype="float16", scheduler="dpmpp", progress=False)
    builds: dict[str, dict[str, Any]] = {"difframe (attention auto)": {}}
    if importlib.util.find_spec("xformers") is not None:
        builds["difframe + xformers"] = {"attention": "xformers"}
    builds["difframe + cuda-kernels"] = {"backend": "cuda-kernels"}
    if "difframe + xformers" in builds:
        builds["difframe + xformers + cuda-kernels"] = {"attention": "xformers", "backend": "cuda-kernels"}
    if with_compile:
        builds["difframe + torch.compile"] = {"compile": True}
    runs: dict[str, Callable[[], Any]] = {
        "reference (defaults)": lambda: reference(PROMPT, generator=torch.Generator("cuda").manual_seed(0), **call)
    }
    for name, extra in builds.items():
        pipe = framework.build("stable-diffusion", **options, **extra)
        runs[name] = lambda pipe=pipe: pipe(PROMPT, seed=0, **call)
    return runs


def measure(runs: dict[str, Callable[[], Any]], rounds: int, steps: int) -> dict[str, list[float]]:
    import torch

    for run in runs.values():  # warm-up: kernels chosen, compiled graphs built
        run()
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            torch.cuda.synchronize()
            begin = time.perf_counter()
            run()
            torch.cuda.synchronize()
            speeds[name].append(steps / (time.perf_counter() - begin))
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--model-dir", type=Path, help="an SD 1.5-shaped model folder (default: random weights)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu.py needs an NVIDIA GPU and a CUDA build of torch; nothing measured on this machine.")
        return
    with tempfile.TemporaryDirectory(prefix="difframe-gpu-bench-") as folder:
        model = args.model_dir
        if model is None:
            from pipelines import make_model  # bench/pipelines.py: SD 1.5 with random weights, saved by diffusers

            model = Path(folder) / "sd15"
            make_model(model)
        speeds = measure(contenders(model, args.steps, args.compile), args.rounds, args.steps)
    base = statistics.median(speeds["reference (defaults)"])
    print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; fp16 512x512, {args.steps} steps\n")
    print("| contender | it/s (median) | spread | vs reference |\n| --- | ---: | ---: | ---: |")
    for name, values in speeds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {min(values):.2f}-{max(values):.2f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()

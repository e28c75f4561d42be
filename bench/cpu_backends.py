"""CPU backends (issue 19): ours in float32 and bfloat16, the OpenVINO backend in f32 and bf16, and the reference
library, with the same weights in one run, the contenders alternating round by round.

- ``unet``: the full Stable Diffusion 1.5 UNet with random weights, one forward at 256x256 (32x32 latents), batch 2
  (a guided image). End to end at 512x512 x 20 steps would take about ten minutes per contender on this 2-core
  machine, so the UNet call (95% of an image's time) is what is timed; an image costs about 2 x 20 of them.
  optimum-intel's OVStableDiffusionPipeline does not install here without replacing transformers and
  huggingface_hub, so OpenVINO is represented by the same UNet converted with OpenVINO's own converter (our backend).
- ``builtin``: the built-in model end to end (64x64, 20 DPM++ steps, guidance 7.5), including torch.compile.
- ``e2e`` (only with ``--only e2e``): issue 19's "combined with the accelerators": the full SD 1.5 architecture
  (random weights, bench/pipelines.py's folder) end to end, ``--size`` (512) and ``--steps`` (20), DPM++ 2M, guidance
  7.5, one image, one timed call per row after one 1-step warm-up call per pipeline: ours eager, OpenVINO as one
  graph and per layer, OpenVINO per layer with DeepCache and with the first-block cache, and ours eager with
  DeepCache; each row's speed-up over OpenVINO exact (one graph), its largest pixel difference to its exact image
  and the UNet calls run in full.
- ``--quality N``: the built-in model's scorer (``difframe_shapes_model.evaluate``) over N prompts per contender.

OpenVINO's startup is stated twice: the first (conversion and compilation) and the second (from the disk cache).
Run: flock /tmp/heavy.lock .venv/bin/python bench/cpu_backends.py [--rounds 3] [--threads 2] [--only unet|builtin]
[--quality 240] [--compile]; --only e2e [--size 512] [--steps 20] [--model-dir DIR];
--only quality --quality 240 measures no time (no lock needed)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def timed_rounds(contenders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """One warm-up call each, then ``rounds`` rounds in which every contender runs once, in turn."""
    for run in contenders.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            begin = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - begin)
    return times


def table(times: dict[str, list[float]], unit: str, baseline: str) -> str:
    base = statistics.median(times[baseline])
    rows = [f"| contender | {unit} (median) | spread | vs {baseline} |", "| --- | ---: | ---: | ---: |"]
    for name, values in times.items():
        median = statistics.median(values)
        rows.append(f"| {name} | {median:.3f} s | {min(values):.3f}-{max(values):.3f} s | {median / base:.2f}x time |")
    return "\n".join(rows)


def openvino_precisions() -> tuple[str, ...]:
    """bf16 only where the CPU computes it (OpenVINO's backend refuses it elsewhere)."""
    from difframe_openvino.backend import cpu_capabilities

    return ("f32", "bf16") if "BF16" in cpu_capabilities() else ("f32",)


def cpu_line() -> str:
    from difframe.backends import cpu_flags, cpu_has_fast_bfloat16

    simd = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    bf16 = "bfloat16 in hardware" if cpu_has_fast_bfloat16() else "no bfloat16 in hardware (torch emulates it: slow)"
    return (
        f"CPU: {os.cpu_count()} logical cores, {' '.join(simd)}: {bf16}; OpenVINO precisions: {openvino_precisions()}"
    )


def startup_lines(label: str, backend: Any) -> list[str]:
    return [
        f"- {label}: {s.label} {'from the disk cache' if s.from_cache else 'converted'} in {s.convert_s:.1f} s, "
        f"compiled in {s.compile_s:.1f} s"
        for s in backend.startup
    ]


# --- the SD 1.5 UNet -------------------------------------------------------------------------------------------------
def bench_unet(rounds: int, threads: int, cache: Path) -> str:
    import torch
    from difframe_openvino.backend import OpenVINOBackend
    from difframe_sd_unet.unet import UNet2DConditionModel
    from diffusers import UNet2DConditionModel as ReferenceUNet

    torch.manual_seed(0)
    reference = ReferenceUNet(sample_size=64, cross_attention_dim=768).eval()
    ours = UNet2DConditionModel.from_config(dict(reference.config)).eval()
    ours.load_state_dict(reference.state_dict())
    from difframe.backends import cpu_has_fast_bfloat16

    ours_bf16 = None  # where torch emulates bfloat16 it is slower than float32 (dtype="auto" never picks it there)
    if cpu_has_fast_bfloat16():
        ours_bf16 = UNet2DConditionModel.from_config(dict(reference.config)).eval()
        ours_bf16.load_state_dict(reference.state_dict())
        ours_bf16.to(torch.bfloat16)
    sample, context = torch.randn(2, 4, 32, 32), torch.randn(2, 77, 768)
    t = torch.tensor([500.0, 500.0])

    lines = []
    runs: dict[str, Callable[[], Any]] = {}
    options = {"cache_dir": cache, "components": ("unet",), "num_threads": threads}
    for precision in openvino_precisions():
        holder = SimpleNamespace(unet=ours)
        backend = OpenVINOBackend(precision=precision, **options)
        backend.apply(holder)
        lines += startup_lines(f"OpenVINO {precision}", backend)
        runs[f"OpenVINO {precision} (our backend)"] = ours.forward  # the compiled graph's forward
        del ours.forward  # back to eager for the next conversion and for our own contender
    if len(runs) == 1:  # no bf16 graph: room for a second start of f32, from the disk cache, replacing the first
        runs.clear()
        again = OpenVINOBackend(precision="f32", **options)
        again.apply(SimpleNamespace(unet=ours))
        lines += startup_lines("OpenVINO f32, second start", again)
        runs["OpenVINO f32 (our backend)"] = ours.forward
        del ours.forward
    # with bf16, bf16 reads the IR that f32 saved (a second start, compiled for another precision); a third compile
    # of the whole UNet would not fit beside the others in this machine's memory

    with torch.no_grad():
        contenders = {
            "difframe float32": lambda: ours(sample, t, context),
            "reference float32": lambda: reference(sample, t, context).sample,
            **({"difframe bfloat16": lambda: ours_bf16(sample.bfloat16(), t, context.bfloat16())} if ours_bf16 else {}),
            **{name: (lambda run=run: run(sample, t, context)) for name, run in runs.items()},
        }
        times = timed_rounds(contenders, rounds)
    return (
        f"SD 1.5 UNet (random weights), one forward at 256x256 (32x32 latents), batch 2, {threads} threads, "
        f"{rounds} alternating rounds\n\n" + table(times, "per call", "difframe float32") + "\n\n" + "\n".join(lines)
    )


# --- the built-in model end to end -----------------------------------------------------------------------------------
def builtin_pipelines(cache: Path, with_compile: bool) -> tuple[dict[str, Any], list[str]]:
    from difframe import Framework

    framework = Framework()
    pipes = {
        "difframe float32": framework.build("stable-diffusion", progress=False),
        "difframe bfloat16": framework.build("stable-diffusion", progress=False, dtype="bfloat16"),
    }
    lines = []
    for precision in openvino_precisions():
        options = {"precision": precision, "cache_dir": cache}
        pipe = framework.build("stable-diffusion", progress=False, backend="openvino", backend_options=options)
        pipes[f"OpenVINO {precision}"] = pipe
        lines += startup_lines(f"built-in model, OpenVINO {precision}", pipe.backend)
    again = framework.build("stable-diffusion", progress=False, backend="openvino", backend_options=options)
    lines += startup_lines(f"built-in model, OpenVINO {precision}, second start", again.backend)
    if with_compile:
        pipes["difframe float32 + torch.compile"] = framework.build("stable-diffusion", progress=False, compile=True)
    return pipes, lines


def bench_builtin(rounds: int, cache: Path, with_compile: bool) -> str:
    pipes, lines = builtin_pipelines(cache, with_compile)
    prompt = "a red circle on a blue background"
    call = dict(num_inference_steps=20, guidance_scale=7.5, seed=1)
    compiled = pipes.get("difframe float32 + torch.compile")
    if compiled is not None:
        begin = time.perf_counter()
        compiled(prompt, **call)
        lines.append(f"- torch.compile: the first image took {time.perf_counter() - begin:.1f} s (compiling)")
    times = timed_rounds({name: (lambda p=pipe: p(prompt, **call)) for name, pipe in pipes.items()}, rounds)
    return (
        f"Built-in model end to end: one 64x64 image, 20 DPM++ steps, guidance 7.5, {rounds} alternating rounds\n\n"
        + table(times, "per image", "difframe float32")
        + "\n\n"
        + "\n".join(lines)
    )


def bench_quality(count: int, cache: Path) -> str:
    import numpy as np
    from difframe_shapes_model.evaluate import evaluate

    pipes, _ = builtin_pipelines(cache, with_compile=False)
    rows = ["| contender | both colours right | max / mean pixel difference vs float32 |", "| --- | ---: | ---: |"]
    call = dict(num_inference_steps=20, guidance_scale=7.5, seed=list(range(8)), output_type="np")
    base = pipes["difframe float32"](["a red circle on a blue background"] * 8, **call).images
    for name, pipe in pipes.items():
        row = evaluate(pipe, [("dpmpp", 20, 7.5)], count)[0]
        images = pipe(["a red circle on a blue background"] * 8, **call).images
        difference = np.abs(images - base)
        score = next(v for k, v in row.items() if "both" in k)
        rows.append(f"| {name} | {score} % | {difference.max():.4f} / {difference.mean():.5f} |")
    return f"Built-in model scorer over {count} prompts, 20 DPM++ steps, guidance 7.5\n\n" + "\n".join(rows)


# --- SD 1.5 end to end, with the step caches ------------------------------------------------------------------------
E2E_PROMPT = "a watercolor painting of a fox in a forest"


def sd15_folder(model_dir: Path) -> Path:
    """The random SD 1.5 folder of bench/pipelines.py (made once in ``model_dir``; the other benchmarks share it)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pipelines import make_model

    folder = model_dir / "sd15-random"
    if not (folder / "model_index.json").exists():
        make_model(folder)
    return folder


def layer_startup_lines(label: str, backend: Any) -> list[str]:
    """The UNet's layer graphs summed (there are dozens), the other models one line each."""
    layers = [s for s in backend.startup if s.label.startswith("unet.")]
    lines = [
        f"- {label}: unet as {len(layers)} layer graphs, converted in {sum(s.convert_s for s in layers):.1f} s, "
        f"compiled in {sum(s.compile_s for s in layers):.1f} s"
    ]
    others = SimpleNamespace(startup=[s for s in backend.startup if not s.label.startswith("unet.")])
    return lines + startup_lines(label, others)


def bench_e2e(size: int, steps: int, threads: int, cache: Path, folder: Path) -> str:
    import gc

    import numpy as np
    import torch
    from difframe import Framework

    framework = Framework()
    call = dict(height=size, width=size, num_inference_steps=steps, guidance_scale=7.5, output_type="np")
    ov_options = {"precision": "f32", "cache_dir": cache, "num_threads": threads}
    deepcache, first_block = ("deepcache", {"interval": 3, "branch": 0}), ("first-block-cache", {"threshold": 0.2})
    rows: dict[str, tuple[float, Any, str, str]] = {}  # name -> (seconds, image, its exact row, full UNet calls)
    lines: list[str] = []

    def build(**backend_options: Any) -> Any:
        options = (
            {"backend": "openvino", "backend_options": {**ov_options, **backend_options}} if backend_options else {}
        )
        begin = time.perf_counter()
        pipe = framework.build("stable-diffusion", model=folder, scheduler="dpmpp", progress=False, **options)
        built = time.perf_counter() - begin
        with torch.inference_mode():
            pipe(E2E_PROMPT, seed=0, **{**call, "num_inference_steps": 1})  # warm-up: first-call work at this size
        return pipe, built

    def run(name: str, pipe: Any, exact: str, hook: tuple[str, dict] | None = None) -> None:
        added = pipe.add_hook(hook[0], **hook[1]) if hook else None
        try:
            with torch.inference_mode():
                begin = time.perf_counter()
                image = pipe(E2E_PROMPT, seed=0, **call).images
                seconds = time.perf_counter() - begin
        finally:
            if added is not None:
                pipe.remove_hook(added)
        full = f"{sum(added.steps_run)}/{len(added.steps_run)}" if added else f"{steps}/{steps}"
        rows[name] = (seconds, image, exact, full)

    eager, _ = build()  # one pipeline at a time: the SD 1.5 weights are loaded once per pipeline
    run("ours eager f32, exact", eager, "ours eager f32, exact")
    run("ours eager f32 + DeepCache (interval 3, branch 0)", eager, "ours eager f32, exact", deepcache)
    del eager
    gc.collect()
    whole, built = build(granularity="whole")
    lines += startup_lines(f"OpenVINO one graph (build {built:.1f} s)", whole.backend)
    run("OpenVINO f32, exact (one graph)", whole, "OpenVINO f32, exact (one graph)")
    del whole
    gc.collect()
    layered, built = build(granularity="layers")
    lines += layer_startup_lines(f"OpenVINO per layer (build {built:.1f} s)", layered.backend)
    exact = "OpenVINO f32, exact (one graph)"
    run("OpenVINO f32 per layer, exact", layered, exact)
    run("OpenVINO f32 per layer + DeepCache (interval 3, branch 0)", layered, exact, deepcache)
    run("OpenVINO f32 per layer + first-block cache (0.2)", layered, exact, first_block)
    del layered
    gc.collect()

    order = [
        "ours eager f32, exact",
        "OpenVINO f32, exact (one graph)",
        "OpenVINO f32 per layer, exact",
        "OpenVINO f32 per layer + DeepCache (interval 3, branch 0)",
        "OpenVINO f32 per layer + first-block cache (0.2)",
        "ours eager f32 + DeepCache (interval 3, branch 0)",
    ]
    base = rows["OpenVINO f32, exact (one graph)"][0]
    table_rows = [
        "| run | wall time | speed-up over OpenVINO exact | max abs pixel difference to its exact image "
        "| full UNet calls |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in order:
        seconds, image, exact_name, full = rows[name]
        difference = float(np.abs(image - rows[exact_name][1]).max())
        table_rows.append(f"| {name} | {seconds:.1f} s | {base / seconds:.2f}x | {difference:.4f} | {full} |")
    return (
        f"SD 1.5 architecture (random weights) end to end: one {size}x{size} image, {steps} DPM++ 2M steps, guidance "
        f"7.5, {threads} threads, one timed call per row after a 1-step warm-up per pipeline; OpenVINO rows compare "
        "to OpenVINO's exact image (one graph), eager rows to ours\n\n"
        + "\n".join(table_rows)
        + "\n\n"
        + "\n".join(lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("unet", "builtin", "quality", "e2e"))
    parser.add_argument("--size", type=int, default=512, help="image size of --only e2e")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of --only e2e")
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "difframe-bench")
    parser.add_argument("--quality", type=int, default=0, help="also score N prompts per contender (built-in model)")
    parser.add_argument("--compile", action="store_true", help="include torch.compile (built-in model)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="difframe-ov-bench-") as folder:
        cache = Path(folder)
        print(f"{cpu_line()}; torch {torch.__version__}\n")
        if args.only in (None, "builtin"):
            print(bench_builtin(args.rounds, cache, args.compile), "\n", flush=True)
        if args.quality and args.only in (None, "quality"):
            print(bench_quality(args.quality, cache), "\n", flush=True)
        if args.only in (None, "unet"):
            print(bench_unet(args.rounds, args.threads, cache), flush=True)
        if args.only == "e2e":
            folder = sd15_folder(args.model_dir)
            print(bench_e2e(args.size, args.steps, args.threads, cache, folder), flush=True)


if __name__ == "__main__":
    main()

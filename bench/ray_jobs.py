"""Job-file throughput: the built-in model's 64x64 images on the local engine against Ray workers, and what starting
Ray costs.

Each engine first runs a warm-up (one job per worker: workers start and build their pipeline), then a timed run of
--images jobs with the workers warm. Throughput is images per second of the timed run, written to disk with the
manifest, as a user's run does. Start-up: ray.init of a local instance, then worker start plus model build plus
the first image, then ray.shutdown. Every run's PNGs are compared byte for byte with the local engine's at 1 thread.
Also: the driver's cost of writing one image (atomic PNG write plus manifest line) at 64x64 and at 512x512.

Run: flock /tmp/heavy.lock .venv/bin/python bench/ray_jobs.py (others' work on a shared machine skews the figures,
so the load average is printed with them).
Prints a markdown table for docs/benchmarks.md ("## Job files on Ray").
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

SETTINGS = {"steps": 20, "width": 64, "height": 64, "sampler": "dpmpp"}
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]


def jobs(count: int, offset: int) -> list:
    from difframe_stable_diffusion.jobs import parse_jobs

    lines = [json.dumps({"prompt": PROMPTS[i % len(PROMPTS)], "seed": offset + i}) for i in range(count)]
    return parse_jobs(lines, defaults=SETTINGS)


def timed_run(engine, count: int, out: Path, batch_size: int = 1) -> tuple[float, dict[str, bytes]]:
    from difframe_stable_diffusion.jobs import run_jobs

    start = time.perf_counter()
    summary = run_jobs(jobs(count, 1000), engine, out, progress=False, batch_size=batch_size)
    seconds = time.perf_counter() - start
    assert summary.ok, summary.report()
    return count / seconds, {path.name: path.read_bytes() for path in summary.paths}


def compare(images: dict[str, bytes], reference: dict[str, bytes]) -> str:
    """How many PNGs equal the reference's byte for byte, and the largest pixel difference of the others."""
    import numpy as np
    from PIL import Image

    same = sum(images[name] == data for name, data in reference.items())
    largest = max(
        int(
            np.abs(
                np.asarray(Image.open(io.BytesIO(images[name])), dtype=int)
                - np.asarray(Image.open(io.BytesIO(data)), dtype=int)
            ).max()
        )
        for name, data in reference.items()
    )
    if same == len(reference):
        return f"all {same} byte-identical"
    return f"{same}/{len(reference)} byte-identical, the others within {largest}/255"


def write_cost(size: int, repeats: int = 20) -> float:
    """Milliseconds for the driver to write one image: PNG encoding happens on the worker; this is the write."""
    import numpy as np
    from difframe_stable_diffusion.jobs.outputs import OutputFolder
    from PIL import Image

    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)  # incompressible: worst case
    Image.fromarray(noise).save(buffer, format="PNG")
    data = buffer.getvalue()
    with tempfile.TemporaryDirectory() as folder:
        out = OutputFolder(folder)
        out.prepare()
        batch = jobs(repeats, 0)
        start = time.perf_counter()
        for job in batch:
            out.write(job, data)
        seconds = time.perf_counter() - start
        out.close()
        return seconds / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=16, help="jobs in each timed run")
    args = parser.parse_args()

    import ray
    from difframe_ray.engine import RayEngine
    from difframe_stable_diffusion.jobs.runner import LocalEngine

    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="ray-jobs-bench."))
    rates: dict[str, float] = {}

    single = LocalEngine(threads_per_worker=1)
    start = time.perf_counter()
    timed_run(single, 1, root / "local1-warmup")
    local_load = time.perf_counter() - start
    rates["local engine, 1 thread"], reference = timed_run(single, args.images, root / "local1")
    notes = {"local engine, 1 thread": "the reference for the byte comparisons"}

    double = LocalEngine(threads_per_worker=2)
    timed_run(double, 1, root / "local2-warmup")
    name = "local engine, 2 threads"
    rates[name], images = timed_run(double, args.images, root / "local2")
    notes[name] = compare(images, reference)
    name = "local engine, 2 threads, --batch-size 4"
    rates[name], images = timed_run(double, args.images, root / "local2-batched", batch_size=4)
    notes[name] = compare(images, reference)

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    ray_init = time.perf_counter() - start
    ready: dict[int, float] = {}
    for workers in (1, 2):
        engine = RayEngine(workers=workers, threads_per_worker=1)
        start = time.perf_counter()
        timed_run(engine, workers, root / f"ray{workers}-warmup")
        ready[workers] = time.perf_counter() - start
        name = f"Ray, {workers} worker(s) x 1 thread"
        rates[name], images = timed_run(engine, args.images, root / f"ray{workers}")
        notes[name] = compare(images, reference)
        engine.close()
    start = time.perf_counter()
    ray.shutdown()
    ray_shutdown = time.perf_counter() - start

    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end, OMP_WAIT_POLICY "
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; {args.images} images of 64x64, {SETTINGS['steps']} DPM++ 2M "
        "steps, built-in model\n"
    )
    baseline = rates["local engine, 2 threads"]
    print("| engine | images/s | / local 2 threads | PNGs against local 1 thread |\n|---|---:|---:|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.2f} | {rate / baseline:.2f} | {notes[name]} |")
    print("\n| start-up | seconds |\n|---|---:|")
    print(f"| local engine (1 thread): build the pipeline + first image | {local_load:.1f} |")
    print(f"| ray.init (start a local Ray instance) | {ray_init:.1f} |")
    for workers, seconds in ready.items():
        print(f"| Ray, {workers} worker(s): start workers + build the pipeline + first image each | {seconds:.1f} |")
    print(f"| ray.shutdown | {ray_shutdown:.1f} |")
    print("\n| driver: write one image (atomic PNG + manifest line) | ms |\n|---|---:|")
    for size in (64, 512):
        cost = statistics.median(write_cost(size) for _ in range(3))
        print(f"| {size}x{size} (incompressible pixels) | {cost:.2f} |")


if __name__ == "__main__":
    main()

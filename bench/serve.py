"""`difframe serve` under load: latency percentiles of many concurrent clients of the web UI's API, against the
same images made by direct calls (ours, and the reference library's) in the same run.

The built-in model (difframe-shapes), 64x64, DPM++ 2M, guidance 7.5, one image per request, each with its own
seed. Rows:
  - reference library, direct calls one after another (no server);
  - difframe, direct calls one after another (no server): what the server's worker does per job;
  - served, one client: each request waits for the previous one (HTTP, JSON, base64 PNG on top of the call);
  - served, N concurrent clients, without batching (--max-batch 1): all sent at once; the queue runs them one at a
    time, so latency grows with the position in the queue while throughput stays that of the direct calls;
  - served, N concurrent clients (the default --max-batch 16): waiting requests with equal settings run as one
    batch of up to 16 images.
Latency is per request (send to answer); throughput is images per second of wall time. Every row runs its calls
on a non-main thread, as the server's worker does. The server runs in this
process on 127.0.0.1 and a free port (loopback only).

Run: flock /tmp/heavy.lock .venv/bin/python bench/serve.py [--clients 50] [--steps 20] [--threads N]
Prints a markdown table for docs/benchmarks.md ("## Serving").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor

PROMPT = "a red circle on a blue background"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def row(name: str, latencies: list[float], wall: float) -> str:
    cells = [percentile(latencies, q) for q in (50, 90, 99)] + [max(latencies)]
    return f"| {name} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {len(latencies) / wall:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50, help="concurrent requests (default 50)")
    parser.add_argument("--sequential", type=int, default=10, help="requests of the one-at-a-time rows (default 10)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import diffusers
    import requests
    import torch
    from difframe import Framework
    from difframe_server.engine import Engine
    from difframe_server.settings import Limits, ServerSettings
    from difframe_server.state import ServerState
    from difframe_server.testing import serve_in_thread
    from difframe_shapes_model import WEIGHTS

    torch.set_num_threads(args.threads)
    framework = Framework()
    engine = Engine(framework, device="cpu", dtype="float32")
    queue = max(64, args.clients + 1)
    settings = ServerSettings(limits=Limits(max_queue=queue))
    built_in = ServerState.create(settings, framework=framework, engine=engine).options.model
    ours = engine.pipeline(built_in, "txt2img")  # the very pipeline the server's worker will run
    ours.set_scheduler("dpmpp_2m")
    load = diffusers.StableDiffusionPipeline.from_pretrained
    reference = load(WEIGHTS, safety_checker=None, torch_dtype=torch.float32)
    reference.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(reference.scheduler.config)
    reference.set_progress_bar_config(disable=True)
    common = dict(num_inference_steps=args.steps, guidance_scale=7.5, height=64, width=64)

    def timed(function, count: int) -> tuple[list[float], float]:
        """``count`` calls one after another, on a fresh thread as the server's worker runs them: on a loaded
        machine, the same call on Python's main thread was measured 10-50x slower (OpenMP's main team)."""

        def calls() -> tuple[list[float], float]:
            latencies, begin = [], time.perf_counter()
            for i in range(count):
                start = time.perf_counter()
                function(i)
                latencies.append(time.perf_counter() - start)
            return latencies, time.perf_counter() - begin

        with ThreadPoolExecutor(1) as thread:
            return thread.submit(calls).result()

    timed(lambda i: ours(PROMPT, seed=i, **common), 2)  # warm-up: first-call allocations
    timed(lambda i: reference(PROMPT, generator=torch.Generator().manual_seed(i), **common), 2)
    rows = [
        row(
            "reference library, direct",
            *timed(lambda i: reference(PROMPT, generator=torch.Generator().manual_seed(i), **common), args.sequential),
        ),
        row("difframe, direct", *timed(lambda i: ours(PROMPT, seed=i, **common), args.sequential)),
    ]

    payload = {"prompt": PROMPT, "steps": args.steps, "cfg_scale": 7.5, "width": 64, "height": 64}
    payload["sampler_name"] = "DPM++ 2M"

    def concurrent(url: str) -> tuple[list[float], float]:
        begin = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            latencies = list(pool.map(lambda seed: request(url, seed), range(args.clients)))
        return latencies, time.perf_counter() - begin

    def request(url: str, seed: int) -> float:
        start = time.perf_counter()
        response = requests.post(url + "/sdapi/v1/txt2img", json={**payload, "seed": seed}, timeout=3600)
        response.raise_for_status()
        assert len(response.json()["images"]) == 1
        return time.perf_counter() - start

    unbatched = ServerSettings(limits=Limits(max_queue=queue, max_batch=1))
    with serve_in_thread(unbatched, engine=engine, framework=framework) as server:
        rows.append(row("served, one client", *timed(lambda seed: request(server.url, seed), args.sequential)))
        rows.append(row(f"served, {args.clients} concurrent clients, no batching", *concurrent(server.url)))
    with serve_in_thread(settings, engine=engine, framework=framework) as server:
        rows.append(row(f"served, {args.clients} concurrent clients, batches of up to 16", *concurrent(server.url)))

    machine = platform.processor() or platform.machine()
    print(f"{machine}, {args.threads} threads, torch {torch.__version__}, 64x64, {args.steps} DPM++ 2M steps")
    print("latency in seconds\n", file=sys.stdout)
    print("| | p50 | p90 | p99 | max | images/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""`difframe generate --prompts jobs.jsonl [--engine local|ray] ...`: the command-line side of a job run.

Exit status: 0 when every job has its image, 1 when some failed or did not run (each named with its line),
2 for bad input found before any worker starts, 130 when interrupted (Ctrl-C; finished images are kept).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .outputs import OutputFolderError
from .runner import EngineError, run_jobs
from .spec import JobFileError, load_jobs

# the generate options a job run uses; any other one given with --prompts is refused, never ignored
USED = {
    "prompts", "engine", "address", "workers", "threads_per_worker", "gpus_per_worker", "batch_size", "out",
    "no_progress", "device", "memory_budget", "seed", "negative", "steps", "scheduler", "guidance",
    "guidance_rescale", "size", "clip_skip", "model", "dtype", "attention", "func", "generate_parser",
}  # fmt: skip


def add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(generate_parser=parser)
    group = parser.add_argument_group("job files (docs/ray.md)")
    group.add_argument(
        "--prompts",
        help="prompt file: one prompt per line, or one JSON object per line with its own settings (prompt, seed, "
        "steps, size, ...)",
    )
    group.add_argument("--engine", default="local", help="where the jobs run: local (default, this process) or ray")
    group.add_argument("--address", help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: start Ray here)")
    group.add_argument("--workers", type=int, help="Ray workers (default: the cluster's CPUs / threads per worker)")
    group.add_argument("--threads-per-worker", type=int, help="torch threads of each worker (Ray default 1)")
    group.add_argument("--gpus-per-worker", type=float, help="GPUs each Ray worker reserves (default 0)")
    group.add_argument(
        "--batch-size", type=int, default=1, help="jobs with equal settings per pipeline call (default 1: exact)"
    )


def _defaults(args: argparse.Namespace) -> dict[str, Any]:
    width, height = args.size if args.size else (None, None)
    return {
        "negative_prompt": args.negative,
        "steps": args.steps,
        "sampler": args.scheduler,
        "guidance": args.guidance,
        "guidance_rescale": args.guidance_rescale,
        "width": width,
        "height": height,
        "clip_skip": args.clip_skip,
        "model": args.model,
        "dtype": args.dtype,
        "attention": args.attention,
    }


def _unsupported(args: argparse.Namespace) -> list[str]:
    """Options given on the command line that a job run does not use."""
    defaults = vars(args.generate_parser.parse_known_args([])[0])
    return [
        "a prompt" if name == "prompt" else "--" + name.replace("_", "-")
        for name, value in vars(args).items()
        if name not in USED and name in defaults and value != defaults[name]
    ]


def run_job_file(args: argparse.Namespace) -> int:
    unsupported = _unsupported(args)
    if unsupported:
        print(
            f"error: --prompts runs a job file; {', '.join(unsupported)} cannot be used with it (put per-image "
            "settings on the job lines; see docs/ray.md)",
            file=sys.stderr,
        )
        return 2
    try:
        jobs = load_jobs(args.prompts, defaults=_defaults(args), seed=args.seed)
        summary = run_jobs(
            jobs,
            engine=args.engine,
            out=args.out,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            gpus_per_worker=args.gpus_per_worker,
            address=args.address,
            device=args.device,
            memory_budget=args.memory_budget,
        )
    except (JobFileError, OutputFolderError, EngineError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary.report(), file=sys.stderr if not summary.ok else sys.stdout)
    if summary.interrupted:
        return 130
    return 0 if summary.ok else 1

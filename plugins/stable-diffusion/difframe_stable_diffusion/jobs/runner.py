"""Running a list of jobs with an engine: skip what the output folder already holds, batch jobs with equal settings,
write each image as it arrives, show one progress bar over the whole run, and sum up what happened.

Engines: "local" (this process) and any installed under the entry point group ``difframe.engines`` (the
difframe-ray plugin installs "ray"). An engine gets the batches and a RunContext; it calls ``context.result`` for
each finished job, ``context.load_failed`` when a model does not build, and skips batches ``context.skip`` names.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from .outputs import OutputFolder
from .spec import Job, group_batches, make_jobs
from .worker import JobResult, JobWorker, ModelLoadFailed

ENGINE_GROUP = "difframe.engines"
INSTALL_HINTS = {"ray": "the Ray engine comes with the difframe-ray plugin: pip install difframe-ray"}


class EngineError(RuntimeError):
    """An engine that is not installed, or cannot start (say, an unreachable cluster)."""


class Engine(Protocol):
    name: str

    def run(self, batches: list[list[Job]], context: RunContext) -> None: ...


@dataclass
class RunSummary:
    """What a run did. ``paths[i]`` is job i's image (written now or by an earlier run), None if it has none."""

    out: Path
    jobs: list[Job]
    paths: list[Path | None]
    written: int = 0
    skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # job key -> error
    errors: list[str] = field(default_factory=list)  # about the run, not one job: a model, the cluster
    worker_deaths: int = 0
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures and not self.errors and not self.interrupted and all(self.paths)

    @property
    def not_run(self) -> list[Job]:
        return [job for job, path in zip(self.jobs, self.paths) if path is None and job.key not in self.failures]

    def report(self) -> str:
        """The lines printed at the end of a run: counts, then every failure with its line."""
        rate = f" ({self.written / self.seconds:.2f} images/s)" if self.written and self.seconds else ""
        lines = [
            f"{self.written} written, {self.skipped} already done, {len(self.failures)} failed, "
            f"{len(self.not_run)} not run, of {len(self.jobs)} jobs in {self.seconds:.1f} s{rate} -> {self.out}"
        ]
        if self.worker_deaths:
            lines.append(f"{self.worker_deaths} worker(s) died during the run; their jobs were run again")
        lines.extend(f"error: {message}" for message in self.errors)
        by_key = {job.key: job for job in self.jobs}
        lines.extend(f"failed: {by_key[key].label}: {error}" for key, error in self.failures.items())
        if self.interrupted:
            lines.append("interrupted: run the same command again to finish the remaining jobs")
        elif self.not_run:
            lines.append(f"not run: {', '.join(job.label for job in self.not_run[:20])}")
        return "\n".join(lines)


class RunContext:
    """What engines report to; writes each image as it arrives."""

    def __init__(
        self,
        folder: OutputFolder,
        summary: RunSummary,
        progress: Any,
        on_result: Callable[[Job, JobResult], None] | None,
    ) -> None:
        self.folder = folder
        self.summary = summary
        self.progress = progress
        self.on_result = on_result
        self.failed_pipelines: dict[tuple[Any, ...], str] = {}
        self._index = {job.key: i for i, job in enumerate(summary.jobs)}

    def result(self, job: Job, result: JobResult) -> None:
        i = self._index[job.key]
        if self.summary.paths[i] is not None:  # a retried job that already arrived: never written twice
            return
        if result.png is not None:
            self.summary.paths[i] = self.folder.write(job, result.png, result.worker, result.threads)
            self.summary.written += 1
            self.summary.failures.pop(job.key, None)
        else:
            self.summary.failures[job.key] = result.error or "failed"
        self.progress.update()
        if self.on_result is not None:
            self.on_result(job, result)

    def fail(self, jobs: Iterable[Job], error: str) -> None:
        for job in jobs:
            self.result(job, JobResult(job.key, error=error))

    def load_failed(self, error: ModelLoadFailed) -> None:
        """One error for the model; every job that needs it is reported as not run."""
        if error.pipeline_key in self.failed_pipelines:
            return
        self.failed_pipelines[error.pipeline_key] = error.message
        waiting = [j for j in self.summary.jobs if j.pipeline_key == error.pipeline_key]
        self.summary.errors.append(f"{error.message} ({len(waiting)} jobs need it; none was run)")

    def skip(self, batch: list[Job]) -> bool:
        return batch[0].pipeline_key in self.failed_pipelines

    def worker_died(self) -> None:
        self.summary.worker_deaths += 1


class LocalEngine:
    """One worker in this process with ``threads_per_worker`` torch threads (restored afterwards); it keeps its
    pipelines for the next run with the same engine object."""

    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        threads_per_worker: int | None = None,
        device: str | None = None,
        memory_budget: int | str | None = None,
        address: str | None = None,
        gpus_per_worker: float | None = None,
    ) -> None:
        if gpus_per_worker is not None:
            raise ValueError("--gpus-per-worker is for --engine ray; the local engine uses --device")
        if workers not in (None, 1):
            raise ValueError("the local engine runs one worker in this process; --workers is for --engine ray")
        if address is not None:
            raise ValueError("--address is for --engine ray (a Ray cluster); the local engine runs in this process")
        self.threads = threads_per_worker
        self.device = device
        self.memory_budget = memory_budget
        self._worker: JobWorker | None = None  # kept: a second run with this engine reuses its pipelines

    def run(self, batches: list[list[Job]], context: RunContext) -> None:
        import torch

        threads = torch.get_num_threads()
        if self._worker is None:
            self._worker = JobWorker(self.threads, self.device, self.memory_budget)
        elif self.threads is not None:
            torch.set_num_threads(self.threads)
        worker = self._worker
        try:
            for batch in batches:
                if context.skip(batch):
                    continue
                try:
                    results = worker.run(batch)
                except ModelLoadFailed as error:
                    context.load_failed(error)
                    continue
                for job, result in zip(batch, results):
                    context.result(job, result)
        finally:
            torch.set_num_threads(threads)


def get_engine(name: str | Engine, **options: Any) -> Engine:
    """An engine by name, with its options (None values are left to the engine's defaults)."""
    options = {k: v for k, v in options.items() if v is not None}
    if not isinstance(name, str):
        if options:
            raise ValueError(f"engine options {sorted(options)} go to the engine's constructor, not with an engine")
        return name
    if name == "local":
        return LocalEngine(**options)
    found = {point.name: point for point in entry_points(group=ENGINE_GROUP)}
    if name in found:
        try:
            engine_class = found[name].load()
        except ImportError as error:
            raise EngineError(f"the {name!r} engine did not import ({error}); {INSTALL_HINTS.get(name, '')}") from None
        return engine_class(**options)
    if name in INSTALL_HINTS:
        raise EngineError(INSTALL_HINTS[name])
    raise EngineError(f"unknown engine {name!r}; installed: {', '.join(['local', *sorted(found)])}")


def _as_jobs(jobs: Iterable[Job | Mapping[str, Any]]) -> list[Job]:
    items = list(jobs)
    if items and all(isinstance(job, Job) and job.line for job in items):
        return items  # from load_jobs / parse_jobs: already numbered and checked
    return make_jobs(items)


def run_jobs(
    jobs: Iterable[Job | Mapping[str, Any]],
    engine: str | Engine = "local",
    out: str | os.PathLike[str] = "outputs",
    *,
    batch_size: int = 1,
    progress: bool = True,
    on_result: Callable[[Job, JobResult], None] | None = None,
    **engine_options: Any,
) -> RunSummary:
    """Make every job's image into ``out``; jobs the folder already finished are skipped.

    ``batch_size`` > 1 lets a worker run up to that many jobs with equal settings in one call (faster; see
    docs/ray.md for how that changes pixels today). ``engine_options``: workers, threads_per_worker, address,
    device, memory_budget. A KeyboardInterrupt ends the run early; what finished is kept (``summary.interrupted``).
    """
    from tqdm.auto import tqdm

    jobs = _as_jobs(jobs)
    folder = OutputFolder(out)
    folder.prepare()
    try:
        engine = get_engine(engine, **engine_options)
        summary = RunSummary(out=folder.path, jobs=jobs, paths=[None] * len(jobs))
        todo = []
        for i, job in enumerate(jobs):
            if folder.is_finished(job):
                summary.paths[i] = folder.finished_file(job)
                summary.skipped += 1
            else:
                todo.append(job)
        started = time.perf_counter()
        with tqdm(total=len(jobs), initial=summary.skipped, unit="image", disable=not progress) as bar:
            context = RunContext(folder, summary, bar, on_result)
            try:
                if todo:
                    engine.run(group_batches(todo, batch_size), context)
            except KeyboardInterrupt:
                summary.interrupted = True
            except EngineError as error:
                if not (summary.written or summary.failures):
                    raise  # nothing ran: bad input, such as an unreachable cluster
                summary.errors.append(f"the run stopped: {error}")
        summary.seconds = time.perf_counter() - started
    finally:
        folder.close()
    return summary

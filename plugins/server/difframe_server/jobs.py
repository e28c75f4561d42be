"""The queue: one worker thread runs jobs one at a time on the loaded pipeline, so a pipeline is never used by two
requests at once whatever its own thread safety. Waiting jobs with the same batch key (same model and settings but
prompts and seeds) run together as one batch, since an image does not depend on the batch it is in. The queue is
bounded (full: QueueFull, answered 503 with Retry-After); a job can be interrupted (it stops after the step it is in)
or cancelled (its client went away: skipped if still waiting; if running, its batch stops after the current step
once no job in it has a client left)."""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("difframe_server")


class QueueFull(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(Exception):
    pass


@dataclass
class Progress:
    """Where a running job is: images [start, stop) of ``total`` are at ``step`` of ``steps``."""

    step: int = 0
    steps: int = 0
    start: int = 0
    stop: int = 0
    total: int = 1

    @property
    def fraction(self) -> float:
        if not self.steps:
            return 0.0
        done = self.start + (self.stop - self.start) * self.step / self.steps
        return min(done / max(self.total, 1), 1.0)


@dataclass
class Job:
    """One request's work. ``work(jobs)`` runs on the worker thread for this job and the jobs batched with it (all
    with this job's ``batch_key``), and returns one result per job."""

    kind: str
    work: Callable[[list[Job]], list[Any]]
    batch_key: Hashable | None = None  # None: never batched
    images: int = 1
    payload: Any = None  # what ``work`` needs of each job (the generation settings)
    id: int = 0
    future: Future = field(default_factory=Future)
    progress: Progress = field(default_factory=Progress)
    state: str = "queued"  # queued, running, done, interrupted, cancelled, failed
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    steps_run: int = 0  # denoising steps completed (over all chunks)
    batch: int = 0  # how many jobs ran together in its batch
    stop_requested_at_step: int | None = None
    preview: Any = None  # PIL image of the latest latents, made on the worker when a client asked for one
    preview_wanted: bool = False
    preview_at: float = float("-inf")  # when the preview was made
    _stop: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False

    def interrupt(self) -> None:
        """Stop after the current step; what is done so far is returned."""
        if not self._stop.is_set():
            self.stop_requested_at_step = self.steps_run
            self._stop.set()

    def cancel(self) -> None:
        """Nobody waits for the result any more: skip the job, or stop it after the current step."""
        self.cancelled = True
        self.future.cancel()  # succeeds only while the job still waits
        self.interrupt()

    @property
    def should_stop(self) -> bool:
        return self._stop.is_set()

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "steps_run": self.steps_run,
            "batch": self.batch,
            "stop_requested_at_step": self.stop_requested_at_step,
            "seconds": None if self.started is None or self.finished is None else self.finished - self.started,
        }


class JobQueue:
    def __init__(self, max_queue: int, max_batch_images: int = 1, history: int = 64) -> None:
        self.max_queue = max_queue
        self.max_batch_images = max_batch_images
        self._lock = threading.Lock()
        self._waiting: collections.deque[Job] = collections.deque()
        self._wake = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self.running: list[Job] = []  # the batch being run; its first job reports progress
        self.history: collections.deque[Job] = collections.deque(maxlen=history)
        self.counts: collections.Counter[str] = collections.Counter()
        self._durations: collections.deque[float] = collections.deque(maxlen=20)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="difframe-worker", daemon=True)
        self._thread.start()

    # --- submitting ---------------------------------------------------------------------------------------------
    def submit(
        self,
        kind: str,
        work: Callable[[list[Job]], list[Any]],
        *,
        batch_key: Hashable | None = None,
        images: int = 1,
        payload: Any = None,
    ) -> Job:
        with self._lock:
            if self._closed:
                raise ShuttingDown("the server is shutting down")
            pending = len(self._waiting) + len(self.running)
            if pending >= self.max_queue:
                self.counts["rejected"] += 1
                raise QueueFull(
                    f"the queue is full ({pending} jobs waiting or running, at most {self.max_queue}); retry later",
                    self._retry_after(pending),
                )
            job = Job(kind=kind, work=work, batch_key=batch_key, images=images, payload=payload, id=next(self._ids))
            self._waiting.append(job)
            self._wake.notify()
        return job

    def _retry_after(self, pending: int) -> int:
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        return max(1, math.ceil(mean * pending))

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    @property
    def current(self) -> Job | None:
        running = self.running
        return running[0] if running else None

    def interrupt_current(self) -> None:
        """Stop the running batch after its current step."""
        for job in list(self.running):
            job.interrupt()

    # --- running ------------------------------------------------------------------------------------------------
    def _next(self) -> list[Job] | None:
        """The first waiting job and, if it has a batch key, the waiting jobs that share it (in order, up to
        ``max_batch_images`` images)."""
        with self._lock:
            while not self._waiting and not self._closed:
                self._wake.wait()
            if not self._waiting:
                return None
            first = self._waiting.popleft()
            batch, images = [first], first.images
            if first.batch_key is not None:
                for job in list(self._waiting):
                    if job.batch_key == first.batch_key and images + job.images <= self.max_batch_images:
                        self._waiting.remove(job)
                        batch.append(job)
                        images += job.images
            self.running = batch
            return batch

    def _run(self) -> None:
        while (batch := self._next()) is not None:
            try:
                self._execute(batch)
            finally:
                with self._lock:
                    self.running = []
                for job in batch:
                    self.history.append(job)
                    self.counts[job.state] += 1

    def _execute(self, batch: list[Job]) -> None:
        live = []
        for job in batch:
            if job.cancelled or not job.future.set_running_or_notify_cancel():
                job.state = "cancelled"
            else:
                job.state = "running"
                job.started = time.monotonic()
                live.append(job)
        if not live:
            return
        with self._lock:
            self.running = live
        for job in live:
            job.batch = len(live)
        try:
            results = live[0].work(live)
        except BaseException as error:  # reported to the waiting requests; the worker keeps serving
            for job in live:
                job.state = "failed"
                job.future.set_exception(error)
        else:
            for job, result in zip(live, results):
                job.state = "cancelled" if job.cancelled else "interrupted" if job.should_stop else "done"
                job.future.set_result(result)
        finally:
            finished = time.monotonic()
            for job in live:
                job.finished = finished
            self._durations.append((finished - live[0].started) / len(live))

    # --- stopping -----------------------------------------------------------------------------------------------
    def shutdown(self, wait: float | None = None) -> None:
        """Refuse new jobs, fail the waiting ones, interrupt the running one (it stops after its current step)."""
        with self._lock:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._wake.notify_all()
        for job in waiting:
            job.state = "cancelled"
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ShuttingDown("the server is shutting down"))
        self.interrupt_current()
        if wait is not None:
            self._thread.join(wait)

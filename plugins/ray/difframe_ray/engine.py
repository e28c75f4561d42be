"""The "ray" engine: job batches spread over Ray actors, one JobWorker each, that load their pipeline once.

The driver keeps one batch in flight per worker and writes every image itself as it arrives, so the output folder
only has to exist where the driver runs. A worker whose process dies is replaced and its batch is run again (up
to ``max_attempts`` times); a job that raises fails alone; a model that does not build is one error.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from difframe_stable_diffusion.jobs.runner import EngineError, RunContext
from difframe_stable_diffusion.jobs.spec import Job
from difframe_stable_diffusion.jobs.worker import JobWorker, ModelLoadFailed

GCS_PORT, CLIENT_PORT = 6379, 10001
CHECKS = (
    "check that `ray start --head` runs there (`ray status` on that machine), that the port is the head's GCS port "
    f"({GCS_PORT} by default; ray:// addresses use the client server port, {CLIENT_PORT}), that no firewall blocks "
    "it, and that this machine's Ray and Python versions match the cluster's"
)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with what to check, when nothing answers at a cluster address (ray.init would wait minutes)."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    default = CLIENT_PORT if parts.scheme == "ray" else GCS_PORT
    try:
        host, port = parts.hostname, parts.port or default
    except ValueError:
        raise EngineError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT") from None
    if not host:
        raise EngineError(f"Ray address {address!r} has no host: use auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise EngineError(f"cannot reach the Ray cluster at {host}:{port} ({reason}): {CHECKS}") from None


class RayEngine:
    """``address``: None (and no RAY_ADDRESS) starts a Ray instance on this machine (loopback only); "auto" joins
    the one `ray start` made here; HOST:PORT or ray://HOST:PORT joins a cluster. ``workers`` defaults to the
    cluster's CPUs divided by ``threads_per_worker`` (default 1). ``gpus_per_worker`` reserves GPUs for each
    worker."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        threads_per_worker: int | None = None,
        device: str | None = None,
        memory_budget: int | str | None = None,
        gpus_per_worker: float = 0.0,
        max_attempts: int = 3,
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise EngineError(
                "the Ray engine needs ray: pip install difframe-ray (or pip install 'ray>=2.9')"
            ) from None
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        if threads_per_worker is not None and threads_per_worker < 1:
            raise ValueError(f"--threads-per-worker must be at least 1, got {threads_per_worker}")
        self.address = address or os.environ.get("RAY_ADDRESS") or None  # as ray.init reads it
        self.workers = workers
        self.threads = threads_per_worker or 1
        self.device = device
        self.memory_budget = memory_budget
        self.gpus = gpus_per_worker
        self.max_attempts = max_attempts
        self.worker_pids: dict[int, int] = {}  # worker slot -> process id of its current actor
        self._actors: dict[int, Any] = {}

    # --- connecting ---------------------------------------------------------------------------------------------
    def _connect(self) -> bool:
        """Join or start Ray; True when this run started it (and so shuts it down)."""
        import ray

        if ray.is_initialized():
            return False
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
        if self.address is None:
            options["_node_ip_address"] = "127.0.0.1"
        elif self.address != "auto":
            check_reachable(self.address)
        try:
            ray.init(address=self.address, **options)
        except ConnectionError as error:
            raise EngineError(f"could not join the Ray cluster at {self.address}: {error}; {CHECKS}") from None
        return True

    def _worker_count(self) -> int:
        import ray

        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 0)), resources.get("GPU", 0.0)
        count = self.workers
        if count is None:
            fit = cpus // self.threads
            count = max(1, min(fit, int(gpus // self.gpus)) if self.gpus else fit)
        if count * self.threads > cpus:
            raise EngineError(
                f"{count} workers x {self.threads} threads need {count * self.threads} CPUs; the Ray cluster has "
                f"{cpus}: use fewer --workers or --threads-per-worker, or add nodes"
            )
        if count * self.gpus > gpus:
            raise EngineError(
                f"{count} workers x {self.gpus:g} GPUs need {count * self.gpus:g} GPUs; the Ray cluster has "
                f"{gpus:g}: use fewer --workers or --gpus-per-worker, or add nodes with GPUs"
            )
        return count

    def _start(self, slot: int) -> Any:
        import ray

        actor_class = ray.remote(JobWorker).options(
            num_cpus=self.threads, num_gpus=self.gpus, max_restarts=0, max_task_retries=0
        )
        return actor_class.remote(self.threads, self.device, self.memory_budget)

    def _await_pids(self, actors: dict[int, Any]) -> None:
        import ray
        from ray.exceptions import RayActorError

        try:
            pids = ray.get([actor.pid.remote() for actor in actors.values()])
        except RayActorError as error:
            raise EngineError(
                f"Ray workers did not start: {error}. Every node needs difframe and its plugins installed, in the "
                "same versions as here (or a Ray runtime_env that installs them)"
            ) from None
        self.worker_pids.update(zip(actors, pids))

    # --- running ------------------------------------------------------------------------------------------------
    def run(self, batches: list[list[Job]], context: RunContext) -> None:
        """Workers are started on first use and kept for the next run with this engine (their pipelines stay
        loaded) until ``close()``, an error or Ctrl-C, or the end of a Ray instance this run started."""
        import ray

        started = self._connect()
        try:
            if not self._actors:
                count = min(self._worker_count(), len(batches))
                self._actors = {slot: self._start(slot) for slot in range(count)}
                self._await_pids(self._actors)
            self._preload(self._actors, batches[0][0].pipeline_key, context)
            self._dispatch(self._actors, batches, context)
        except BaseException:
            self.close()
            raise
        finally:
            if started:
                self.close()
                ray.shutdown()

    def close(self) -> None:
        """Stop this engine's workers."""
        import ray

        for actor in self._actors.values():
            ray.kill(actor)
        self._actors.clear()
        self.worker_pids.clear()

    def _preload(self, actors: dict[int, Any], pipeline_key: tuple[Any, ...], context: RunContext) -> None:
        """The first model on every worker before any job runs: a model that does not load is one error, early."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            ray.get([actor.load.remote(pipeline_key) for actor in actors.values()])
        except RayActorError:
            pass  # a worker died: the dispatch replaces it
        except RayTaskError as error:
            if not isinstance(error.cause, ModelLoadFailed):
                raise
            context.load_failed(error.cause)

    def _dispatch(self, actors: dict[int, Any], batches: list[list[Job]], context: RunContext) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        queue: deque[tuple[list[Job], int]] = deque((batch, 1) for batch in batches)
        running: dict[Any, tuple[int, list[Job], int]] = {}  # result ref -> (slot, batch, attempt)
        deaths = 0

        def submit(slot: int) -> None:
            while queue:
                batch, attempt = queue.popleft()
                if not context.skip(batch):
                    running[actors[slot].run.remote(batch)] = (slot, batch, attempt)
                    return

        for slot in actors:
            submit(slot)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                slot, batch, attempt = running.pop(ref)
                try:
                    results = ray.get(ref)
                except RayActorError as error:
                    deaths += 1
                    context.worker_died()
                    if attempt >= self.max_attempts:
                        last = str(error).strip().splitlines()[0]
                        context.fail(batch, f"its worker died {attempt} times running it (last: {last})")
                    else:
                        queue.appendleft((batch, attempt + 1))
                    if deaths > 2 * len(actors) + self.max_attempts:
                        raise EngineError(
                            f"Ray workers keep dying ({deaths} so far): see the worker logs "
                            "(/tmp/ray/session_latest/logs on each node); out of memory is the usual cause"
                        ) from None
                    ray.kill(actors[slot])
                    actors[slot] = self._start(slot)
                    self._await_pids({slot: actors[slot]})
                except RayTaskError as error:
                    if isinstance(error.cause, ModelLoadFailed):
                        context.load_failed(error.cause)
                    else:
                        context.fail(batch, f"{type(error.cause).__name__}: {error.cause}")
                else:
                    for job, result in zip(batch, results):
                        context.result(job, result)
                submit(slot)

"""The Ray engine against the local engine, image by image, on a Ray instance these tests start on loopback
(2 CPUs, no dashboard): identical PNG bytes, a job that raises named by its line, a worker killed mid-run, and
Ctrl-C of the driver. The built-in model at 64x64 with 2 steps keeps it to about a minute of work."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
import ray
from difframe_ray.engine import RayEngine, check_reachable
from difframe_stable_diffusion.jobs import parse_jobs, run_jobs
from difframe_stable_diffusion.jobs.outputs import MANIFEST
from difframe_stable_diffusion.jobs.runner import EngineError, LocalEngine

FAST = {"steps": 2, "width": 64, "height": 64}
PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a red square"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_jobs(count: int = len(PROMPTS), **extra: dict) -> list:
    rows = [{"prompt": PROMPTS[i], "seed": 100 + i, **extra.get(str(i), {})} for i in range(count)]
    if count > 1:
        rows[1]["sampler"] = "euler_a"  # two groups of settings
    return parse_jobs([json.dumps(row) for row in rows], defaults=FAST)


def manifest_keys(out) -> list[str]:
    return [json.loads(line)["key"] for line in (out / MANIFEST).read_text().splitlines()]


# --- before Ray runs: addresses ----------------------------------------------------------------------------------
def test_unreachable_address_says_what_to_check(tmp_path):
    assert not ray.is_initialized()
    port = free_port()
    with pytest.raises(EngineError, match=rf"cannot reach the Ray cluster at 127.0.0.1:{port} .*ray start --head"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(EngineError, match="client server port, 10001"):
        check_reachable(f"ray://127.0.0.1:{port}")
    summary_out = tmp_path / "out"
    with pytest.raises(EngineError, match="could not join the Ray cluster at auto"):  # no `ray start` here
        run_jobs(make_jobs(1), RayEngine(address="auto"), summary_out, progress=False)
    assert not ray.is_initialized()


# --- on a local Ray instance ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_engine(local_ray):
    """Two workers of one thread, kept across the tests (their pipelines stay loaded) until the last one."""
    engine = RayEngine(workers=2, threads_per_worker=1)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def local_engine():
    return LocalEngine(threads_per_worker=1)  # one thread, as each Ray worker has


@pytest.fixture(scope="module")
def local_images(local_engine, tmp_path_factory):
    """The reference: every job on the local engine."""
    out = tmp_path_factory.mktemp("local")
    summary = run_jobs(make_jobs(), local_engine, out, progress=False)
    assert summary.ok
    return {path.name: path.read_bytes() for path in summary.paths}


def test_same_images_as_the_local_engine_and_a_failing_line(ray_engine, local_images, tmp_path):
    jobs = make_jobs(**{"2": {"width": 40}})  # line 3: not a multiple of the model's 16
    summary = run_jobs(jobs, ray_engine, tmp_path, progress=False)
    assert not summary.ok and summary.written == 4
    assert "failed: line 3: ValueError: height and width must be multiples of 16" in summary.report()
    written = {path.name: path.read_bytes() for path in summary.paths if path}
    assert written == {name: data for name, data in local_images.items() if name != "00003-102.png"}
    workers = {json.loads(line)["worker"] for line in (tmp_path / MANIFEST).read_text().splitlines()}
    assert len(workers) == 2  # both workers made images


def test_a_killed_worker_loses_nothing(ray_engine, local_images, tmp_path):
    engine = ray_engine
    killed = []

    def kill_the_busy_worker(job, result):
        if not killed:  # the worker that just finished is idle; the other one is mid-job
            busy = next(pid for pid in engine.worker_pids.values() if not result.worker.endswith(f":{pid}"))
            os.kill(busy, signal.SIGKILL)
            killed.append(busy)

    summary = run_jobs(make_jobs(), engine, tmp_path, progress=False, on_result=kill_the_busy_worker)
    assert summary.ok, summary.report()
    assert summary.worker_deaths == 1 and killed[0] not in engine.worker_pids.values()  # replaced
    assert {path.name: path.read_bytes() for path in summary.paths} == local_images
    assert sorted(manifest_keys(tmp_path)) == sorted(job.key for job in make_jobs())  # each once


def test_ctrl_c_keeps_finished_images_and_resumes(ray_engine, local_engine, local_images, tmp_path):
    def interrupt(job, result):
        raise KeyboardInterrupt

    stopped = run_jobs(make_jobs(), ray_engine, tmp_path, progress=False, on_result=interrupt)
    assert stopped.interrupted and stopped.written == 1
    assert not ray_engine.worker_pids  # its workers were stopped
    # the rest on the local engine: the same images, each job once
    resumed = run_jobs(make_jobs(), local_engine, tmp_path, progress=False)
    assert resumed.ok and (resumed.skipped, resumed.written) == (1, 4)
    assert {path.name: path.read_bytes() for path in resumed.paths} == local_images
    assert sorted(manifest_keys(tmp_path)) == sorted(job.key for job in make_jobs())


def test_too_many_workers_for_the_cluster(local_ray, tmp_path):
    with pytest.raises(EngineError, match="3 workers x 1 threads need 3 CPUs; the Ray cluster has 2"):
        run_jobs(make_jobs(1), RayEngine(workers=3), tmp_path, progress=False)
    with pytest.raises(EngineError, match="1 workers x 1 GPUs need 1 GPUs; the Ray cluster has 0"):
        run_jobs(make_jobs(1), RayEngine(gpus_per_worker=1), tmp_path, progress=False)

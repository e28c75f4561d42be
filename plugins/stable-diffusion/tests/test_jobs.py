"""Job files on the local engine: validation with line numbers, the manifest (resume, half-done jobs, no
duplicates), atomic outputs, failures named by line, one error for a model that does not load. The built-in model
at 64x64 with 2 steps keeps it fast; one engine (and so one pipeline) is shared by the module."""

from __future__ import annotations

import json

import pytest
from difframe_stable_diffusion.jobs import JobFileError, parse_jobs, run_jobs
from difframe_stable_diffusion.jobs import runner as runner_module
from difframe_stable_diffusion.jobs.outputs import MANIFEST, OutputFolder, OutputFolderError
from difframe_stable_diffusion.jobs.runner import EngineError, LocalEngine, get_engine
from difframe_stable_diffusion.jobs.spec import group_batches
from PIL import Image

FAST = {"steps": 2, "width": 64, "height": 64}


def lines(*jobs: dict) -> list[str]:
    return [json.dumps(job) for job in jobs]


@pytest.fixture(scope="module")
def engine():
    return LocalEngine(threads_per_worker=1)


def manifest_keys(out) -> list[str]:
    return [json.loads(line)["key"] for line in (out / MANIFEST).read_text().splitlines()]


# --- the job file --------------------------------------------------------------------------------------------------
def test_every_bad_line_is_named_with_what_is_wrong():
    text = [
        '{"prompt": "a red circle", "seed": 1}',
        "{'prompt': 'single quotes'}",
        '{"prompt": "a fox", "seed": 2, "stepz": 3}',
        '{"prompt": "a fox", "seed": 3, "size": "64x60"}',
        "",
        '{"prompt": "no seed"}',
        '["a list"]',
        '{"prompt": "a red circle", "seed": 1}',
    ]
    with pytest.raises(JobFileError) as caught:
        parse_jobs(text, source="jobs.jsonl")
    problems = caught.value.problems
    assert problems[0].startswith("jobs.jsonl line 2: not JSON")
    assert problems[1] == "jobs.jsonl line 3: unknown option 'stepz'; did you mean 'steps'?"
    assert problems[2].startswith("jobs.jsonl line 4: height:") and "multiple of 8" in problems[2]
    assert problems[3].startswith("jobs.jsonl line 6: no seed") and "--seed" in problems[3]
    assert problems[4] == "jobs.jsonl line 7: a JSON object is expected, got list"
    assert problems[5].startswith("jobs.jsonl line 8: the same job as line 1")
    assert len(problems) == 6


def test_defaults_aliases_and_base_seed():
    jobs = parse_jobs(
        lines({"prompt": "a"}, {"prompt": "b", "seed": 99, "scheduler": "euler", "size": 96}, {"prompt": "c"}),
        defaults={"steps": 3, "sampler": "ddim", "negative_prompt": "blurry", "model": None},
        seed=10,
    )
    assert [(j.line, j.seed, j.sampler, j.steps) for j in jobs] == [
        (1, 10, "ddim", 3),
        (2, 99, "euler", 3),
        (3, 12, "ddim", 3),
    ]
    assert (jobs[1].width, jobs[1].height, jobs[0].negative_prompt) == (96, 96, "blurry")
    assert [job.file_name() for job in jobs] == ["00001-10.png", "00002-99.png", "00003-12.png"]
    # jobs with equal settings share batches, in file order
    assert [[j.line for j in batch] for batch in group_batches(jobs, 8)] == [[1, 3], [2]]
    assert [[j.line for j in batch] for batch in group_batches(jobs, 1)] == [[1], [3], [2]]


def test_a_missing_model_folder_is_one_problem(tmp_path):
    missing = str(tmp_path / "no-such-model")
    rows = lines(
        {"prompt": "a", "seed": 1}, {"prompt": "b", "seed": 2, "model": "org/hub-id"}, {"prompt": "c", "seed": 3}
    )
    with pytest.raises(JobFileError) as caught:
        parse_jobs(rows, source="jobs.jsonl", defaults={"model": missing})
    assert caught.value.problems == [f"jobs.jsonl: model folder {missing} does not exist (lines 1, 3)"]


def test_output_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputFolderError, match="is not writable"):
        run_jobs([{"prompt": "a", "seed": 1}], out=blocker / "out", progress=False)


def test_one_run_per_output_folder(tmp_path):
    first = OutputFolder(tmp_path)
    first.prepare()
    with pytest.raises(OutputFolderError, match="another run is writing to"):
        run_jobs([{"prompt": "a", "seed": 1}], out=tmp_path, progress=False)
    first.close()
    second = OutputFolder(tmp_path)
    second.prepare()  # free again
    second.close()


def test_unknown_engine_and_missing_plugin(monkeypatch):
    monkeypatch.setattr(runner_module, "entry_points", lambda group: [])
    with pytest.raises(EngineError, match="pip install difframe-ray"):
        get_engine("ray")
    with pytest.raises(EngineError, match="unknown engine 'dask'; installed: local"):
        get_engine("dask")
    with pytest.raises(ValueError, match="--workers is for --engine ray"):
        get_engine("local", workers=2)


# --- running -------------------------------------------------------------------------------------------------------
def test_run_resume_and_a_failing_job(engine, tmp_path):
    jobs = parse_jobs(
        lines(
            {"prompt": "a red circle", "seed": 1},
            {"prompt": "a blue square", "negative_prompt": "blurry", "seed": 2},
            {"prompt": "a green triangle", "seed": 3, "width": 40},  # not a multiple of the model's 16
            {"prompt": "a yellow star", "seed": 4, "sampler": "euler_a"},
        ),
        defaults=FAST,
    )
    out = tmp_path / "out"
    first = run_jobs(jobs, engine, out, progress=False)
    assert not first.ok and first.written == 3
    [failure] = first.failures.values()
    assert failure.startswith("ValueError: height and width must be multiples of 16")
    assert "failed: line 3: ValueError" in first.report()
    assert [p.name if p else None for p in first.paths] == ["00001-1.png", "00002-2.png", None, "00004-4.png"]
    star = Image.open(first.paths[3])
    assert star.text["parameters"].startswith("a yellow star\nSteps: 2, Sampler: Euler a")
    assert "Seed: 4, Size: 64x64" in star.text["parameters"]
    original = {p.name: p.read_bytes() for p in first.paths if p}

    # half-done: a PNG whose manifest line never came, a cut-short manifest line, a leftover temporary file
    manifest = (out / MANIFEST).read_text().splitlines()
    (out / MANIFEST).write_text("\n".join(manifest[:1]) + "\n" + manifest[2][:30])
    (out / "00002-2.png").write_bytes(b"\x89PNG truncated")
    (out / ".00004-4.png.x1y2.tmp").write_bytes(b"partial")
    again = run_jobs(jobs, engine, out, progress=False)
    assert (again.skipped, again.written) == (1, 2)  # line 1 skipped; lines 2 and 4 made again; line 3 fails again
    assert {p.name: p.read_bytes() for p in again.paths if p} == original  # the same bytes as the first time
    assert not list(out.glob(".*.tmp"))
    keys = manifest_keys(out)
    assert sorted(keys) == sorted(j.key for j in jobs if j.line != 3)  # each finished job once

    third = run_jobs([j for j in jobs if j.line != 3], engine, out, progress=False)
    assert third.ok and (third.skipped, third.written) == (3, 0)


def test_interrupted_run_keeps_what_finished(engine, tmp_path):
    jobs = parse_jobs(lines(*({"prompt": f"shape {i}", "seed": i} for i in range(3))), defaults=FAST)
    out = tmp_path / "out"

    def stop(job, result):
        raise KeyboardInterrupt

    summary = run_jobs(jobs, engine, out, progress=False, on_result=stop)
    assert summary.interrupted and summary.written == 1 and len(summary.not_run) == 2
    assert "run the same command again" in summary.report()
    resumed = run_jobs(jobs, engine, out, progress=False)
    assert resumed.ok and (resumed.skipped, resumed.written) == (1, 2)
    assert sorted(manifest_keys(out)) == sorted(job.key for job in jobs)


def test_model_that_does_not_load_is_one_error(engine, tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    jobs = parse_jobs(
        lines(*({"prompt": f"p{i}", "seed": i} for i in range(3))), defaults={**FAST, "model": str(empty)}
    )
    summary = run_jobs(jobs, engine, tmp_path / "out", progress=False)
    assert not summary.ok and summary.written == 0 and not summary.failures
    [error] = summary.errors
    assert error.startswith(f"model {empty} did not load") and "(3 jobs need it; none was run)" in error
    assert len(summary.not_run) == 3


def test_command_line(tmp_path, capsys):
    from difframe.cli import main

    job_file = tmp_path / "jobs.jsonl"
    job_file.write_text('{"prompt": "a red circle", "seed": 5}\n{"prompt": "a blue square", "seed": 6, "stepz": 1}\n')
    out = tmp_path / "out"
    common = [
        "generate",
        "--prompts",
        str(job_file),
        "--out",
        str(out),
        "--steps",
        "2",
        "--size",
        "64",
        "--no-progress",
    ]
    assert main(common) == 2
    assert "line 2: unknown option 'stepz'" in capsys.readouterr().err
    assert not out.exists()  # nothing started
    assert main([*common, "a prompt", "-b", "2"]) == 2  # options a job run would not use are refused
    assert "a prompt, --batch cannot be used with it" in capsys.readouterr().err
    job_file.write_text('{"prompt": "a red circle", "seed": 5}\n{"prompt": "a blue square", "seed": 6, "size": 40}\n')
    assert main([*common, "--threads-per-worker", "1"]) == 1
    err = capsys.readouterr().err
    assert "1 written" in err and "failed: line 2: ValueError" in err
    assert Image.open(out / "00001-5.png").text["parameters"].startswith("a red circle\nSteps: 2")

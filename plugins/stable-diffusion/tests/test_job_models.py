"""A job line's "model" read as `difframe generate --model` reads it: PACKAGE:FOLDER names a folder inside an
installed package; one that does not resolve is a problem named with its line before any worker starts."""

from __future__ import annotations

import json

import pytest
from difframe_stable_diffusion.jobs import JobFileError, parse_jobs, run_jobs
from difframe_stable_diffusion.jobs.runner import LocalEngine
from PIL import Image

BUILT_IN = "difframe_shapes_model:difframe-shapes"


def test_a_package_folder_on_a_job_line_generates(tmp_path):
    line = {"prompt": "a red circle", "seed": 3, "steps": 2, "size": 64}
    [job] = parse_jobs([json.dumps({**line, "model": BUILT_IN})], source="jobs.jsonl")
    assert job.model == BUILT_IN  # checked here, found by each worker in its own installation
    summary = run_jobs([job], LocalEngine(threads_per_worker=1), tmp_path / "out", progress=False)
    assert summary.ok and summary.written == 1, summary.report()
    parameters = Image.open(tmp_path / "out" / job.file_name()).text["parameters"]
    assert parameters.startswith("a red circle\nSteps: 2") and "Model: difframe-shapes" in parameters


def test_a_bad_package_folder_is_named_with_its_lines():
    rows = [
        json.dumps({"prompt": "a", "seed": 1}),
        json.dumps({"prompt": "b", "seed": 2, "model": "difframe_shapes_model:no-such-folder"}),
        json.dumps({"prompt": "c", "seed": 3, "model": "no_such_package_xyz:difframe-shapes"}),
        json.dumps({"prompt": "d", "seed": 4, "model": "difframe_shapes_model:no-such-folder"}),
    ]
    with pytest.raises(JobFileError) as caught:
        parse_jobs(rows, source="jobs.jsonl")
    assert caught.value.problems == [
        "jobs.jsonl: model difframe_shapes_model:no-such-folder: the package 'difframe_shapes_model' has no folder "
        "'no-such-folder' (lines 2, 4)",
        "jobs.jsonl: the model 'no_such_package_xyz:difframe-shapes' lives in the package 'no_such_package_xyz', "
        "which is not installed; install it, or pass model='<folder or hub id>' (line 3)",
    ]


def test_the_command_line_model_is_read_the_same_way(tmp_path, capsys):
    from difframe.cli import main

    job_file = tmp_path / "jobs.jsonl"
    job_file.write_text('{"prompt": "a red circle", "seed": 5}\n')
    out = tmp_path / "out"
    common = ["generate", "--prompts", str(job_file), "--out", str(out), "--steps", "2", "--size", "64"]
    assert main([*common, "--no-progress", "--model", "difframe_shapes_model:nothing-here"]) == 2
    assert "model difframe_shapes_model:nothing-here: the package" in capsys.readouterr().err
    assert not out.exists()
    assert main([*common, "--no-progress", "--threads-per-worker", "1", "--model", BUILT_IN]) == 0
    assert (out / "00001-5.png").is_file()

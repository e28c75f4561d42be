"""A file given where a model folder is expected goes to the pipeline class's single-file loader."""

from __future__ import annotations

from typing import Any

import pytest
from difframe import Framework
from difframe.errors import ModelLoadError
from difframe.testing import ToyPipeline, ToyPlugin, make_toy_pipeline


@pytest.fixture
def framework() -> Framework:
    return Framework(plugins=[ToyPlugin()])


def test_a_pipeline_without_single_file_support_says_so(framework, tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file, and ToyPipeline loads only model folders"):
        framework.build("toy", model=checkpoint)
    with pytest.raises(ModelLoadError, match="is not a file"):
        ToyPipeline.from_single_file(tmp_path)


def test_build_from_pretrained_and_from_single_file_reach_the_loader(framework, tmp_path):
    calls: list[dict[str, Any]] = []

    class SingleFileToy(ToyPipeline):
        @classmethod
        def load_single_file(cls, path, *, framework, **options):
            calls.append({"path": path, "framework": framework, **options})
            return make_toy_pipeline()

    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    SingleFileToy.from_single_file(checkpoint, framework=framework, allow_pickle=True, config="sd1")
    SingleFileToy.from_pretrained(str(checkpoint), framework=framework)
    assert [c["path"] for c in calls] == [checkpoint, str(checkpoint)]
    assert calls[0]["allow_pickle"] is True and calls[0]["config"] == "sd1" and calls[0]["framework"] is framework
    with pytest.raises(TypeError, match="variant apply to model folders"):
        SingleFileToy.from_pretrained(checkpoint, framework=framework, variant="fp16")

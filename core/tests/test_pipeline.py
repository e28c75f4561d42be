"""DiffusionPipeline: whole-folder loading through the registry, saving, placement, hub cache, bad folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from difframe import Framework
from difframe.errors import ModelLoadError, UnknownComponentError
from difframe.testing import ToyPipeline, ToyPlugin, ToyScheduler, make_hub_cache, make_toy_pipeline


@pytest.fixture
def framework() -> Framework:
    return Framework(plugins=[ToyPlugin()])


@pytest.fixture
def saved(tmp_path) -> Path:
    make_toy_pipeline().save_pretrained(tmp_path / "toy")
    return tmp_path / "toy"


def test_save_writes_the_shared_layout(saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "ToyPipeline"
    assert index["denoiser"] == ["difframe-testing", "ToyDenoiser"]
    assert index["scheduler"] == ["difframe-testing", "ToyScheduler"]
    assert index["extra"] == [None, None]
    assert (saved / "denoiser" / "config.json").is_file()
    assert (saved / "denoiser" / "diffusion_pytorch_model.safetensors").is_file()
    assert (saved / "scheduler" / "scheduler_config.json").is_file()


def test_build_from_folder_gives_the_same_result(framework, saved):
    expected = make_toy_pipeline()(steps=3, seed=1)
    pipe = framework.build("toy", model=saved)
    assert isinstance(pipe, ToyPipeline) and pipe.extra is None
    assert set(pipe.components) == {"denoiser", "scheduler", "extra"}
    torch.testing.assert_close(pipe(steps=3, seed=1), expected, rtol=0, atol=0)


def test_component_override_by_instance_and_scheduler_by_name(framework, saved):
    custom = ToyScheduler(beta_end=0.02)
    assert framework.build("toy", model=saved, scheduler=custom).scheduler is custom
    (saved / "scheduler" / "scheduler_config.json").write_text(json.dumps({"beta_end": 0.015}))
    by_name = framework.build("toy", model=saved, scheduler="Toy DDIM")
    assert by_name.scheduler.config.beta_end == 0.015  # the model's own noise schedule is kept


def test_set_scheduler_swaps_in_one_line(framework, saved):
    pipe = framework.build("toy", model=saved)
    old = pipe.scheduler
    pipe.set_scheduler("toy", beta_end=0.02)
    assert pipe.scheduler is not old and pipe.scheduler.config.beta_end == 0.02


def test_to_dtype_and_progress_bar_off(framework, saved, capsys):
    pipe = framework.build("toy", model=saved, progress=False, dtype=torch.float64)
    assert pipe.dtype == torch.float64 and pipe.denoiser.dtype == torch.float64
    pipe.to(dtype=torch.float32)
    assert pipe.dtype == torch.float32
    pipe(steps=2)
    assert "it/s" not in capsys.readouterr().err


def test_unknown_pipeline_and_unknown_option(framework, saved):
    with pytest.raises(UnknownComponentError, match="no pipeline named 'tio'.*Did you mean 'toy'"):
        framework.build("tio", model=saved)
    with pytest.raises(TypeError, match="unknown option.*flux_capacitor"):
        framework.build("toy", model=saved, flux_capacitor=True)
    with pytest.raises(ValueError, match="has no default model"):
        framework.build("toy")


def test_missing_component_is_named(framework, saved):
    index = json.loads((saved / "model_index.json").read_text())
    del index["denoiser"]
    (saved / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="has no component 'denoiser' in model_index.json"):
        framework.build("toy", model=saved)


def test_missing_component_folder_is_named(framework, saved):
    import shutil

    shutil.rmtree(saved / "denoiser")
    with pytest.raises(ModelLoadError, match="lists component 'denoiser' but has no folder denoiser/"):
        framework.build("toy", model=saved)


def test_missing_weights_name_the_component(framework, saved):
    (saved / "denoiser" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="component 'denoiser' .*has no weights file"):
        framework.build("toy", model=saved)


def test_class_no_plugin_loads(framework, saved):
    index = json.loads((saved / "model_index.json").read_text())
    index["denoiser"] = ["diffusers", "UNet9000"]
    (saved / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match=r"no installed plugin loads \['diffusers', 'UNet9000'\]"):
        framework.build("toy", model=saved)


@pytest.mark.parametrize("name", ["../evil", "/etc", "a/b", "..", "denoiser/../../x"])
def test_component_names_cannot_escape_the_folder(framework, saved, name):
    index = json.loads((saved / "model_index.json").read_text())
    index[name] = ["difframe-testing", "ToyDenoiser"]
    (saved / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="not a plain folder name"):
        framework.build("toy", model=saved)


def test_component_folder_symlinked_outside_is_refused(framework, saved, tmp_path):
    outside = tmp_path / "outside"
    (saved / "denoiser").rename(outside)
    (saved / "denoiser").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="points outside the model folder"):
        framework.build("toy", model=saved)


def test_not_a_pipeline_folder(framework, tmp_path):
    with pytest.raises(ModelLoadError, match="has no model_index.json"):
        framework.build("toy", model=tmp_path)
    with pytest.raises(ModelLoadError, match="does not exist"):
        framework.build("toy", model=tmp_path / "nope")


def test_pipeline_save_over_existing_is_atomic(saved, monkeypatch):
    before = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("difframe.modeling.write_state_dict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_toy_pipeline(seed=5).save_pretrained(saved)
    after = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in saved.parent.iterdir()] == ["toy"]


# --- hub ids and the shared Hugging Face cache (offline: the cache layout is made by the test) ---------------


def test_hub_id_resolves_from_the_cache_offline(framework, saved, tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    make_hub_cache(cache, "someone/toy-model", saved)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = framework.build("toy", model="someone/toy-model", cache_dir=cache)
    torch.testing.assert_close(pipe(steps=2), make_toy_pipeline()(steps=2), rtol=0, atol=0)
    pipe = framework.build("toy", model="someone/toy-model", cache_dir=cache, local_files_only=True)
    assert pipe.denoiser.config.hidden == 16


def test_hub_cache_from_environment_like_other_tools(saved, tmp_path):
    """HF_HUB_CACHE / HF_HUB_OFFLINE are read by huggingface_hub at import: check them in a fresh process."""
    cache = tmp_path / "hf-cache"
    make_hub_cache(cache, "someone/toy-model", saved)
    code = (
        "from difframe import Framework; from difframe.testing import ToyPlugin; "
        "p = Framework(plugins=[ToyPlugin()]).build('toy', model='someone/toy-model'); print(p.denoiser.config.hidden)"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "16"


def test_hub_id_not_in_cache_offline_says_what_to_do(framework, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache and downloads are off"):
        framework.build("toy", model="someone/absent", cache_dir=tmp_path)


def test_invalid_hub_id(framework):
    with pytest.raises(ModelLoadError, match="does not exist"):
        framework.build("toy", model="./relative/missing")
    with pytest.raises(ModelLoadError, match="neither a local folder nor a valid hub id"):
        framework.build("toy", model="bad id with spaces")


def test_only_needed_files_are_requested(framework, saved, tmp_path, monkeypatch):
    """A hub load asks for model_index.json first, then the configs of the components the pipeline uses (checked
    before any weight is fetched), then their weights too."""
    calls = []
    cache = tmp_path / "hf-cache"
    snapshot = make_hub_cache(cache, "someone/toy-model", saved)

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append(kwargs)
        return str(snapshot)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    framework.build("toy", model="someone/toy-model", variant=None)
    assert calls[0]["allow_patterns"] == ["model_index.json"]
    configs, allowed = calls[1]["allow_patterns"], calls[2]["allow_patterns"]
    assert "denoiser/*.json" in configs and not any(p.endswith(".safetensors") for p in configs)
    assert "denoiser/*.safetensors" in allowed and "scheduler/*.json" in allowed
    assert not any(p.startswith("extra/") for p in allowed)  # [null, null] components are not fetched
    assert not any(p.endswith((".bin", ".ckpt")) for p in allowed)  # no pickles unless allow_pickle
    assert "*.fp16.*" in calls[2]["ignore_patterns"]  # other variants are not fetched


def test_default_model_inside_an_installed_package(saved, tmp_path, monkeypatch):
    import shutil

    from difframe import hookimpl

    package = tmp_path / "site" / "toy_weights_pkg"
    shutil.copytree(saved, package / "weights")
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    class Plugin:
        __name__ = "with-default"

        @hookimpl
        def register_pipeline(self, register):
            register(
                name="toy-default", factory="difframe.testing:ToyPipeline", default_model="toy_weights_pkg:weights"
            )
            register(name="toy-missing", factory="difframe.testing:ToyPipeline", default_model="absent_pkg_xyz:weights")

            register(
                name="toy-quiet",
                factory="difframe.testing:ToyPipeline",
                default_model="toy_weights_pkg:weights",
                default_model_options={"progress": False},
            )

    framework = Framework(plugins=[ToyPlugin(), Plugin()])
    pipe = framework.build("toy-default")
    torch.testing.assert_close(pipe(steps=2), make_toy_pipeline()(steps=2), rtol=0, atol=0)
    # the registration's options for its default model apply, unless build() is given them
    assert framework.build("toy-quiet")._progress_options == {"disable": True}
    assert framework.build("toy-quiet", progress=True)._progress_options == {}
    assert framework.build("toy-quiet", model=saved)._progress_options == {}  # not for another model
    with pytest.raises(ModelLoadError, match="lives in the package 'absent_pkg_xyz', which is not installed"):
        framework.build("toy-missing")

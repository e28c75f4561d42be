"""Classes of fault tried broadly (hypothesis): paths out of the model folder, configs, saves that keep what is there,
pickles, and the device / dtype options."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from difframe.atomic import atomic_directory
from difframe.errors import ConfigError, DifframeError, ModelLoadError
from difframe.paths import check_subfolder, check_variant
from difframe.placement import check_device, check_dtype
from difframe.testing import ToyDenoiser, ToyScheduler
from difframe.weights import find_weights, read_state_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SEGMENT = st.sampled_from(["..", ".", "a", "b", "x.safetensors", "", "..."])
NAMES = st.lists(SEGMENT, min_size=1, max_size=5).map("/".join) | st.sampled_from(["/etc/passwd", "/tmp/x"])


@FAST
@given(name=NAMES)
def test_a_shard_name_never_leads_out_of_the_folder(name):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model" / "unet"
        (folder / "a").mkdir(parents=True)
        save_file({"w": torch.zeros(1)}, Path(tmp) / "model" / "x.safetensors")
        save_file({"w": torch.zeros(1)}, folder / "x.safetensors")
        index = {"weight_map": {"w": name}}
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
        try:
            files = find_weights(folder, "diffusion_pytorch_model.safetensors", None, False)
        except ModelLoadError as error:
            assert "index" in str(error)
            return
        real = folder.resolve()
        assert all(real in f.resolve().parents for f in files), files


@FAST
@given(variant=st.text(max_size=12))
def test_a_variant_is_a_plain_name_or_refused(variant):
    try:
        check_variant(variant)
    except ModelLoadError as error:
        assert "variant" in str(error)
    else:
        assert "/" not in variant and ".." not in variant and "\\" not in variant and variant


@FAST
@given(subfolder=NAMES)
def test_a_subfolder_stays_inside_or_is_refused(subfolder):
    try:
        check_subfolder(subfolder)
    except ModelLoadError as error:
        assert "subfolder" in str(error)
    else:
        assert not Path(subfolder).is_absolute() and ".." not in Path(subfolder).parts


def test_hub_cache_links_into_its_blobs_are_allowed(tmp_path):
    """The Hugging Face cache links every snapshot file to ../../blobs: that is the model's own storage."""
    from difframe.testing import make_hub_cache

    ToyDenoiser().save_pretrained(tmp_path / "m")
    snapshot = make_hub_cache(tmp_path / "cache", "someone/toy", tmp_path / "m")
    assert ToyDenoiser.from_pretrained(snapshot).config.hidden == 16


SIZES = st.integers(min_value=-64, max_value=0) | st.sampled_from(["four", 2.5, None, [4], "-3"])


@FAST
@given(channels=SIZES)
def test_a_bad_size_in_a_config_is_a_config_error_before_weights(channels, tmp_path, monkeypatch):
    folder = tmp_path / "m"
    if not folder.exists():
        ToyDenoiser().save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden": channels}))
    monkeypatch.setattr("difframe.modeling.read_state_dict", lambda files: pytest.fail("a weight was read"))
    with pytest.raises(ConfigError, match="hidden|ToyDenoiser"):
        ToyDenoiser.check_pretrained(folder)


SCHEDULE_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "num_train_timesteps": st.integers(-5, 3000),
        "beta_start": st.floats(allow_nan=True, allow_infinity=True),
        "beta_end": st.floats(allow_nan=True, allow_infinity=True),
    },
)


@FAST
@given(values=SCHEDULE_VALUES)
def test_a_scheduler_config_builds_a_finite_schedule_or_is_refused(values):
    try:
        scheduler = ToyScheduler.from_config(values)
    except ConfigError as error:
        assert "config" in str(error)
        return
    assert torch.isfinite(scheduler.alphas_cumprod).all()


TREE = st.lists(
    st.tuples(st.sampled_from(["file", "dir", "link-dir", "link-file"]), st.sampled_from(["a", "b", "c", "sub/d"])),
    max_size=6,
)


@FAST
@given(tree=TREE)
def test_a_save_keeps_what_is_not_the_models(tree):
    with tempfile.TemporaryDirectory() as tmp:
        target, outside = Path(tmp) / "m", Path(tmp) / "outside"
        outside.mkdir()
        (outside / "f").write_text("outside")
        ToyDenoiser().save_pretrained(target)
        for kind, name in tree:
            path = target / name
            if os.path.lexists(path) or not path.parent.is_dir():
                continue
            {
                "file": lambda p: p.write_text(p.name),
                "dir": lambda p: p.mkdir(),
                "link-dir": lambda p: p.symlink_to(outside),
                "link-file": lambda p: p.symlink_to(outside / "f"),
            }[kind](path)
        before = _listing(target)
        ToyDenoiser(hidden=8).save_pretrained(target)
        after = _listing(target)
        assert {
            k: v for k, v in before.items() if "safetensors" not in k and k != "config.json"
        }.items() <= after.items()
        assert ToyDenoiser.from_pretrained(target).config.hidden == 8
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["m", "outside"]
        assert (outside / "f").read_text() == "outside"


def _listing(folder: Path) -> dict[str, str]:
    out = {}
    for path in folder.rglob("*"):
        key = str(path.relative_to(folder))
        out[key] = (
            f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir() else path.read_text("latin-1")
        )
    return out


def test_an_error_inside_the_save_keeps_the_old_copy_and_leaves_nothing(tmp_path):
    ToyDenoiser().save_pretrained(tmp_path / "m")
    before = _listing(tmp_path / "m")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "m") as staging:
        (staging / "config.json").write_text("half")
        raise RuntimeError("disk full")
    assert _listing(tmp_path / "m") == before and sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_atomic_file_replaces_whole_or_not_at_all(tmp_path):
    from difframe.atomic import atomic_file, atomic_write_text

    target = tmp_path / "sub" / "weights.bin"
    with atomic_file(target) as handle:
        handle.write(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and [p.name for p in target.parent.iterdir()] == ["weights.bin"]
    atomic_write_text(target, "new ✓")
    assert target.read_text("utf-8") == "new ✓" and oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w', not 'ab'"), atomic_file(target, "ab"):
        pass


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_a_stale_staging_folder_in_use_is_not_removed(tmp_path):
    """clean_stale_saves removes only folders that no live save holds (their lock dies with the process)."""
    import fcntl

    from difframe.atomic import clean_stale_saves

    live, dead = tmp_path / ".m.live.saving", tmp_path / ".m.dead.saving"
    live.mkdir(), dead.mkdir()
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert clean_stale_saves(tmp_path / "m", min_age_s=0) == [dead]
        assert live.is_dir()
    finally:
        os.close(fd)
    shutil.rmtree(live)


# --- pickles -------------------------------------------------------------------------------------------------------
class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


@pytest.mark.parametrize("how", ["zip", "legacy", "raw-pickle"])
def test_a_malicious_pickle_is_refused_naming_what_it_would_call(tmp_path, how):
    path = tmp_path / "model.bin"
    if how == "raw-pickle":
        path.write_bytes(pickle.dumps({"w": _Exploit()}))
    else:
        torch.save({"w": _Exploit()}, path, _use_new_zipfile_serialization=how == "zip")
    with pytest.raises(
        ModelLoadError, match=r"not a plain weights checkpoint \(it would call posix\.system|nt\.system"
    ):
        read_state_dict([path])


def test_a_legacy_format_weights_pickle_loads(tmp_path):
    state = {"inner.weight": torch.randn(3, 3)}
    torch.save(state, tmp_path / "model.bin", _use_new_zipfile_serialization=False)
    torch.testing.assert_close(read_state_dict([tmp_path / "model.bin"]), state)


# --- device and dtype ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int64, torch.bool, torch.float8_e4m3fn, "int8", "x"])
def test_a_dtype_that_cannot_hold_weights_is_refused(dtype):
    with pytest.raises(ConfigError, match="torch_dtype=.* cannot hold model weights; use one of float32"):
        check_dtype(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, "float16", "torch.bfloat16"])
def test_float_dtypes_pass(dtype):
    assert check_dtype(dtype).is_floating_point


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "npu:0:1", "", 3.5])
def test_a_bogus_device_is_refused_with_the_devices_here(device):
    with pytest.raises(DifframeError, match="device=.*Devices here: cpu"):
        check_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_says_so(tmp_path):
    ToyDenoiser().save_pretrained(tmp_path)
    with pytest.raises(DifframeError, match="device='cuda': cuda is not available on this machine"):
        ToyDenoiser.from_pretrained(tmp_path, device="cuda")


# --- options that would be silently ignored -------------------------------------------------------------------------
def test_a_misspelt_sampler_option_is_refused_with_a_suggestion():
    from difframe import Framework
    from difframe.testing import ToyPlugin

    framework = Framework(plugins=[ToyPlugin()])
    with pytest.raises(ConfigError, match="has no option 'num_train_timestep' .did you mean 'num_train_timesteps'"):
        framework.scheduler("toy", num_train_timestep=10)
    config = {**framework.scheduler("toy").config, "use_karras_sigmas": True}  # another sampler's config: kept
    assert framework.scheduler("toy", config).config["use_karras_sigmas"] is True


def test_a_misspelt_model_option_is_refused(tmp_path):
    ToyDenoiser().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="has no option 'hiden' .did you mean 'hidden'"):
        ToyDenoiser.from_pretrained(tmp_path, hiden=8)


@pytest.mark.parametrize(("device", "dtype"), [("gpu", None), (None, torch.int8), (None, torch.float8_e5m2)])
def test_moving_a_pipeline_checks_the_device_and_dtype(device, dtype):
    from difframe.testing import make_toy_pipeline

    pipe = make_toy_pipeline()
    with pytest.raises(DifframeError, match="device=|dtype="):
        pipe.to(device, dtype)
    assert pipe.dtype == torch.float32


def test_a_hub_model_with_a_bad_config_is_refused_before_its_weights_are_fetched(tmp_path, monkeypatch):
    """For a hub id, configs are fetched and checked first; weights are fetched only for a model that passes."""
    import huggingface_hub
    from difframe import Framework
    from difframe.testing import ToyPlugin, make_hub_cache, make_toy_pipeline

    make_toy_pipeline().save_pretrained(tmp_path / "toy")
    config = json.loads((tmp_path / "toy" / "denoiser" / "config.json").read_text())
    (tmp_path / "toy" / "denoiser" / "config.json").write_text(json.dumps({**config, "hidden": -3}))
    make_hub_cache(tmp_path / "cache", "someone/bad-toy", tmp_path / "toy")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fetched: list[list[str]] = []
    original = huggingface_hub.snapshot_download

    def recording(*args, **kwargs):
        fetched.append(list(kwargs.get("allow_patterns") or ["everything"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    with pytest.raises(ConfigError, match="component 'denoiser'.*hidden"):
        Framework(plugins=[ToyPlugin()]).build("toy", model="someone/bad-toy", cache_dir=tmp_path / "cache")
    assert fetched and not any(p.endswith(".safetensors") for patterns in fetched for p in patterns), fetched

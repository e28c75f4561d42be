"""A probe of bad inputs and injected faults across loading, saving and plugins (issue 18, core part).

Each case is classified by what it must give:
- "refused": a clear difframe error (naming what is wrong) raised before any weight file is read;
- "survived": the operation completes, or is refused, with nothing already saved lost and nothing left behind.
``test_probe_counts`` prints the counts that docs/reliability.md reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from difframe import Framework
from difframe.errors import DifframeError
from difframe.testing import ToyDenoiser, ToyPlugin, make_toy_pipeline
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]


def _toy(tmp: Path) -> Path:
    make_toy_pipeline().save_pretrained(tmp / "toy")
    return tmp / "toy"


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _shard(model: Path, weight_map: dict[str, str]) -> None:
    """Replace the denoiser's weights by an index naming ``weight_map``'s files."""
    folder = model / "denoiser"
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


def _outside(tmp: Path) -> Path:
    outside = tmp / "outside"
    outside.mkdir(exist_ok=True)
    save_file(dict(ToyDenoiser().state_dict()), outside / "x.safetensors")
    return outside / "x.safetensors"


# --- loading: each setup makes a bad model folder and returns the build options ---------------------------------
def shard_escapes_with_dotdot(tmp: Path) -> dict:
    model, target = _toy(tmp), _outside(tmp)
    _shard(model, {"inner.weight": os.path.relpath(target, model / "denoiser")})
    return {"model": model}


def shard_is_absolute(tmp: Path) -> dict:
    model, target = _toy(tmp), _outside(tmp)
    _shard(model, {"inner.weight": str(target)})
    return {"model": model}


def shard_is_a_symlink_out(tmp: Path) -> dict:
    model, target = _toy(tmp), _outside(tmp)
    _shard(model, {"inner.weight": "a.safetensors"})
    (model / "denoiser" / "a.safetensors").symlink_to(target)
    return {"model": model}


def weights_file_is_a_symlink_out(tmp: Path) -> dict:
    model, target = _toy(tmp), _outside(tmp)
    (model / "denoiser" / "diffusion_pytorch_model.safetensors").unlink()
    (model / "denoiser" / "diffusion_pytorch_model.safetensors").symlink_to(target)
    return {"model": model}


def config_is_a_symlink_out(tmp: Path) -> dict:
    model = _toy(tmp)
    (tmp / "config.json").write_text((model / "denoiser" / "config.json").read_text())
    (model / "denoiser" / "config.json").unlink()
    (model / "denoiser" / "config.json").symlink_to(tmp / "config.json")
    return {"model": model}


def component_folder_is_a_symlink_out(tmp: Path) -> dict:
    model = _toy(tmp)
    (model / "denoiser").rename(tmp / "elsewhere")
    (model / "denoiser").symlink_to(tmp / "elsewhere")
    return {"model": model}


def model_index_is_a_symlink_out(tmp: Path) -> dict:
    model = _toy(tmp)
    (model / "model_index.json").rename(tmp / "index.json")
    (model / "model_index.json").symlink_to(tmp / "index.json")
    return {"model": model}


def index_names_a_parent_folder(tmp: Path) -> dict:
    model = _toy(tmp)
    _edit_json(model / "model_index.json", **{"..": ["difframe-testing", "ToyDenoiser"]})
    return {"model": model}


def variant_with_a_path(tmp: Path) -> dict:
    return {"model": _toy(tmp), "variant": "../../outside/x"}


def config_field_of_the_wrong_type(tmp: Path) -> dict:
    model = _toy(tmp)
    _edit_json(model / "denoiser" / "config.json", channels="four")
    return {"model": model}


def negative_channel_count(tmp: Path) -> dict:
    model = _toy(tmp)
    _edit_json(model / "denoiser" / "config.json", hidden=-16)
    return {"model": model}


def zero_channel_count(tmp: Path) -> dict:
    model = _toy(tmp)
    _edit_json(model / "denoiser" / "config.json", channels=0)
    return {"model": model}


def scheduler_with_negative_timesteps(tmp: Path) -> dict:
    model = _toy(tmp)
    _edit_json(model / "scheduler" / "scheduler_config.json", num_train_timesteps=-1000)
    return {"model": model}


def scheduler_with_beta_above_one(tmp: Path) -> dict:
    model = _toy(tmp)
    _edit_json(model / "scheduler" / "scheduler_config.json", beta_end=2.5)
    return {"model": model}


def scheduler_with_unknown_beta_schedule(tmp: Path) -> dict:
    model = _toy(tmp)
    _edit_json(model / "scheduler" / "scheduler_config.json", beta_schedule="cubic")
    return {"model": model}


def scheduler_with_negative_trained_betas(tmp: Path) -> dict:
    model = _toy(tmp)
    _edit_json(model / "scheduler" / "scheduler_config.json", trained_betas=[-0.1] * 1000)
    return {"model": model}


def scheduler_config_not_json(tmp: Path) -> dict:
    model = _toy(tmp)
    (model / "scheduler" / "scheduler_config.json").write_text("{not json")
    return {"model": model}


def missing_scheduler_config_with_a_sampler_override(tmp: Path) -> dict:
    model = _toy(tmp)
    (model / "scheduler" / "scheduler_config.json").unlink()
    return {"model": model, "scheduler": "toy"}


def int8_dtype(tmp: Path) -> dict:
    return {"model": _toy(tmp), "torch_dtype": torch.int8}


def float8_dtype(tmp: Path) -> dict:
    return {"model": _toy(tmp), "torch_dtype": torch.float8_e4m3fn}


def dtype_name_that_is_not_a_dtype(tmp: Path) -> dict:
    return {"model": _toy(tmp), "torch_dtype": "float17"}


def bogus_device(tmp: Path) -> dict:
    return {"model": _toy(tmp), "device": "gpu0"}


def cuda_device_index_out_of_range(tmp: Path) -> dict:
    return {"model": _toy(tmp), "device": "cuda:99"}


def cuda_without_cuda(tmp: Path) -> dict:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: device='cuda' is valid here")
    return {"model": _toy(tmp), "device": "cuda"}


def missing_weights_file(tmp: Path) -> dict:
    model = _toy(tmp)
    (model / "denoiser" / "diffusion_pytorch_model.safetensors").unlink()
    return {"model": model}


def shard_missing(tmp: Path) -> dict:
    model = _toy(tmp)
    _shard(model, {"inner.weight": "gone.safetensors"})
    return {"model": model}


def unknown_sampler_override(tmp: Path) -> dict:
    return {"model": _toy(tmp), "scheduler": "no-such-sampler"}


def unknown_build_option(tmp: Path) -> dict:
    return {"model": _toy(tmp), "atention": "sdpa"}


def malicious_pickle(tmp: Path) -> dict:
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo probe",))

    model = _toy(tmp)
    (model / "denoiser" / "diffusion_pytorch_model.safetensors").unlink()
    (model / "denoiser" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"inner.weight": Exploit()}))
    return {"model": model, "allow_pickle": True, "_reads_weights": True}  # refused while reading, before any use


LOADING: list[Callable[[Path], dict]] = [
    shard_escapes_with_dotdot,
    shard_is_absolute,
    shard_is_a_symlink_out,
    weights_file_is_a_symlink_out,
    config_is_a_symlink_out,
    component_folder_is_a_symlink_out,
    model_index_is_a_symlink_out,
    index_names_a_parent_folder,
    variant_with_a_path,
    config_field_of_the_wrong_type,
    negative_channel_count,
    zero_channel_count,
    scheduler_with_negative_timesteps,
    scheduler_with_beta_above_one,
    scheduler_with_unknown_beta_schedule,
    scheduler_with_negative_trained_betas,
    scheduler_config_not_json,
    missing_scheduler_config_with_a_sampler_override,
    int8_dtype,
    float8_dtype,
    dtype_name_that_is_not_a_dtype,
    bogus_device,
    cuda_device_index_out_of_range,
    cuda_without_cuda,
    missing_weights_file,
    shard_missing,
    unknown_sampler_override,
    unknown_build_option,
    malicious_pickle,
]


def run_loading_case(setup: Callable[[Path], dict], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """'refused' when build raises a DifframeError with a message before any weight file is read."""
    import difframe.modeling

    options = setup(tmp)
    reads_weights = options.pop("_reads_weights", False)
    reads: list[object] = []
    original = difframe.modeling.read_state_dict

    def counting(files):
        reads.append(files)
        return original(files)

    monkeypatch.setattr(difframe.modeling, "read_state_dict", counting)
    framework = Framework(plugins=[ToyPlugin()])
    try:
        framework.build("toy", **options)
    except (DifframeError, TypeError) as error:
        assert len(str(error)) > 30, error
        assert reads_weights or not reads, f"{setup.__name__}: refused only after reading {reads}"
        return "refused"
    return "loaded"


@pytest.mark.parametrize("setup", LOADING, ids=lambda f: f.__name__)
def test_bad_model_folder_is_refused_before_any_weight(setup, tmp_path, monkeypatch):
    assert run_loading_case(setup, tmp_path, monkeypatch) == "refused"


# --- saving: each case checks that nothing already saved is lost --------------------------------------------------
def _files(folder: Path) -> dict[str, bytes | str]:
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = path.read_bytes()
    return found


def save_over_a_regular_file(tmp: Path) -> None:
    (tmp / "m").write_text("not a model")
    with pytest.raises(DifframeError, match="is a file, not a folder"):
        ToyDenoiser().save_pretrained(tmp / "m")
    assert (tmp / "m").read_text() == "not a model"
    assert sorted(p.name for p in tmp.iterdir()) == ["m"]


def save_over_a_dangling_symlink(tmp: Path) -> None:
    (tmp / "m").symlink_to(tmp / "nowhere")
    with pytest.raises(DifframeError, match="symlink to a missing path"):
        ToyDenoiser().save_pretrained(tmp / "m")
    assert (tmp / "m").is_symlink() and sorted(p.name for p in tmp.iterdir()) == ["m"]


def save_through_a_symlinked_folder(tmp: Path) -> None:
    ToyDenoiser().save_pretrained(tmp / "real")
    (tmp / "real" / "notes.txt").write_text("mine")
    (tmp / "link").symlink_to(tmp / "real")
    with pytest.warns(UserWarning, match="is a symlink: saving into the folder it points to"):
        ToyDenoiser(hidden=8).save_pretrained(tmp / "link")
    assert (tmp / "link").is_symlink() and (tmp / "real" / "notes.txt").read_text() == "mine"
    assert ToyDenoiser.from_pretrained(tmp / "link").config.hidden == 8


def save_keeps_empty_and_symlinked_folders(tmp: Path) -> None:
    make_toy_pipeline().save_pretrained(tmp / "p")
    (tmp / "p" / "empty").mkdir()
    (tmp / "p" / "denoiser" / "empty-inside").mkdir()
    (tmp / "shared").mkdir()
    (tmp / "shared" / "data.txt").write_text("shared")
    (tmp / "p" / "linked").symlink_to(tmp / "shared")
    (tmp / "p" / "file-link").symlink_to(tmp / "shared" / "data.txt")
    before = {k: v for k, v in _files(tmp / "p").items() if "safetensors" not in k and k.endswith(("y", "e", "d"))}
    make_toy_pipeline(seed=3).save_pretrained(tmp / "p")
    after = _files(tmp / "p")
    assert all(after.get(k) == v for k, v in before.items()), (before, after)
    assert after["linked"] == f"-> {tmp / 'shared'}" and (tmp / "shared" / "data.txt").read_text() == "shared"


def killed_saves_leave_nothing_behind(tmp: Path) -> None:
    """Saves killed at several points (subprocesses ending with os._exit) leave the old copy whole; the next save
    removes what they left."""
    ToyDenoiser().save_pretrained(tmp / "m")
    before = _files(tmp / "m")
    for point in ("write_state_dict", "_carry_over", "_swap_done"):
        _killed_save(tmp / "m", point, exchange=True)
        assert _files(tmp / "m") == before or point == "_swap_done"
    import difframe.atomic

    difframe.atomic.STALE_AFTER_S, saved_age = 0.0, difframe.atomic.STALE_AFTER_S
    try:
        ToyDenoiser(hidden=8).save_pretrained(tmp / "m")
    finally:
        difframe.atomic.STALE_AFTER_S = saved_age
    assert sorted(p.name for p in tmp.iterdir()) == ["m"]
    assert ToyDenoiser.from_pretrained(tmp / "m").config.hidden == 8


def killed_between_fallback_renames(tmp: Path) -> None:
    """Without an atomic exchange a kill between the two renames leaves the old copy hidden; the next save (or
    clean_stale_saves) puts it back before doing anything else."""
    from difframe.atomic import clean_stale_saves

    ToyDenoiser().save_pretrained(tmp / "m")
    before = _files(tmp / "m")
    _killed_save(tmp / "m", "second_rename", exchange=False)
    assert not (tmp / "m").exists() and (tmp / ".m.previous").is_dir()
    with pytest.raises(DifframeError, match=r"previous copy at .*\.m\.previous: the next save"):
        ToyDenoiser.from_pretrained(tmp / "m")
    clean_stale_saves(tmp / "m", min_age_s=0)
    assert _files(tmp / "m") == before
    assert sorted(p.name for p in tmp.iterdir()) == ["m"]


def loads_during_repeated_saves_see_a_complete_copy(tmp: Path) -> None:
    """While another process saves over the model again and again, every load here finds a complete copy: all of
    the old weights or all of the new."""
    torch.manual_seed(0)
    first = ToyDenoiser()
    first.save_pretrained(tmp / "m")
    torch.manual_seed(1)
    second = ToyDenoiser()
    versions = [first.state_dict(), second.state_dict()]
    script = (
        "import sys, torch\nfrom difframe.testing import ToyDenoiser\n"
        "for i in range(30):\n    torch.manual_seed(i % 2)\n    ToyDenoiser().save_pretrained(sys.argv[1])\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp / "m")])
    loads = 0
    try:
        while writer.poll() is None or loads < 5:
            state = ToyDenoiser.from_pretrained(tmp / "m").state_dict()
            assert any(all(torch.equal(state[k], v[k]) for k in v) for v in versions)
            loads += 1
    finally:
        writer.wait()
    assert writer.returncode == 0 and loads >= 5


KILL_SCRIPT = """
import os, sys
from pathlib import Path
import difframe.atomic as atomic, difframe.modeling as modeling
from difframe.testing import ToyDenoiser

target, point, exchange = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
die = lambda *a, **k: os._exit(9)
if point == "write_state_dict":
    modeling.write_state_dict = die
if point == "_carry_over":
    atomic._carry_over = die
if point == "_swap_done":  # after the swap, before the old copy is removed
    real_swap = atomic._swap
    atomic._swap = lambda s, t: (real_swap(s, t), die())
if not exchange:
    atomic._exchange = lambda a, b: False
if point == "second_rename":
    renames = []
    real_rename = os.rename
    def rename(a, b):
        renames.append(a)
        if len(renames) == 2:
            die()
        real_rename(a, b)
    os.rename = rename
ToyDenoiser(hidden=8).save_pretrained(target)
os._exit(0)
"""


def _killed_save(target: Path, point: str, *, exchange: bool) -> None:
    result = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(target), point, "1" if exchange else "0"], capture_output=True
    )
    assert result.returncode == 9, result.stderr.decode()


SAVING: list[Callable[[Path], None]] = [
    save_over_a_regular_file,
    save_over_a_dangling_symlink,
    save_through_a_symlinked_folder,
    save_keeps_empty_and_symlinked_folders,
    killed_saves_leave_nothing_behind,
    killed_between_fallback_renames,
    loads_during_repeated_saves_see_a_complete_copy,
]


@pytest.mark.parametrize("case", SAVING, ids=lambda f: f.__name__)
def test_saving_loses_nothing(case, tmp_path):
    case(tmp_path)


# --- plugins: real entry-point distributions that misbehave -------------------------------------------------------
TOYS = """
from difframe import hookimpl
from difframe.testing import ToyPlugin

_toys = ToyPlugin()
register_model, register_pipeline = _toys.register_model, _toys.register_pipeline
register_scheduler = _toys.register_scheduler
"""


def broken_euler_provider(fake_plugin) -> None:
    fake_plugin(
        "difframe-aaa-broken",
        """
        from difframe import hookimpl

        @hookimpl
        def register_scheduler(register):
            register(name="euler", factory="no_such_module_xyz:Euler")
        """,
    )
    framework = Framework()
    assert framework.get("scheduler", "euler").plugin == "difframe-aaa-broken"  # it wins the name...
    pipe = make_toy_pipeline()
    pipe.framework = framework
    with pytest.warns(UserWarning, match="no_such_module_xyz"):
        sampler = pipe.set_scheduler("euler")  # ...but never replaces the working provider
    assert type(sampler).__name__ == "EulerScheduler"
    broken = {p.name: p for p in framework.plugins}["difframe-aaa-broken"]
    assert broken.broken and any(p.stage == "factory" for p in broken.problems)


def broken_layout_claim(fake_plugin, tmp: Path) -> None:
    fake_plugin("difframe-toys-ep", TOYS)
    fake_plugin(
        "difframe-aaa-claim",
        """
        from difframe import hookimpl

        @hookimpl
        def register_model(register):
            register(name="aaa-denoiser", factory="no_such_module_xyz:Net", loads=[("difframe-testing", "ToyDenoiser")])
        """,
    )
    model = _toy(tmp)
    framework = Framework()
    with pytest.warns(UserWarning, match="aaa-denoiser"):
        pipe = framework.build("toy", model=model)
    assert type(pipe.denoiser).__name__ == "ToyDenoiser"


def broken_pipeline_provider(fake_plugin, tmp: Path) -> None:
    fake_plugin("difframe-toys-ep", TOYS)
    fake_plugin(
        "difframe-aaa-pipes",
        """
        from difframe import hookimpl

        @hookimpl
        def register_pipeline(register):
            register(name="toy", factory="difframe.testing:NoSuchPipeline")
        """,
    )
    framework = Framework()
    with pytest.warns(UserWarning, match="NoSuchPipeline"):
        pipe = framework.build("toy", model=_toy(tmp))
    assert type(pipe).__name__ == "ToyPipeline"


def plugin_printing_at_import(fake_plugin) -> None:
    fake_plugin("difframe-chatty", "import os\nprint('hello from a plugin')\nos.write(1, b'raw bytes on fd 1\\n')\n")
    result = _cli("plugins", "--json")
    report = {p["name"]: p for p in json.loads(result.stdout)}  # stdout stays valid JSON
    assert "difframe-chatty" in report and "hello from a plugin" in result.stderr
    assert "raw bytes on fd 1" in result.stderr


def plugin_exiting_at_import(fake_plugin) -> None:
    fake_plugin("difframe-quitter", "import sys\nsys.exit(3)\n")
    result = _cli("plugins", "--json")
    report = {p["name"]: p for p in json.loads(result.stdout)}
    assert report["difframe-quitter"]["broken"]
    assert "called sys.exit(3)" in report["difframe-quitter"]["problems"][0]["message"]
    assert "difframe-samplers" in report


def slow_plugin_is_named(fake_plugin) -> None:
    fake_plugin("difframe-sluggish", "import time\ntime.sleep(0.6)\n")
    result = _cli("plugins", "--json", "--timing", env={"DIFFRAME_SLOW_PLUGIN_SECONDS": "0.3"})
    report = {p["name"]: p for p in json.loads(result.stdout)}
    slow = report["difframe-sluggish"]
    assert slow["load_seconds"] >= 0.6 and not slow["broken"]
    assert any(p["stage"] == "slow" and "took" in p["message"] for p in slow["problems"])
    assert all(p["stage"] != "slow" for name, info in report.items() if name != "difframe-sluggish"
               for p in info["problems"])  # fmt: skip


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    paths = [p for p in sys.path if p]
    environment = {k: v for k, v in os.environ.items() if k != "DIFFRAME_SLOW_PLUGIN_SECONDS"}
    environment |= {"PYTHONPATH": os.pathsep.join(paths), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "difframe", *args], capture_output=True, text=True, env=environment, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return result


PLUGINS: list[Callable] = [
    broken_euler_provider,
    broken_layout_claim,
    broken_pipeline_provider,
    plugin_printing_at_import,
    plugin_exiting_at_import,
    slow_plugin_is_named,
]


@pytest.mark.parametrize("case", PLUGINS, ids=lambda f: f.__name__)
def test_misbehaving_plugin_takes_nothing_down(case, fake_plugin, tmp_path):
    if "tmp" in case.__code__.co_varnames[: case.__code__.co_argcount]:
        case(fake_plugin, tmp_path)
    else:
        case(fake_plugin)


def test_probe_counts(capsys):
    """The probe's size by class; docs/reliability.md quotes these numbers."""
    counts = Counter(loading=len(LOADING), saving=len(SAVING), plugins=len(PLUGINS))
    refused_before_weights = sum(1 for f in LOADING if "pickle" not in f.__name__)
    total = sum(counts.values())
    with capsys.disabled():
        print(
            f"\ncore probe: {total} cases; loading {counts['loading']} (refused with a clear error before any weight "
            f"is read: {refused_before_weights}, while reading the refused file: "
            f"{counts['loading'] - refused_before_weights}); saving {counts['saving']} and plugins "
            f"{counts['plugins']} (survived, nothing lost)"
        )
    assert refused_before_weights >= 0.95 * counts["loading"]

"""Backends as a plugin kind: registration, listing, build(backend=...), refusals before loading, dtype='auto'."""

from __future__ import annotations

import json

import pytest
import torch
from difframe import Framework, hookimpl
from difframe.backends import auto_dtype, cpu_flags, cpu_has_fast_bfloat16
from difframe.cli import main
from difframe.errors import ConfigError, UnavailableError, UnknownComponentError
from difframe.testing import ToyBackend, ToyPlugin, make_toy_pipeline


class BackendPlugin:
    __name__ = "difframe-toy-backends"

    @hookimpl
    def register_backend(self, register):
        register(name="toy-backend", factory="difframe.testing:ToyBackend", description="counts denoiser calls")
        register(
            name="graph",
            factory="difframe.testing:ToyBackend",
            cannot_run=("attention_addons", "attention_backends", "inference_hooks"),
            supports={"devices": ["cpu"], "dtypes": ["float32"]},
        )
        register(
            name="needs-runtime",
            factory="difframe.testing:ToyBackend",
            requires={"packages": ["no_such_runtime_pkg"], "install": "pip install difframe-no-such-runtime"},
        )
        register(name="gpu-only", factory="difframe.testing:ToyBackend", requires={"cuda": True})


@pytest.fixture
def framework():
    return Framework(plugins=[ToyPlugin(), BackendPlugin(), __import__("difframe.builtins").builtins])


@pytest.fixture
def saved(tmp_path):
    make_toy_pipeline().save_pretrained(tmp_path / "toy")
    return tmp_path / "toy"


def test_backends_are_registered_and_listed(framework, capsys):
    assert {"eager", "torch-compile", "toy-backend", "graph"} <= set(framework.backends)
    assert main(["plugins", "--json", "--kind", "backend"]) == 0
    listed = {r["name"] for p in json.loads(capsys.readouterr().out) for r in p["registrations"]}
    assert {"eager", "torch-compile"} <= listed
    missing = framework.get("backend", "needs-runtime")
    assert missing.unavailable_reason == (
        "package no_such_runtime_pkg not installed (pip install difframe-no-such-runtime)"
    )


def test_default_backend_is_eager_and_a_plugin_backend_replaces_forward(framework, saved):
    eager = framework.build("toy", model=saved)
    assert type(eager.backend).__name__ == "EagerBackend"
    routed = framework.build("toy", model=saved, backend="toy-backend", backend_options={"scale": 1.0})
    assert isinstance(routed.backend, ToyBackend)
    torch.testing.assert_close(routed(steps=3, seed=1), eager(steps=3, seed=1), rtol=0, atol=0)
    assert routed.backend.calls == 3


def test_backend_options_reach_the_factory(framework, saved):
    doubled = framework.build("toy", model=saved, backend="toy-backend", backend_options={"scale": 2.0})
    assert doubled.backend.scale == 2.0
    with pytest.raises(TypeError, match="unexpected keyword"):
        framework.build("toy", model=saved, backend="toy-backend", backend_options={"no_such_option": 1})


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"hooks": ["deepcache"]}, "hooks="),
        ({"ip_adapter": "some/adapter"}, "ip_adapter="),
        ({"attention": "sliced"}, "attention='sliced'"),
        ({"attention_slicing": True}, "attention='sliced'"),
        ({"device": "cuda"}, "device='cuda'"),
        ({"dtype": "float16"}, "dtype='float16'"),
    ],
)
def test_what_a_compiled_graph_cannot_run_is_refused_before_loading(framework, tmp_path, options, named):
    # the model folder does not exist: the refusal must come before anything is read
    with pytest.raises(ConfigError, match=f"backend 'graph' cannot run with {named}"):
        framework.build("toy", model=tmp_path / "missing", backend="graph", **options)


def test_missing_and_unknown_backends_say_what_to_install(framework, tmp_path):
    with pytest.raises(UnavailableError, match=r"pip install difframe-no-such-runtime"):
        framework.build("toy", model=tmp_path / "missing", backend="needs-runtime")
    with pytest.raises(UnavailableError, match="needs CUDA"):
        framework.build("toy", model=tmp_path / "missing", backend="gpu-only")
    plain = Framework(plugins=[ToyPlugin(), __import__("difframe.builtins").builtins])
    with pytest.raises(UnknownComponentError, match="pip install difframe-openvino"):
        plain.build("toy", model=tmp_path / "missing", backend="openvino")


def test_compile_is_the_torch_compile_backend(framework, tmp_path):
    with pytest.raises(ValueError, match="compile=True is the 'torch-compile' backend"):
        framework.build("toy", model=tmp_path / "missing", backend="graph", compile=True)


def test_auto_dtype_follows_the_cpu(monkeypatch):
    monkeypatch.setattr("difframe.backends.cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert auto_dtype("cpu") == "bfloat16"
    assert auto_dtype("cpu", ("float32",)) == "float32"  # a backend that takes float32 models only
    monkeypatch.setattr("difframe.backends.cpu_flags", lambda: frozenset({"avx2", "amx_bf16", "amx_tile"}))
    assert auto_dtype("cpu") == "bfloat16"
    monkeypatch.setattr("difframe.backends.cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert auto_dtype("cpu") == "float32"
    assert auto_dtype("cuda") == "float16"
    assert auto_dtype("mps") == "float32"


def test_auto_dtype_on_this_machine_matches_its_flags(framework, saved):
    flags = cpu_flags()
    if flags:
        assert cpu_has_fast_bfloat16() == bool(flags & {"amx_bf16", "avx512_bf16"})
    pipe = framework.build("toy", model=saved, dtype="auto")
    assert pipe.dtype == (torch.bfloat16 if cpu_has_fast_bfloat16() else torch.float32)


class GpuAttentionPlugin:
    __name__ = "difframe-gpu-attention"

    @hookimpl
    def register_attention_processor(self, register):
        register(
            name="gpu-kernel", factory="difframe.attention:SDPABackend", priority=50, supports={"devices": ["cuda"]}
        )


def test_auto_attention_picks_per_device_in_priority_order():
    from difframe.attention import resolve_backend_name

    framework = Framework(plugins=[GpuAttentionPlugin(), __import__("difframe.builtins").builtins])
    assert resolve_backend_name(framework, "auto", device="cuda") == "gpu-kernel"
    assert resolve_backend_name(framework, "auto", device="cuda:1") == "gpu-kernel"
    assert resolve_backend_name(framework, "auto", device="cpu") == "sdpa"  # the GPU kernel never runs on the CPU
    assert resolve_backend_name(framework, "auto") == "gpu-kernel"  # no device given: any


def test_torch_compile_backend_wraps_the_unet_and_keeps_its_results():
    from types import SimpleNamespace

    from difframe.backends import TorchCompileBackend
    from difframe.errors import ConfigError as Refused

    torch.manual_seed(0)
    unet = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 4))
    x = torch.randn(3, 4)
    expected = unet(x)
    seen = []
    unet[0].register_forward_hook(lambda module, args, out: seen.append(out.shape))  # Python hooks still run
    backend = TorchCompileBackend(compiler="eager", vae=False)  # dynamo's tracing without code generation: fast
    backend.apply(SimpleNamespace(unet=unet))
    torch.testing.assert_close(unet(x), expected)
    assert seen == [(3, 8)] and backend.compile_time["unet"] > 0
    with pytest.raises(Refused, match="torch-compile mode must be one of"):
        TorchCompileBackend(mode="fastest")

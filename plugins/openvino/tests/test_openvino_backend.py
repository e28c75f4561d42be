"""The OpenVINO backend on the built-in model: parity with eager float32, bf16 differences, the disk cache (second
start), the pipeline's own features on top (seeds, batches, sizes, chunking, PNG parameters, threads) and the
refusals that come before any weight is converted."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from difframe import Framework
from difframe.attention import set_attention
from difframe.errors import ConfigError, UnavailableError

PROMPTS = ["a red circle on a blue background", "a green square on a yellow background"]
CALL = dict(num_inference_steps=4, guidance_scale=7.5, output_type="np")


@pytest.fixture(scope="module")
def framework():
    return Framework()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino-cache")


@pytest.fixture(scope="module")
def eager(framework):
    return framework.build("stable-diffusion", progress=False)


@pytest.fixture(scope="module")
def compiled(framework, cache):
    return framework.build(
        "stable-diffusion", progress=False, backend="openvino", backend_options={"precision": "f32", "cache_dir": cache}
    )


def test_float32_images_match_eager(eager, compiled):
    """The same seeds through the compiled graphs: within 1e-3 (observed ~1e-5: only the order of float sums
    differs), across batch sizes, image sizes, guidance and chunked batches."""
    assert [s.from_cache for s in compiled.backend.startup] == [False, False, False]  # a fresh cache: converted
    for options in ({}, {"width": 96, "height": 64, "memory_budget": 1}):  # another size, one image per chunk
        ours = eager(PROMPTS, seed=11, **CALL, **options).images
        theirs = compiled(PROMPTS, seed=11, **CALL, **options).images
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() < 1e-3


def test_png_parameters_and_seeds_are_unchanged(eager, compiled):
    ours = eager(PROMPTS[0], seed=5, num_inference_steps=3)
    theirs = compiled(PROMPTS[0], seed=5, num_inference_steps=3)
    assert theirs.seeds == ours.seeds == [5]
    assert theirs.images[0].info["parameters"] == ours.images[0].info["parameters"]


@pytest.mark.parametrize("sampler, guider", [("euler_a", "apg"), ("dpmpp_sde", "cfg-zero-star")])
def test_other_samplers_and_guiders_run_unchanged_on_top(eager, compiled, sampler, guider):
    """Samplers and guiders are the pipeline's code around the models: the same on the compiled graphs."""
    try:
        for pipe in (eager, compiled):
            pipe.set_scheduler(sampler)
            pipe.set_guider(guider)
        ours = eager(PROMPTS[0], seed=3, **CALL)
        theirs = compiled(PROMPTS[0], seed=3, **CALL)
        assert np.abs(ours.images - theirs.images).max() < 1e-3
        assert ours.parameters[0] == theirs.parameters[0]
    finally:
        for pipe in (eager, compiled):
            pipe.set_scheduler("dpmpp")
            pipe.set_guider("cfg")


def test_second_start_comes_from_the_disk_cache_and_bf16_stays_close(framework, eager, compiled, cache):
    again = framework.build(
        "stable-diffusion", progress=False, backend="openvino", backend_options={"precision": "f32", "cache_dir": cache}
    )
    assert [s.from_cache for s in again.backend.startup] == [True, True, True]
    if "BF16" not in __import__("difframe_openvino.backend").backend.cpu_capabilities():
        pytest.skip("this CPU has no bfloat16 in hardware (AMX or AVX-512 bf16)")
    bf16 = framework.build(
        "stable-diffusion",
        progress=False,
        backend="openvino",
        backend_options={"precision": "bf16", "cache_dir": cache},
    )
    assert bf16.backend.precision == "bf16"
    assert [s.from_cache for s in bf16.backend.startup] == [True, True, True]  # the same IR, compiled for bf16
    ours = eager(PROMPTS, seed=11, **CALL).images
    theirs = bf16(PROMPTS, seed=11, **CALL).images
    difference = np.abs(ours - theirs)
    # bf16 keeps 8 bits of mantissa: pixels move by a few levels out of 255, the picture stays the same
    assert 0 < difference.mean() < 0.01
    assert difference.max() < 0.25


def test_threads_share_one_compiled_pipeline(eager, compiled):
    expected = {seed: eager(PROMPTS[0], seed=seed, **CALL).images for seed in (1, 2)}
    results: dict[int, np.ndarray] = {}

    def run(seed: int) -> None:
        results[seed] = compiled(PROMPTS[0], seed=seed, **CALL).images

    threads = [threading.Thread(target=run, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed, image in expected.items():
        assert np.abs(results[seed] - image).max() < 1e-3


def test_python_add_ons_and_kwargs_are_refused_at_call_time(compiled):
    class Scale:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
            return attn.default_forward(hidden_states, encoder_hidden_states, attention_mask)

    unet = compiled.unet
    with pytest.raises(ConfigError, match="takes no cross_attention_kwargs"):
        compiled(PROMPTS[0], seed=1, num_inference_steps=2, cross_attention_kwargs={"scale": 0.5})
    set_attention(unet, Scale())
    try:
        with pytest.raises(ConfigError, match="would skip the attention add-on Scale"):
            compiled(PROMPTS[0], seed=1, num_inference_steps=2)
    finally:
        set_attention(unet, None)
    handle = unet.conv_in.register_forward_hook(lambda *args: None)
    try:
        with pytest.raises(ConfigError, match="a forward hook on unet.conv_in"):
            compiled(PROMPTS[0], seed=1, num_inference_steps=2)
    finally:
        handle.remove()


def test_weights_changed_after_conversion_are_refused(framework, cache):
    pipe = framework.build(
        "stable-diffusion", progress=False, backend="openvino", backend_options={"precision": "f32", "cache_dir": cache}
    )
    with torch.no_grad():
        pipe.unet.conv_in.weight.add_(0.1)  # as merging a LoRA would
    with pytest.raises(ConfigError, match="weights of unet changed after the openvino backend converted it"):
        pipe(PROMPTS[0], seed=1, num_inference_steps=2)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"attention": "sliced"}, ConfigError, "backend 'openvino' cannot run with attention='sliced'"),
        ({"backend_options": {"granularity": "graph"}}, ConfigError, "granularity must be 'auto', 'whole'"),
        ({"ip_adapter": "h94/IP-Adapter"}, ConfigError, "ip_adapter="),
        ({"dtype": "float16"}, ConfigError, "dtype='float16'"),
        ({"device": "cuda"}, ConfigError, "device='cuda'"),
        ({"backend_options": {"precision": "fp8"}}, ConfigError, "precision must be 'auto', 'f32' or 'bf16'"),
        ({"backend_options": {"components": ["unet", "safety"]}}, ConfigError, "components must be"),
        ({"compile": True}, ValueError, "compile=True is the 'torch-compile' backend"),
    ],
)
def test_bad_combinations_are_refused_before_loading(framework, tmp_path, options, error, message):
    with pytest.raises(error, match=message):
        framework.build("stable-diffusion", model=tmp_path / "no-model", backend="openvino", **options)


def test_bf16_on_a_cpu_without_it_is_refused(framework, tmp_path, monkeypatch):
    monkeypatch.setattr("difframe_openvino.backend.cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))
    with pytest.raises(UnavailableError, match="needs a CPU that computes bfloat16 in hardware"):
        framework.build(
            "stable-diffusion", model=tmp_path / "no-model", backend="openvino", backend_options={"precision": "bf16"}
        )
    from difframe_openvino.backend import OpenVINOBackend

    assert OpenVINOBackend(precision="auto").precision == "f32"


def test_dtype_auto_gives_openvino_float32_weights(framework, tmp_path, cache):
    pipe = framework.build(
        "stable-diffusion",
        progress=False,
        dtype="auto",
        backend="openvino",
        backend_options={"precision": "f32", "cache_dir": cache, "components": ["vae"]},
    )
    assert pipe.unet.dtype == torch.float32


def test_command_line_backend_options_and_refusals(capsys, tmp_path):
    from difframe.cli import main
    from difframe_stable_diffusion.cli import parse_backend_options

    assert parse_backend_options(["precision=bf16", "num_threads=2", "components=unet,vae"]) == {
        "precision": "bf16",
        "num_threads": 2,
        "components": "unet,vae",
    }
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_backend_options(["precision"])
    argv = ["generate", "a red circle", "--steps", "2", "--out", str(tmp_path), "--backend", "openvino"]
    assert main([*argv, "--attention", "sliced"]) == 2
    assert "backend 'openvino' cannot run with attention='sliced'" in capsys.readouterr().err
    assert main([*argv, "--backend-option", "precision=fp8"]) == 2
    assert "precision must be 'auto', 'f32' or 'bf16'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written

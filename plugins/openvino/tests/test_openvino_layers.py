"""The OpenVINO backend's layer-granular UNet (granularity "layers"): one compiled graph per layer, the UNet's and its
blocks' Python between them, so inference hooks on blocks and layers run as on eager models. On the built-in model:
parity with eager with and without the step caches (contrib/step-cache, the same steps skipped), hooks added before
and after the build, removal restoring the compiled layer, and hooks inside a layer (token merging) refused by name
before any denoising."""

from __future__ import annotations

import difframe_step_cache  # noqa: F401  (contrib/step-cache, which make test installs: never skipped)
import numpy as np
import pytest
import torch
from difframe import Framework
from difframe.errors import ConfigError
from difframe.inference_hooks import HookSet, InferenceHook, hooks_on, replace_forward

PROMPTS = ["a red circle on a blue background", "a green square on a yellow background"]
CALL = dict(num_inference_steps=6, guidance_scale=7.5, output_type="np")
# the built-in UNet has two down blocks of one layer each: branch 1 starts at down_blocks.0.downsamplers.0, a layer
STEP_CACHES = [
    ("deepcache", {"interval": 3, "branch": 0}),
    ("deepcache", {"interval": 3, "branch": 1}),
    ("first-block-cache", {"threshold": 0.5}),  # at 0.2 the tiny model's first block moves too much to skip
]


@pytest.fixture(scope="module")
def framework():
    return Framework()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino-layers-cache")


@pytest.fixture(scope="module")
def eager(framework):
    return framework.build("stable-diffusion", progress=False)


def openvino(framework, cache, **options):
    backend_options = {"precision": "f32", "cache_dir": cache, "components": ["unet"]}
    backend_options |= options.pop("backend_options", {})
    return framework.build(
        "stable-diffusion", progress=False, backend="openvino", backend_options=backend_options, **options
    )


@pytest.fixture(scope="module")
def layers(framework, cache):
    return openvino(framework, cache, backend_options={"granularity": "layers"})


def run_both(eager, compiled, hook: str, options: dict) -> tuple[np.ndarray, np.ndarray, list, list]:
    ours = eager.add_hook(hook, **options)
    theirs = compiled.add_hook(hook, **options) if not compiled.hooks else compiled.hooks[0]
    try:
        expected = eager(PROMPTS, seed=11, **CALL).images
        got = compiled(PROMPTS, seed=11, **CALL).images
        return expected, got, list(ours.steps_run), list(theirs.steps_run)
    finally:
        eager.remove_hook(ours)
        compiled.remove_hook(theirs)


def test_layers_without_hooks_match_eager(eager, layers):
    labels = [s.label for s in layers.backend.startup]
    assert "unet" not in labels
    expected = {"conv_in", "time_embedding", "down_blocks.0.resnets.0", "down_blocks.0.attentions.0"}
    expected |= {"down_blocks.0.downsamplers.0", "mid_block.attentions.0", "up_blocks.0.upsamplers.0"}
    expected |= {"up_blocks.1.resnets.1", "conv_norm_out", "conv_out"}
    assert {f"unet.{name}" for name in expected} <= set(labels)
    assert layers.backend.unet_granularity == "layers"
    for options in ({}, {"width": 96, "height": 64, "memory_budget": 1}):  # dynamic sizes and batches
        expected = eager(PROMPTS, seed=11, **CALL, **options).images
        got = layers(PROMPTS, seed=11, **CALL, **options).images
        assert np.abs(expected - got).max() < 1e-3
    # the downsampler's graph takes inputs of 3 and more: a 16x16 image (2x2 latents) is refused with the figure
    with pytest.raises(ConfigError, match=r"latents of at least 3x3 .* got \(2, 2\)"):
        layers(PROMPTS[0], seed=1, num_inference_steps=1, width=16, height=16)


@pytest.mark.parametrize(("hook", "options"), STEP_CACHES)
def test_step_caches_run_around_compiled_layers(eager, layers, hook, options):
    """The step cache skips the same steps as on eager, and what runs gives the same image."""
    expected, got, steps_eager, steps_compiled = run_both(eager, layers, hook, options)
    assert steps_compiled == steps_eager
    assert False in steps_compiled  # some steps did skip part of the network
    assert np.abs(expected - got).max() < 1e-3


def test_hooks_given_to_build_compile_the_layers(framework, cache, eager, layers):
    """build(hooks=[...]) with granularity "auto": the hooks are there before the backend, which compiles layers,
    each read from the disk cache that the ``layers`` pipeline filled."""
    compiled = openvino(framework, cache, hooks=[("deepcache", {"interval": 3, "branch": 0})])
    assert compiled.backend.unet_granularity == "layers"
    assert [s.label for s in compiled.backend.startup] == [s.label for s in layers.backend.startup]
    assert all(s.from_cache for s in compiled.backend.startup)
    expected, got, steps_eager, steps_compiled = run_both(eager, compiled, "deepcache", {"interval": 3, "branch": 0})
    assert steps_compiled == steps_eager and False in steps_compiled
    assert np.abs(expected - got).max() < 1e-3


def test_hook_added_after_build_switches_auto_to_layers_and_removal_keeps_the_graphs(framework, cache, eager):
    compiled = openvino(framework, cache)
    assert compiled.backend.unet_granularity == "whole"
    downsampler = compiled.unet.down_blocks[0].downsamplers[0]
    assert "forward" not in downsampler.__dict__  # inside the one graph: its own forward never runs
    expected, got, steps_eager, steps_compiled = run_both(eager, compiled, "deepcache", {"interval": 3, "branch": 1})
    assert compiled.backend.unet_granularity == "layers"  # converted at the first call that had the hook
    assert steps_compiled == steps_eager
    assert np.abs(expected - got).max() < 1e-3
    # removed: the layer's own forward is its compiled graph again, not the eager class forward
    compiled_forward = downsampler.__dict__["forward"]
    assert not hooks_on(downsampler) and getattr(compiled_forward, "__name__", "") == "forward"
    assert compiled_forward.__qualname__.startswith("_layer_forward")
    again = compiled(PROMPTS, seed=11, **CALL).images
    assert np.abs(eager(PROMPTS, seed=11, **CALL).images - again).max() < 1e-3


def test_whole_granularity_refuses_hooks_naming_the_option(framework, cache, tmp_path):
    with pytest.raises(ConfigError, match=r"granularity='whole'.*'deepcache'.*'granularity': 'layers'"):
        openvino(framework, cache, hooks=["deepcache"], backend_options={"granularity": "whole"})
    whole = openvino(framework, cache, backend_options={"granularity": "whole"})
    hook = whole.add_hook("first-block-cache")
    with pytest.raises(ConfigError, match=r"granularity='whole'.*'first-block-cache' on unet.down_blocks.0"):
        whole(PROMPTS[0], seed=1, num_inference_steps=2)
    whole.remove_hook(hook)
    whole(PROMPTS[0], seed=1, num_inference_steps=2)  # the one graph again
    with pytest.raises(ConfigError, match="granularity must be 'auto', 'whole' or 'layers'"):
        framework.build("stable-diffusion", model=tmp_path, backend="openvino", backend_options={"granularity": "x"})


def test_hooks_inside_a_compiled_layer_are_refused_by_name(framework, cache, layers):
    """Token merging hooks the transformer blocks inside attentions.i: refused before any denoising."""
    import difframe_tome  # noqa: F401  (contrib/tome, which make test installs: never skipped)

    with pytest.raises(ConfigError, match=r"hook 'tome' on unet.down_blocks.0.attentions.0.transformer_blocks"):
        openvino(framework, cache, hooks=["tome"])
    hook = layers.add_hook("tome")
    try:
        with pytest.raises(ConfigError, match=r"inside the compiled layer unet.down_blocks.0.attentions.0\).*remove"):
            layers(PROMPTS[0], seed=1, num_inference_steps=2)
    finally:
        layers.remove_hook(hook)
    layers(PROMPTS[0], seed=1, num_inference_steps=2)


def test_hook_set_restores_the_forward_it_replaced():
    """HookSet.remove puts back an instance forward (a backend's graph) it wrapped, and the class's otherwise; a
    forward set beneath a hook (replace_forward) runs inside the hook and stays after the hook is removed."""

    class Twice(InferenceHook):
        targets = ("Linear",)

        def post_forward(self, module_name, module, args, kwargs, output):
            return output * 2

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    x = torch.ones(1, 2)

    def constant(*args):
        return torch.full((1, 2), 3.0)

    model[0].forward = constant
    hooks, hook = HookSet(), Twice()
    hooks.add(model, hook)
    assert torch.equal(model[0](x), torch.full((1, 2), 6.0))
    replace_forward(model[1], constant)  # under the hook already there
    assert torch.equal(model[1](x), torch.full((1, 2), 6.0))
    hooks.remove(hook)
    assert model[0].forward is constant and model[1].forward is constant
    plain = torch.nn.Linear(2, 2)
    hooks.add(torch.nn.Sequential(plain), hook)
    hooks.remove(hook)
    assert "forward" not in plain.__dict__  # the class's forward again

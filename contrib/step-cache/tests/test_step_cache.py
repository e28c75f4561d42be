"""The step caches on our pipeline: what a cached step computes (on direct UNet calls), state reset between calls,
guidance branches that come and go, the PNG record, and bad input refused before any denoising."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from difframe.errors import UnknownComponentError
from difframe.guidance import StepContext
from difframe.inference_hooks import at_step

STEPS = 7
PROMPT = "a red bicycle"


@pytest.fixture(scope="module")
def pipe(framework, tiny_model):
    built = framework.build("stable-diffusion", model=tiny_model)
    built.set_progress_bar_config(disable=True)
    built.scheduler = framework.scheduler("ddim", dict(built.scheduler.config))
    return built


@pytest.fixture
def clean(pipe):
    yield pipe
    pipe.set_guider("cfg")  # takes its own hooks (PAG's) off
    for hook in pipe.hooks:
        pipe.remove_hook(hook)


def _images(pipe, **kwargs):
    return pipe(PROMPT, seed=5, num_inference_steps=STEPS, output_type="np", **kwargs).images


def _unet_inputs(pipe, rows: int = 2):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(rows, 4, 16, 16, generator=generator)
    context = torch.randn(rows, 77, pipe.unet.config.cross_attention_dim, generator=generator)
    return sample, context


@pytest.mark.parametrize(("name", "options"), [("deepcache", {"interval": 5, "branch": 1}), ("first-block-cache", {})])
def test_cached_step_on_unchanged_input_repeats_the_full_output(clean, name, options):
    """A cached step whose inputs equal the full step's computes the same prediction: the kept features are
    what the skipped modules would have returned."""
    pipe = clean
    hook = pipe.add_hook(name, **options)
    sample, context = _unet_inputs(pipe)
    hook.reset()
    with torch.no_grad():
        with at_step(StepContext(0, STEPS, 500, ("uncond", "cond"), 1)):
            full = pipe.unet(sample, 500, context)
        with at_step(StepContext(1, STEPS, 500, ("uncond", "cond"), 1)):
            cached = pipe.unet(sample, 500, context)
        with at_step(StepContext(2, STEPS, 500, ("cond",), 1)):  # one branch of the kept rows
            cond_only = pipe.unet(sample[1:], 500, context[1:])
    assert hook.steps_run == [True, False, False]
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-6)
    torch.testing.assert_close(cond_only, full[1:], rtol=0, atol=1e-5)  # batch of 1: other kernels
    with torch.no_grad():  # outside a denoising loop the UNet runs as it is
        plain = pipe.unet(sample + 1, 500, context)
    assert float((plain - full).abs().max()) > 1e-3


def test_first_block_cache_runs_the_rest_when_the_first_block_changed(clean):
    pipe = clean
    hook = pipe.add_hook("first-block-cache", threshold=0.05)
    sample, context = _unet_inputs(pipe)
    hook.reset()
    with torch.no_grad():
        with at_step(StepContext(0, STEPS, 500, ("uncond", "cond"), 1)):
            pipe.unet(sample, 500, context)
        with at_step(StepContext(1, STEPS, 500, ("uncond", "cond"), 1)):
            moved = pipe.unet(sample * 3, 500, context)
    pipe.remove_hook(hook)
    with torch.no_grad():
        exact = pipe.unet(sample * 3, 500, context)
    assert hook.steps_run == [True, True] and hook.changes[1] > 0.05
    torch.testing.assert_close(moved, exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("name", "options"), [("deepcache", {}), ("first-block-cache", {"threshold": 0.5})])
def test_state_resets_between_calls_and_hooks_come_off(clean, name, options):
    pipe = clean
    exact = _images(pipe)
    hook = pipe.add_hook(name, **options)
    first = _images(pipe)
    runs = list(hook.steps_run)
    second = _images(pipe)
    assert hook.steps_run == runs and len(runs) == STEPS and runs[0] and not all(runs)
    np.testing.assert_array_equal(first, second)
    assert float(np.abs(first - exact).max()) > 1e-4
    assert pipe.guidance_record() == {"hooks": [{"name": name, **options}]}
    pipe.remove_hook(name)
    np.testing.assert_array_equal(_images(pipe), exact)


def test_tiny_threshold_runs_every_step_exactly(clean):
    pipe = clean
    exact = _images(pipe)
    hook = pipe.add_hook("first-block-cache", threshold=1e-9)
    np.testing.assert_allclose(_images(pipe), exact, rtol=0, atol=1e-6)
    assert hook.steps_run == [True] * STEPS


def test_guidance_branches_that_appear_force_a_full_step(clean):
    """Guidance from the middle on: the unconditional branch was never cached, so its first step runs in full;
    guidance that stops in the middle reuses the conditional rows of the kept batch."""
    pipe = clean
    hook = pipe.add_hook("deepcache", interval=2)
    pipe.set_guider("cfg", start=0.5)
    late = _images(pipe, guidance_scale=7.5)
    assert hook.steps_run == [True, False, True, True, True, False, True]
    pipe.set_guider("cfg", stop=0.5)
    early = _images(pipe, guidance_scale=7.5)
    assert hook.steps_run == [True, False, True, False, True, False, True]
    assert np.isfinite(late).all() and np.isfinite(early).all()


def test_first_block_cache_with_perturbed_attention_guidance(clean):
    """PAG's third branch (identity self-attention in the mid block) is cached with the other two (DeepCache with
    PAG is compared with the reference's PAG pipeline in test_parity_deepcache.py)."""
    pipe = clean
    pipe.set_guider("pag", pag_scale=2.0)
    exact = _images(pipe, guidance_scale=5.0)
    hook = pipe.add_hook("first-block-cache", threshold=0.5)
    cached = _images(pipe, guidance_scale=5.0)
    assert hook.steps_run[0] and not all(hook.steps_run) and np.isfinite(cached).all()
    assert float(np.abs(cached - exact).max()) > 1e-4


def test_bad_options_are_refused_by_name(clean):
    pipe = clean
    with pytest.raises(TypeError, match=r"'deepcache' has no option\(s\) 'cache_interval'; it takes branch, interval"):
        pipe.add_hook("deepcache", cache_interval=3)
    with pytest.raises(ValueError, match=r"'deepcache': bad option\(s\): interval=0: .*greater than or equal to 1"):
        pipe.add_hook("deepcache", interval=0)
    with pytest.raises(ValueError, match=r"threshold=-0.1: .*greater than 0"):
        pipe.add_hook("first-block-cache", threshold=-0.1)
    with pytest.raises(ValueError, match=r"interval='often'"):
        pipe.add_hook("deepcache", interval="often")
    with pytest.raises(
        ValueError, match=r"branch 6 is in down block 2, but this UNet has 2 down blocks: branches 0 to 5"
    ):
        pipe.add_hook("deepcache", branch=6)
    with pytest.raises(UnknownComponentError, match="deepcache"):
        pipe.add_hook("deep-cash")
    assert pipe.hooks == []


def test_two_step_caches_are_refused(clean, framework, tiny_model):
    pipe = clean
    pipe.add_hook("deepcache")
    with pytest.raises(ValueError, match=r"'deepcache' cannot run with 'first-block-cache' .*drop one of them"):
        pipe.add_hook("first-block-cache")
    assert [h.name for h in pipe.hooks] == ["deepcache"]
    with pytest.raises(ValueError, match="cannot run with"):  # at build: before any weight is read
        framework.build("stable-diffusion", model=tiny_model / "nowhere", hooks=["deepcache", "fbcache"])
    with pytest.raises(ValueError, match="interval=0"):
        framework.build("stable-diffusion", model=tiny_model / "nowhere", hooks=[("deepcache", {"interval": 0})])


def test_build_option(framework, tiny_model):
    hooks = [("deepcache", {"interval": 2, "branch": 3})]
    pipe = framework.build("stable-diffusion", model=tiny_model, scheduler="ddim", hooks=hooks)
    pipe.set_progress_bar_config(disable=True)
    (hook,) = pipe.hooks
    assert hook.name == "deepcache" and hook.description() == {"interval": 2, "branch": 3}
    images = pipe(PROMPT, seed=1, num_inference_steps=4, output_type="np").images
    assert np.isfinite(images).all() and hook.steps_run == [True, False, True, False]

"""DeepCache against the published `deepcache` package: its Stable Diffusion helper on the reference library's
pipeline and our hook on ours, over the same weights, give the same images (fp32, within 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest

STEPS = 7
TOL = 1e-4  # fp32 images in [0, 1], as the other end-to-end parity tests
PROMPT = "a red bicycle"


def _pair(framework, reference_pipeline, model, scheduler: str):
    ours = framework.build("stable-diffusion", model=model)
    ours.set_progress_bar_config(disable=True)
    ours.scheduler = framework.scheduler(scheduler, dict(ours.scheduler.config))
    return ours, reference_pipeline(model, scheduler=scheduler)


def _compare(framework, reference_pipeline, generators, model, interval, branch, guidance, scheduler="ddim"):
    from DeepCache import DeepCacheSDHelper

    ours, theirs = _pair(framework, reference_pipeline, model, scheduler)
    kwargs = dict(num_inference_steps=STEPS, guidance_scale=guidance, output_type="np")
    exact = ours(PROMPT, seed=5, **kwargs).images
    hook = ours.add_hook("deepcache", interval=interval, branch=branch)
    mine = ours(PROMPT, seed=5, **kwargs).images
    helper = DeepCacheSDHelper(pipe=theirs)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        reference = theirs(PROMPT, generator=generators([5]), **kwargs).images
    finally:
        helper.disable()
    difference = float(np.abs(mine - reference).max())
    assert difference <= TOL, f"interval {interval}, branch {branch}: max abs difference {difference:.2e}"
    assert hook.steps_run == [i % interval == 0 for i in range(STEPS)]
    if interval > 1:
        assert float(np.abs(mine - exact).max()) > 1e-4  # the cache is not vacuous


@pytest.mark.parametrize(("interval", "branch"), [(3, 0), (2, 1), (3, 2), (4, 3), (3, 5)])
@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_deepcache_matches_package_tiny(
    framework, reference_pipeline, generators, tiny_model, interval, branch, guidance
):
    _compare(framework, reference_pipeline, generators, tiny_model, interval, branch, guidance)


@pytest.mark.parametrize(("interval", "branch"), [(3, 0), (5, 4), (2, 8), (3, 11)])
def test_deepcache_matches_package_four_blocks(framework, reference_pipeline, generators, deep_model, interval, branch):
    _compare(framework, reference_pipeline, generators, deep_model, interval, branch, 7.5)


def test_deepcache_matches_package_euler(framework, reference_pipeline, generators, tiny_model):
    _compare(framework, reference_pipeline, generators, tiny_model, 3, 0, 7.5, scheduler="euler")


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_deepcache_with_pag_matches_reference_pag_pipeline(framework, generators, tiny_model, guidance):
    """Guiders and step caching compose: PAG's perturbed branch is cached with the others, as the helper does on
    the reference library's StableDiffusionPAGPipeline."""
    import diffusers
    from DeepCache import DeepCacheSDHelper

    ours = framework.build("stable-diffusion", model=tiny_model, guider="pag", guider_options={"pag_scale": 2.5})
    ours.set_progress_bar_config(disable=True)
    ours.scheduler = framework.scheduler("ddim", dict(ours.scheduler.config))
    hook = ours.add_hook("deepcache", interval=3, branch=1)
    theirs = diffusers.StableDiffusionPAGPipeline.from_pretrained(
        tiny_model, safety_checker=None, requires_safety_checker=False, pag_applied_layers=["mid"]
    )
    theirs.set_progress_bar_config(disable=True)
    theirs.scheduler = diffusers.DDIMScheduler.from_config(theirs.scheduler.config)
    helper = DeepCacheSDHelper(pipe=theirs)
    helper.set_params(cache_interval=3, cache_branch_id=1)
    helper.enable()
    kwargs = dict(num_inference_steps=STEPS, guidance_scale=guidance, output_type="np")
    mine = ours(PROMPT, seed=5, **kwargs).images
    reference = theirs(PROMPT, generator=generators([5]), pag_scale=2.5, **kwargs).images
    difference = float(np.abs(mine - reference).max())
    assert difference <= TOL, f"max abs difference {difference:.2e}"
    assert hook.steps_run == [i % 3 == 0 for i in range(STEPS)]


def test_pag_deepcache_and_token_merging_together_match_reference(framework, generators, tiny_model):
    """A guider, step caching and token merging at once (contrib/tome's hook): the same image as the reference PAG
    pipeline with the deepcache helper and tomesd (deterministic merging) applied."""
    import diffusers
    import tomesd
    from DeepCache import DeepCacheSDHelper

    ours = framework.build(
        "stable-diffusion",
        model=tiny_model,
        guider="pag",
        guider_options={"pag_scale": 2.5},
        hooks=[("tome", {"ratio": 0.5, "use_rand": False}), ("deepcache", {"interval": 3, "branch": 0})],
    )
    ours.set_progress_bar_config(disable=True)
    ours.scheduler = framework.scheduler("ddim", dict(ours.scheduler.config))
    theirs = diffusers.StableDiffusionPAGPipeline.from_pretrained(
        tiny_model, safety_checker=None, requires_safety_checker=False, pag_applied_layers=["mid"]
    )
    theirs.set_progress_bar_config(disable=True)
    theirs.scheduler = diffusers.DDIMScheduler.from_config(theirs.scheduler.config)
    kwargs = dict(num_inference_steps=STEPS, guidance_scale=5.0, output_type="np")
    plain = theirs(PROMPT, generator=generators([5]), pag_scale=2.5, **kwargs).images
    tomesd.apply_patch(theirs, ratio=0.5, use_rand=False)
    helper = DeepCacheSDHelper(pipe=theirs)
    helper.set_params(cache_interval=3, cache_branch_id=0)
    helper.enable()
    reference = theirs(PROMPT, generator=generators([5]), pag_scale=2.5, **kwargs).images
    mine = ours(PROMPT, seed=5, **kwargs).images
    difference = float(np.abs(mine - reference).max())
    assert difference <= TOL, f"max abs difference {difference:.2e}"
    assert float(np.abs(reference - plain).max()) > 1e-3
    assert [h.name for h in ours.hooks] == ["identity-self-attention", "tome", "deepcache"]

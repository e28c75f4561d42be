"""Guiders and inference hooks in the Stable Diffusion pipelines: the default unchanged, PAG against the reference
library's StableDiffusionPAGPipeline, hooks added/removed/recorded, bad input refused before denoising."""

from __future__ import annotations

import numpy as np
import pytest
from difframe.errors import UnknownComponentError
from difframe.inference_hooks import HookError, InferenceHook, Skip, current_step

STEPS = 3
TOL = 1e-4  # fp32 images in [0, 1], as the other end-to-end parity tests


def _images(pipe, **kwargs):
    return pipe("a red bicycle", seed=5, num_inference_steps=STEPS, output_type="np", **kwargs).images


@pytest.fixture(scope="module")
def pipe(h, framework, tiny_model):
    built = h.build(framework, tiny_model)
    built.scheduler = framework.scheduler("ddim", dict(built.scheduler.config))  # one denoiser call per step
    return built


@pytest.mark.parametrize("guidance_scale", [1.0, 5.0])
def test_pag_matches_reference_pag_pipeline(h, framework, tiny_model, guidance_scale):
    import diffusers

    ours = h.build(framework, tiny_model, guider="pag", guider_options={"pag_scale": 2.5, "layers": ["mid"]})
    theirs = diffusers.StableDiffusionPAGPipeline.from_pretrained(
        tiny_model, safety_checker=None, requires_safety_checker=False, pag_applied_layers=["mid"]
    )
    theirs.set_progress_bar_config(disable=True)
    theirs.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(theirs.scheduler.config)
    ours.scheduler = framework.scheduler("dpmpp", dict(ours.scheduler.config))
    kwargs = dict(num_inference_steps=STEPS, guidance_scale=guidance_scale, output_type="np")
    mine = ours("a red bicycle", seed=5, **kwargs).images
    reference = theirs("a red bicycle", generator=h.generators([5]), pag_scale=2.5, **kwargs).images
    difference = float(np.abs(mine - reference).max())
    assert difference <= TOL, f"max abs difference {difference:.2e}"
    plain = theirs("a red bicycle", generator=h.generators([5]), pag_scale=0.0, **kwargs).images
    assert float(np.abs(plain - reference).max()) > 1e-3  # the perturbation is not vacuous


def test_default_guider_is_cfg_and_an_interval_changes_the_image(pipe):
    exact = _images(pipe)
    pipe.set_guider("cfg")
    assert np.array_equal(_images(pipe), exact)
    pipe.set_guider("cfg", start=0.0, stop=0.5)
    try:
        late = _images(pipe)
        assert float(np.abs(late - exact).max()) > 1e-3
        assert pipe.guidance_record() == {"guider": {"name": "cfg", "start": 0.0, "stop": 0.5}}
    finally:
        pipe.set_guider("cfg")


@pytest.mark.parametrize(("name", "options"), [("apg", {"eta": 0.0, "momentum": -0.5}), ("cfg-zero-star", {})])
def test_alternative_guiders_run_and_differ_from_cfg(pipe, name, options):
    exact = _images(pipe, guidance_scale=7.5)
    pipe.set_guider(name, **options)
    try:
        other = _images(pipe, guidance_scale=7.5)
    finally:
        pipe.set_guider("cfg")
    assert np.isfinite(other).all() and float(np.abs(other - exact).max()) > 1e-4


class Recorder(InferenceHook):
    targets = ("mid_block",)

    def __init__(self) -> None:
        self.seen: list[tuple[int, tuple[str, ...]]] = []

    def reset(self) -> None:
        self.seen = []

    def pre_forward(self, module_name, module, args, kwargs):
        step = current_step()
        self.seen.append((step.index, step.branches))


class Doubler(InferenceHook):
    targets = ("mid_block",)

    def post_forward(self, module_name, module, args, kwargs, output):
        return output * 2


class Replay(InferenceHook):
    """Skips the mid block after step 0 by returning its first output: a tiny cache."""

    targets = ("mid_block",)
    stateful = True

    def reset(self) -> None:
        self.cached = None

    def pre_forward(self, module_name, module, args, kwargs):
        return Skip(self.cached) if self.cached is not None else None

    def post_forward(self, module_name, module, args, kwargs, output):
        self.cached = output


def test_hooks_see_the_step_run_in_order_and_are_removed(pipe):
    exact = _images(pipe)
    recorder = pipe.add_hook(Recorder())
    doubler = pipe.add_hook(Doubler())
    try:
        doubled = _images(pipe)
        assert recorder.seen == [(i, ("uncond", "cond")) for i in range(STEPS)]  # reset per call
        assert float(np.abs(doubled - exact).max()) > 1e-3
    finally:
        pipe.remove_hook(doubler)
        pipe.remove_hook(recorder)
    assert np.array_equal(_images(pipe), exact)
    assert "forward" not in vars(pipe.unet.mid_block)  # unwrapped


def test_a_skipping_hook_keeps_state_within_a_call_only(pipe):
    replay = pipe.add_hook(Replay())
    try:
        first, second = _images(pipe), _images(pipe)
    finally:
        pipe.remove_hook(replay)
    assert np.array_equal(first, second)  # state reset between calls
    assert float(np.abs(first - _images(pipe)).max()) > 1e-4


def test_hooks_beside_attention_slicing_and_offload(h, framework, tiny_model):
    plain = h.build(framework, tiny_model)
    exact = _images(plain)
    pipe = h.build(
        framework,
        tiny_model,
        attention_slicing=1,
        cpu_offload=True,
        hooks=[("identity-self-attention", {"layers": "mid", "branch": "cond"})],
    )
    hooked = _images(pipe)
    assert float(np.abs(hooked - exact).max()) > 1e-4
    pipe.remove_hook("identity-self-attention")
    assert float(np.abs(_images(pipe) - exact).max()) <= TOL


def test_a_raising_hook_names_itself_and_the_module(pipe):
    class Broken(InferenceHook):
        targets = ("mid_block",)

        def pre_forward(self, module_name, module, args, kwargs):
            raise RuntimeError("boom")

    broken = pipe.add_hook(Broken())
    try:
        with pytest.raises(HookError, match=r"'Broken' failed in pre_forward of module 'mid_block'.*boom"):
            _images(pipe)
    finally:
        pipe.remove_hook(broken)


def test_bad_names_and_options_are_refused_before_loading(h, framework, tiny_model):
    with pytest.raises(UnknownComponentError, match="no guider named 'nope'.*Installed guiders: .*apg.*cfg"):
        h.build(framework, tiny_model, guider="nope")
    with pytest.raises(UnknownComponentError, match="no inference hook named 'nope'"):
        h.build(framework, tiny_model, hooks=["nope"])
    with pytest.raises(TypeError, match="guider 'apg' has no option.*'bogus'.*it takes .*momentum"):
        h.build(framework, tiny_model, guider="apg", guider_options={"bogus": 1})
    with pytest.raises(TypeError, match="has no option.*'ratio'"):
        h.build(framework, tiny_model, hooks=[("identity-self-attention", {"ratio": 0.5})])
    with pytest.raises(ValueError, match="guidance interval"):
        h.build(framework, tiny_model, guider="cfg", guider_options={"start": 0.8, "stop": 0.2})


def test_hooks_listed_by_difframe_plugins(capsys):
    import json

    from difframe.cli import main

    assert main(["plugins", "--json", "--kind", "guider"]) == 0
    names = {r["name"] for p in json.loads(capsys.readouterr().out) for r in p["registrations"]}
    assert {"cfg", "apg", "cfg-zero-star", "pag"} <= names
    assert main(["plugins", "--json", "--kind", "inference_hook"]) == 0
    names = {r["name"] for p in json.loads(capsys.readouterr().out) for r in p["registrations"]}
    assert "identity-self-attention" in names

"""The combination math against the reference library's guiders (diffusers.guiders) on identical inputs."""

from __future__ import annotations

import pytest
import torch
from difframe.guidance import ClassifierFreeGuidance, StepContext
from difframe_guiders.adaptive_projected import AdaptiveProjectedGuidance
from difframe_guiders.perturbed_attention import PerturbedAttentionGuidance
from difframe_guiders.zero_star import ClassifierFreeZeroStarGuidance

TOL = 1e-6  # the same float32 arithmetic in a different order: a few ulps of values of order 10


def _predictions(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(2, 4, 8, 8, generator=g)
    return {"cond": cond, "uncond": cond + 0.3 * torch.randn(2, 4, 8, 8, generator=g)}


def _run_reference(guider, steps, predictions_per_step):
    out = []
    for i, predictions in enumerate(predictions_per_step):
        guider.set_state(step=i, num_inference_steps=steps, timestep=torch.tensor(999 - i * 100))
        momentum = getattr(guider, "adaptive_projected_guidance_momentum", None)
        if i == 0 and momentum is not None:  # what the reference's prepare_inputs does at step 0
            from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer

            guider.momentum_buffer = MomentumBuffer(momentum)
        out.append(guider.forward(pred_cond=predictions["cond"], pred_uncond=predictions["uncond"]).pred)
    return out


def _run_ours(guider, steps, predictions_per_step):
    guider = guider.begin(steps)
    out = []
    for i, predictions in enumerate(predictions_per_step):
        branches = guider.branches(i, steps, True)
        step = StepContext(index=i, total=steps, timestep=999 - i * 100, branches=branches, rows=2)
        out.append(guider.combine({b: predictions[b] for b in branches}, step, 7.5, 0.0))
    return out


CASES = [
    ("ClassifierFreeGuidance", {"guidance_rescale": 0.7}, ClassifierFreeGuidance, {"guidance_rescale": 0.7}),
    ("ClassifierFreeGuidance", {"start": 0.25, "stop": 0.75}, ClassifierFreeGuidance, {"start": 0.25, "stop": 0.75}),
    (
        "AdaptiveProjectedGuidance",
        {"adaptive_projected_guidance_momentum": -0.5, "adaptive_projected_guidance_rescale": 15.0, "eta": 0.0},
        AdaptiveProjectedGuidance,
        {"momentum": -0.5, "norm_threshold": 15.0, "eta": 0.0},
    ),
    (
        "AdaptiveProjectedGuidance",
        {"adaptive_projected_guidance_rescale": 2.0, "eta": 0.5, "guidance_rescale": 0.3},
        AdaptiveProjectedGuidance,
        {"norm_threshold": 2.0, "eta": 0.5, "guidance_rescale": 0.3},
    ),
    ("ClassifierFreeZeroStarGuidance", {"zero_init_steps": 1}, ClassifierFreeZeroStarGuidance, {}),
    (
        "ClassifierFreeZeroStarGuidance",
        {"zero_init_steps": 0, "stop": 0.5},
        ClassifierFreeZeroStarGuidance,
        {"zero_init_steps": 0, "stop": 0.5},
    ),
]


@pytest.mark.parametrize(("reference_name", "reference_options", "ours", "options"), CASES)
def test_combination_matches_reference_guider(reference_name, reference_options, ours, options):
    import diffusers.guiders as reference

    steps = 4
    inputs = [_predictions(seed) for seed in range(steps)]
    theirs = _run_reference(getattr(reference, reference_name)(guidance_scale=7.5, **reference_options), steps, inputs)
    mine = _run_ours(ours(**options), steps, inputs)
    for a, b in zip(mine, theirs):
        assert float((a - b).abs().max()) <= TOL * max(1.0, float(b.abs().max()))


def test_pag_combination_matches_reference_pag_guider():
    import diffusers.guiders as reference

    g = torch.Generator().manual_seed(0)
    cond, uncond, perturbed = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    theirs_guider = reference.PerturbedAttentionGuidance(
        guidance_scale=5.0, perturbed_guidance_scale=2.5, perturbed_guidance_layers=[0]
    )
    theirs_guider.set_state(step=1, num_inference_steps=10, timestep=torch.tensor(999))
    theirs = theirs_guider.forward(pred_cond=cond, pred_uncond=uncond, pred_cond_skip=perturbed).pred
    guider = PerturbedAttentionGuidance(pag_scale=2.5).begin(10)
    step = StepContext(1, 10, 999, ("uncond", "cond", "perturbed"), 2)  # within the reference's default 1%-20%
    mine = guider.combine({"uncond": uncond, "cond": cond, "perturbed": perturbed}, step, 5.0, 0.0)
    assert float((mine - theirs).abs().max()) <= TOL * max(1.0, float(theirs.abs().max()))


def test_state_does_not_leak_between_calls():
    guider = AdaptiveProjectedGuidance(momentum=0.5)
    inputs = [_predictions(seed) for seed in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(_run_ours(guider, 3, inputs), _run_ours(guider, 3, inputs)))

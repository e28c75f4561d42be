"""LCM and TCD against the reference library, and as difframe builds them."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from difframe import Framework
from difframe.tolerance import assert_trajectories_match
from difframe_plugin_lcm import plugin
from difframe_plugin_lcm.lcm import LCMScheduler
from difframe_plugin_lcm.tcd import TCDScheduler

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SD15 = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}


def model(x: torch.Tensor, t: Any) -> torch.Tensor:
    t = float(t)
    return torch.tanh(x) * 0.8 + 0.2 * math.cos(t * 0.01) + 0.1 * torch.sin(3 * x + t * 0.003)


def trajectory_parity(ours: Any, theirs: Any, step_kwargs: dict[str, Any], **set_kwargs: Any) -> None:
    ours.set_timesteps(**set_kwargs)
    theirs.set_timesteps(**set_kwargs)
    assert torch.equal(ours.timesteps, theirs.timesteps)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert_trajectories_match(ours, theirs, model, x, seed=5, step_kwargs=step_kwargs)


LCM_CONFIGS = [
    {},
    SD15,
    {"beta_schedule": "linear", "prediction_type": "v_prediction", "original_inference_steps": 100},
    {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample", "clip_sample": True},
    {"thresholding": True, "prediction_type": "sample", "set_alpha_to_one": False},
    {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True},
]


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 20, 50])
@pytest.mark.parametrize("case", range(len(LCM_CONFIGS)))
def test_lcm_matches_reference(case: int, steps: int) -> None:
    config = LCM_CONFIGS[case]
    trajectory_parity(
        LCMScheduler.from_config(config), diffusers.LCMScheduler.from_config(config), {}, num_inference_steps=steps
    )


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("steps", [1, 4, 8, 20, 50])
@pytest.mark.parametrize("case", [0, 2, 3, 5])
def test_tcd_matches_reference(case: int, steps: int, eta: float) -> None:
    config = LCM_CONFIGS[case]
    trajectory_parity(
        TCDScheduler.from_config(config),
        diffusers.TCDScheduler.from_config(config),
        {"eta": eta},
        num_inference_steps=steps,
    )


@pytest.mark.parametrize("cls", [LCMScheduler, TCDScheduler])
def test_image_to_image_and_custom_timesteps_match_reference(cls: type) -> None:
    reference = getattr(diffusers, cls.__name__)
    trajectory_parity(cls(), reference(), {}, num_inference_steps=4, strength=0.5)
    trajectory_parity(cls(), reference(), {}, timesteps=[999, 759, 499, 259])
    trajectory_parity(cls(), reference(), {}, timesteps=[999, 759, 499, 259], strength=0.5)
    trajectory_parity(cls(), reference(), {}, num_inference_steps=6, original_inference_steps=30)


def test_tcd_explicit_original_steps_use_every_timestep() -> None:
    trajectory_parity(TCDScheduler(), diffusers.TCDScheduler(), {}, num_inference_steps=6, original_inference_steps=50)


def test_add_noise_matches_reference() -> None:
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([999, 259])
    expected = diffusers.LCMScheduler().add_noise(x, noise, t)
    torch.testing.assert_close(LCMScheduler().add_noise(x, noise, t), expected)


def test_framework_builds_lcm_from_a_model_config() -> None:
    fw = Framework(plugins=[plugin])
    assert fw.schedulers == ["lcm", "tcd"]
    assert fw.registry.for_layout("diffusers", "LCMScheduler").name == "lcm"
    scheduler = fw.scheduler("LCM", {"_class_name": "PNDMScheduler", **SD15, "skip_prk_steps": True})
    assert isinstance(scheduler, LCMScheduler) and scheduler.config.steps_offset == 1
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 759, 499, 259]
    assert isinstance(fw.scheduler("tcd"), TCDScheduler)


def test_bad_input_is_a_clear_error() -> None:
    scheduler = LCMScheduler()
    with pytest.raises(ValueError, match="cannot exceed the 50 distillation timesteps"):
        scheduler.set_timesteps(60)
    with pytest.raises(ValueError, match="at least 1"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="only one of"):
        scheduler.set_timesteps(4, timesteps=[999, 500])
    with pytest.raises(ValueError, match="strictly decreasing"):
        scheduler.set_timesteps(timesteps=[500, 999])
    with pytest.raises(ValueError, match="strength"):
        scheduler.set_timesteps(4, strength=0)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        LCMScheduler().step(torch.zeros(1), 999, torch.zeros(1))
    tcd = TCDScheduler()
    tcd.set_timesteps(4)
    with pytest.raises(ValueError, match="eta"):
        tcd.step(torch.zeros(1, 1), tcd.timesteps[0], torch.zeros(1, 1), eta=1.5)

"""Properties of LCM and TCD for any valid config (hypothesis)."""

from __future__ import annotations

from typing import Any

import torch
from difframe_plugin_lcm.lcm import LCMScheduler
from difframe_plugin_lcm.tcd import TCDScheduler
from hypothesis import assume, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Any, int, float]:
    cls = draw(st.sampled_from([LCMScheduler, TCDScheduler]))
    original = draw(st.integers(1, 100))
    strength = draw(st.sampled_from([1.0, 0.75, 0.5]))
    assume(int(original * strength) >= 1)  # otherwise there is no distillation timestep to sample (a clear error)
    steps = draw(st.integers(1, int(original * strength)))
    config = {
        "original_inference_steps": original,
        "beta_schedule": draw(st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2", "sqrt"])),
        "prediction_type": draw(st.sampled_from(["epsilon", "v_prediction", "sample"])),
    }
    if config["prediction_type"] == "v_prediction" and draw(st.booleans()):
        config["rescale_betas_zero_snr"] = True
    return cls.from_config(config), steps, strength


@SETTINGS
@given(cases(), st.floats(0, 1))
def test_timesteps_decrease_in_range_and_trajectories_stay_finite(case: tuple[Any, int, float], eta: float) -> None:
    scheduler, steps, strength = case
    scheduler.set_timesteps(steps, strength=strength)
    timesteps = scheduler.timesteps
    assert len(timesteps) == steps
    assert ((timesteps >= 0) & (timesteps <= 999)).all() and (timesteps[1:] < timesteps[:-1]).all()
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    kwargs = {"eta": eta} if isinstance(scheduler, TCDScheduler) else {}
    for t in timesteps:
        out = scheduler.step(torch.tanh(x), t, x, generator=generator, **kwargs)
        x = out.prev_sample
        assert torch.isfinite(x).all() and torch.isfinite(out.pred_original_sample).all()


@SETTINGS
@given(st.lists(st.floats(1e-4, 0.05), min_size=99, max_size=99), st.sampled_from([LCMScheduler, TCDScheduler]))
def test_add_noise_at_timestep_zero_is_the_identity(betas: list[float], cls: type) -> None:
    scheduler = cls(trained_betas=[0.0, *sorted(betas)], num_train_timesteps=100)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(scheduler.add_noise(x, noise, torch.tensor([0, 0])), x)

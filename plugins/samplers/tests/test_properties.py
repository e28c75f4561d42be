"""Properties that hold for every sampler and every valid config (hypothesis)."""

from __future__ import annotations

import inspect
import os
import typing
import warnings
from typing import Any

import pytest
import torch
from difframe import Framework
from difframe_samplers import plugin
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FW = Framework(plugins=[plugin])
NAMES = ["ddpm", "ddim", "pndm", "plms", "euler", "euler_a", "heun", "lms", "dpm2", "dpm2_a", "dpmpp_2m"]
NAMES += ["dpmpp_2m_sde", "dpmpp_3m_sde", "dpmpp_sde", "unipc", "deis", "dpmpp_2s", "dpmpp_3s", "dpmpp_2s_a"]
SETTINGS = settings(
    max_examples=int(os.environ.get("SAMPLER_EXAMPLES", 40)),
    deadline=None,
    derandomize=os.environ.get("SAMPLER_EXAMPLES") is None,
    suppress_health_check=[HealthCheck.too_slow],
)


def parameters(name: str) -> dict[str, Any]:
    factory = FW.load_factory(FW.get("scheduler", name))
    hints = typing.get_type_hints(factory.__init__)
    return {p: hints.get(p) for p in inspect.signature(factory.__init__).parameters if p != "self"}


@st.composite
def configs(draw: st.DrawFn) -> tuple[str, dict[str, Any], int]:
    name = draw(st.sampled_from(NAMES))
    known = parameters(name)
    T = draw(st.sampled_from([100, 1000]))
    beta_start = draw(st.floats(1e-5, 2e-3))
    config: dict[str, Any] = {
        "num_train_timesteps": T,
        "beta_start": beta_start,
        "beta_end": draw(st.floats(beta_start * 2, 0.03)),
        "beta_schedule": draw(
            st.sampled_from(["linear", "scaled_linear", "squaredcos_cap_v2", "sqrt", "exp", "laplace", "sigmoid"])
        ),
        "prediction_type": draw(st.sampled_from(typing.get_args(known["prediction_type"]))),
        "timestep_spacing": draw(st.sampled_from(["leading", "trailing", "linspace"])),
    }
    sigmas = draw(st.sampled_from([None, "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"]))
    if sigmas in known:
        config[sigmas] = True
    if config["prediction_type"] == "v_prediction" and draw(st.booleans()):
        config["rescale_betas_zero_snr"] = True  # zero terminal SNR needs v-prediction
    steps = draw(st.integers(1, 60))
    if config["timestep_spacing"] == "leading" and draw(st.booleans()):
        config["steps_offset"] = 1
        steps = min(steps, T // 2)  # the offset must not push the first timestep past T - 1
    if name == "pndm":
        steps = max(steps, 4)  # the Runge-Kutta warm-up needs 4 steps
    return name, config, steps


def model(x: torch.Tensor, t: Any) -> torch.Tensor:
    return torch.tanh(x) * 0.9 + 0.1 * torch.cos(torch.as_tensor(float(t)) * 0.01)


@SETTINGS
@given(configs())
def test_timesteps_decrease_and_stay_in_range(case: tuple[str, dict[str, Any], int]) -> None:
    name, config, steps = case
    scheduler = FW.scheduler(name, config)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.double()
    T = config["num_train_timesteps"]
    assert ((timesteps >= 0) & (timesteps <= T - 1)).all(), timesteps
    # Second-order samplers and PNDM visit some timesteps twice in a row; otherwise the schedule strictly decreases.
    distinct = torch.unique_consecutive(timesteps)
    respaced = config.get("use_karras_sigmas") or config.get("use_exponential_sigmas")
    rounds = hasattr(scheduler, "model_outputs") or name.startswith("dpm2")
    if respaced and rounds:
        # These samplers round Karras/exponential timesteps to integers (as the reference library does), so two
        # neighbouring σs can share a timestep, or DPM2's unrounded midpoint can sit just below the next one; the
        # σs themselves strictly decrease.
        assert (distinct[1:] <= distinct[:-1] + 1).all(), timesteps
        sigmas = torch.unique_consecutive(scheduler.sigmas)
        assert (sigmas[1:] < sigmas[:-1]).all(), scheduler.sigmas
    elif name.startswith(("dpm2_a", "dpmpp_2s_a")):
        # The ancestral midpoint sqrt(σ·σ_down) of DPM2 a and DPM++ 2S a (eta 1) is exactly σ_next
        # (σ_down = σ_next²/σ), so each midpoint timestep repeats the next one up to rounding: the schedule only
        # never increases.
        assert (distinct[1:] <= distinct[:-1] + 1e-3).all(), timesteps
    else:
        assert (distinct[1:] < distinct[:-1]).all(), timesteps
    if hasattr(scheduler, "sigmas") and scheduler.order == 1:
        assert len(scheduler.sigmas) == len(scheduler.timesteps) + 1


@SETTINGS
@given(configs(), st.integers(0, 2**16))
def test_trajectories_stay_finite(case: tuple[str, dict[str, Any], int], seed: int) -> None:
    name, config, steps = case
    scheduler = FW.scheduler(name, config)
    scheduler.set_timesteps(steps)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(seed)) * scheduler.init_noise_sigma
    generator = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsde's own tolerance warnings
        for t in scheduler.timesteps:
            out = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, generator=generator)
            x = out.prev_sample
            assert torch.isfinite(x).all(), (name, config, steps, float(t))
            if out.pred_original_sample is not None:
                assert torch.isfinite(out.pred_original_sample).all()


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(st.lists(st.floats(1e-4, 0.05), min_size=99, max_size=99), st.integers(0, 2**16))
def test_add_noise_at_timestep_zero_is_the_identity(name: str, betas: list[float], seed: int) -> None:
    """With β_0 = 0 nothing is noised at t = 0, so add_noise there must return the input exactly."""
    scheduler = FW.scheduler(name, trained_betas=[0.0, *sorted(betas)], num_train_timesteps=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # log σ_0 = -inf while laying out the schedule
        if "timesteps" in inspect.signature(scheduler.set_timesteps).parameters:
            scheduler.set_timesteps(timesteps=[60, 30, 0])
        else:
            scheduler = FW.scheduler(name, trained_betas=[0.0, *sorted(betas)], num_train_timesteps=100)
            scheduler = type(scheduler).from_config(scheduler.config, timestep_spacing="leading", steps_offset=0)
            scheduler.set_timesteps(5)
    assert float(scheduler.timesteps[-1]) == 0
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed + 1))
    zero = scheduler.timesteps[-1:].repeat(2)
    assert torch.equal(scheduler.add_noise(x, noise, zero), x)

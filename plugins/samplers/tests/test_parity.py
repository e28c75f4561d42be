"""Whole trajectories against the reference library (diffusers): the same synthetic model, the same seeds, every
intermediate sample equal within float32 rounding, measured on the computation (difframe.tolerance says how)."""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
from typing import Any

import pytest
import torch
from difframe.tolerance import assert_trajectories_match

diffusers = pytest.importorskip("diffusers")

from difframe_samplers import ddim, ddpm, deis, dpm2, dpm_single, dpmpp, euler, heun, lms, pndm, unipc  # noqa: E402

STEPS = (1, 4, 20, 50)
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def model(x: torch.Tensor, t: Any) -> torch.Tensor:
    """A smooth stand-in for a denoiser: depends on the sample and the timestep, bounded like a real output."""
    t = float(t)
    return torch.tanh(x) * 0.8 + 0.2 * math.cos(t * 0.01) + 0.1 * torch.sin(3 * x + t * 0.003)


def cases(preds: tuple[str, ...], karras: bool = True, zero_snr: bool = True) -> list[dict[str, Any]]:
    """Options that cover every schedule, prediction type and spacing, with and without Karras/exponential σs."""
    found = [
        {**SD, "prediction_type": preds[0], "timestep_spacing": "leading", "steps_offset": 1},
        {"beta_schedule": "linear", "prediction_type": preds[1], "timestep_spacing": "trailing"},
        {"beta_schedule": "squaredcos_cap_v2", "prediction_type": preds[-1], "timestep_spacing": "linspace"},
    ]
    if karras:
        found += [
            {**SD, "prediction_type": "epsilon", "timestep_spacing": "linspace", "use_karras_sigmas": True},
            {"beta_schedule": "linear", "prediction_type": "v_prediction", "use_karras_sigmas": True},
            {**SD, "prediction_type": "epsilon", "use_exponential_sigmas": True},
        ]
    if zero_snr:  # zero terminal SNR only makes sense with v-prediction
        found.append(
            {**SD, "prediction_type": "v_prediction", "timestep_spacing": "trailing", "rescale_betas_zero_snr": True}
        )
    return found


ALL = ("epsilon", "v_prediction", "sample")
EPS_V = ("epsilon", "v_prediction")

# sampler id -> (ours, reference, option sets, step kwargs)
PAIRS: dict[str, tuple[type, type, list[dict[str, Any]], dict[str, Any]]] = {
    "ddpm": (ddpm.DDPMScheduler, diffusers.DDPMScheduler, cases(ALL, karras=False), {}),
    "ddpm-large": (ddpm.DDPMScheduler, diffusers.DDPMScheduler, [{**SD, "variance_type": "fixed_large"}], {}),
    "ddpm-log": (ddpm.DDPMScheduler, diffusers.DDPMScheduler, [{"variance_type": "fixed_small_log"}], {}),
    "ddpm-threshold": (
        ddpm.DDPMScheduler,
        diffusers.DDPMScheduler,
        [{"thresholding": True, "sample_max_value": 1.5}],
        {},
    ),
    "ddim": (ddim.DDIMScheduler, diffusers.DDIMScheduler, cases(ALL, karras=False), {}),
    "ddim-eta": (ddim.DDIMScheduler, diffusers.DDIMScheduler, [{**SD, "clip_sample": False}], {"eta": 1.0}),
    "ddim-noclip": (
        ddim.DDIMScheduler,
        diffusers.DDIMScheduler,
        [{**SD, "clip_sample": False, "set_alpha_to_one": False}],
        {},
    ),
    "pndm": (pndm.PNDMScheduler, diffusers.PNDMScheduler, cases(EPS_V, karras=False, zero_snr=False), {}),
    "plms": (
        pndm.PNDMScheduler,
        diffusers.PNDMScheduler,
        [{**c, "skip_prk_steps": True} for c in cases(EPS_V, karras=False, zero_snr=False)],
        {},
    ),
    "euler": (euler.EulerScheduler, diffusers.EulerDiscreteScheduler, cases(ALL), {}),
    "euler-sigma-min": (
        euler.EulerScheduler,
        diffusers.EulerDiscreteScheduler,
        [{**SD, "final_sigmas_type": "sigma_min"}],
        {},
    ),
    "euler-churn": (euler.EulerScheduler, diffusers.EulerDiscreteScheduler, [SD], {"s_churn": 2.0, "s_tmin": 1.0}),
    "euler_a": (
        euler.EulerAncestralScheduler,
        diffusers.EulerAncestralDiscreteScheduler,
        cases(EPS_V, karras=False),
        {},
    ),
    "heun": (heun.HeunScheduler, diffusers.HeunDiscreteScheduler, cases(ALL, zero_snr=False), {}),
    "heun-clip": (heun.HeunScheduler, diffusers.HeunDiscreteScheduler, [{**SD, "clip_sample": True}], {}),
    "lms": (lms.LMSScheduler, diffusers.LMSDiscreteScheduler, cases(ALL, zero_snr=False), {}),
    "dpm2": (dpm2.DPM2Scheduler, diffusers.KDPM2DiscreteScheduler, cases(EPS_V, zero_snr=False), {}),
    "dpm2_a": (
        dpm2.DPM2AncestralScheduler,
        diffusers.KDPM2AncestralDiscreteScheduler,
        cases(EPS_V, zero_snr=False),
        {},
    ),
    "dpmpp_2m": (dpmpp.DPMSolverMultistepScheduler, diffusers.DPMSolverMultistepScheduler, cases(ALL), {}),
    "dpmpp_2m_sde": (
        dpmpp.DPMSolverMultistepScheduler,
        diffusers.DPMSolverMultistepScheduler,
        [{**c, "algorithm_type": "sde-dpmsolver++"} for c in cases(ALL)],
        {},
    ),
    "dpmpp_variants": (
        dpmpp.DPMSolverMultistepScheduler,
        diffusers.DPMSolverMultistepScheduler,
        [
            {**SD, "solver_order": 3},
            {**SD, "solver_order": 3, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
            {**SD, "solver_type": "heun", "lower_order_final": False},
            {**SD, "solver_type": "heun", "algorithm_type": "sde-dpmsolver++"},
            {**SD, "final_sigmas_type": "sigma_min", "euler_at_final": True},
            {**SD, "solver_order": 1},
            {"thresholding": True, "prediction_type": "sample", "lambda_min_clipped": -5.1},
            {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True},
        ],
        {},
    ),
    "dpm_single": (dpm_single.DPMSolverSinglestepScheduler, diffusers.DPMSolverSinglestepScheduler, cases(ALL), {}),
    "dpm_single_variants": (
        dpm_single.DPMSolverSinglestepScheduler,
        diffusers.DPMSolverSinglestepScheduler,
        [
            {**SD, "solver_order": 3},
            {**SD, "solver_order": 3, "solver_type": "heun", "final_sigmas_type": "sigma_min"},
            {**SD, "solver_order": 3, "use_karras_sigmas": True, "lower_order_final": True},
            {**SD, "solver_order": 1},
            {**SD, "solver_type": "heun", "final_sigmas_type": "sigma_min"},
            {**SD, "algorithm_type": "sde-dpmsolver++", "solver_order": 3},
            {**SD, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3},
            {**SD, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction"},
            {"thresholding": True, "prediction_type": "sample", "lambda_min_clipped": -5.1},
        ],
        {},
    ),
    "unipc": (unipc.UniPCScheduler, diffusers.UniPCMultistepScheduler, cases(ALL), {}),
    "unipc_variants": (
        unipc.UniPCScheduler,
        diffusers.UniPCMultistepScheduler,
        [
            {**SD, "solver_order": 3, "use_karras_sigmas": True},
            {**SD, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
            {**SD, "predict_x0": False, "final_sigmas_type": "sigma_min"},
            {**SD, "predict_x0": False, "prediction_type": "v_prediction", "final_sigmas_type": "sigma_min"},
            {**SD, "disable_corrector": [0, 2], "lower_order_final": False},
            {"thresholding": True, "prediction_type": "sample"},
        ],
        {},
    ),
    "deis": (deis.DEISScheduler, diffusers.DEISMultistepScheduler, cases(ALL, zero_snr=False), {}),
    "deis_variants": (
        deis.DEISScheduler,
        diffusers.DEISMultistepScheduler,
        [{**SD, "solver_order": 3}, {**SD, "solver_order": 3, "use_karras_sigmas": True}, {**SD, "solver_order": 1}],
        {},
    ),
    # DPM-Solver's noise-prediction algorithms (they end at sigma_min: the reference refuses σ = 0 for them).
    "dpmsolver": (
        dpmpp.DPMSolverMultistepScheduler,
        diffusers.DPMSolverMultistepScheduler,
        [{**c, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"} for c in cases(ALL)]
        + [{**SD, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3}],
        {},
    ),
    "sde-dpmsolver": (
        dpmpp.DPMSolverMultistepScheduler,
        diffusers.DPMSolverMultistepScheduler,
        [{**c, "algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"} for c in cases(ALL)]
        + [{**SD, "algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun"}],
        {},
    ),
    "dpmpp_respacings": (
        dpmpp.DPMSolverMultistepScheduler,
        diffusers.DPMSolverMultistepScheduler,
        [
            {**SD, "use_lu_lambdas": True},
            {"beta_schedule": "squaredcos_cap_v2", "use_lu_lambdas": True, "prediction_type": "v_prediction"},
            {**SD, "use_beta_sigmas": True},
            {**SD, "use_beta_sigmas": True, "algorithm_type": "sde-dpmsolver++", "final_sigmas_type": "sigma_min"},
        ],
        {},
    ),
    # Beta σs (Lee et al. 2024) in every sampler that the reference offers them in.
    **{
        f"{name}-beta-sigmas": (ours, theirs, [{**SD, "use_beta_sigmas": True}], {})
        for name, ours, theirs in [
            ("euler", euler.EulerScheduler, diffusers.EulerDiscreteScheduler),
            ("heun", heun.HeunScheduler, diffusers.HeunDiscreteScheduler),
            ("lms", lms.LMSScheduler, diffusers.LMSDiscreteScheduler),
            ("dpm2", dpm2.DPM2Scheduler, diffusers.KDPM2DiscreteScheduler),
            ("dpm2_a", dpm2.DPM2AncestralScheduler, diffusers.KDPM2AncestralDiscreteScheduler),
            ("dpm_single", dpm_single.DPMSolverSinglestepScheduler, diffusers.DPMSolverSinglestepScheduler),
            ("unipc", unipc.UniPCScheduler, diffusers.UniPCMultistepScheduler),
            ("deis", deis.DEISScheduler, diffusers.DEISMultistepScheduler),
        ]
    },
    "euler-continuous": (
        euler.EulerScheduler,
        diffusers.EulerDiscreteScheduler,
        [
            {**SD, "timestep_type": "continuous", "prediction_type": "v_prediction"},
            {**SD, "timestep_type": "continuous", "prediction_type": "v_prediction", "use_karras_sigmas": True},
        ],
        {},
    ),
    # The reference's extra beta schedules, in the samplers that have them there.
    "ddpm-schedules": (
        ddpm.DDPMScheduler,
        diffusers.DDPMScheduler,
        [{"beta_schedule": "laplace"}, {"beta_schedule": "sigmoid", "prediction_type": "v_prediction"}],
        {},
    ),
    "heun-exp": (heun.HeunScheduler, diffusers.HeunDiscreteScheduler, [{"beta_schedule": "exp"}], {}),
}

if importlib.util.find_spec("torchsde"):
    from difframe_samplers import dpmpp_sde

    PAIRS["dpmpp_sde"] = (
        dpmpp_sde.DPMSolverSDEScheduler,
        diffusers.DPMSolverSDEScheduler,
        [{**c, "noise_sampler_seed": 7} for c in cases(EPS_V, zero_snr=False)],
        {},
    )


def trajectory_parity(
    ours: Any, theirs: Any, steps: int, step_kwargs: dict[str, Any], method_rtol: float = 0.0
) -> None:
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    if hasattr(theirs, "set_begin_index"):  # the reference's own start-index guess fails on repeated timesteps
        theirs.set_begin_index(0)
    assert len(ours.timesteps) == len(theirs.timesteps)
    if not torch.isfinite(theirs.timesteps).all():  # the reference overflows (see docs/samplers.md); ours must not
        assert torch.isfinite(ours.timesteps).all()
        return
    torch.testing.assert_close(ours.timesteps.double(), theirs.timesteps.double(), atol=1e-3, rtol=0)
    torch.testing.assert_close(
        torch.as_tensor(float(ours.init_noise_sigma)), torch.as_tensor(float(theirs.init_noise_sigma))
    )
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    sample = noise * theirs.init_noise_sigma
    assert_trajectories_match(ours, theirs, model, sample, seed=42, step_kwargs=step_kwargs, method_rtol=method_rtol)


GRID = [
    pytest.param(name, k, steps, id=f"{name}-{k}-{steps}")
    for name, (_, _, options, _) in PAIRS.items()
    for k in range(len(options))
    for steps in STEPS
    if not (name == "pndm" and steps < 4)  # PNDM's Runge-Kutta warm-up needs 4 steps (tested in test_samplers)
]


@functools.cache
def built(name: str, case: int) -> tuple[Any, Any]:
    """Both schedulers for one option set (some reference constructors are slow: built once, then copied)."""
    ours_cls, theirs_cls, options, _ = PAIRS[name]
    return ours_cls.from_config(options[case]), theirs_cls.from_config(options[case])


@pytest.mark.filterwarnings("ignore:Should have")  # torchsde, for the reference's Brownian tree and ours
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the reference's numpy 2 warnings
@pytest.mark.parametrize(("name", "case", "steps"), GRID)
def test_trajectory_matches_reference(name: str, case: int, steps: int) -> None:
    step_kwargs = PAIRS[name][3]
    ours, theirs = (copy.deepcopy(s) for s in built(name, case))
    # LMS: the reference integrates its coefficients numerically on float32 values; ours are exact integrals.
    trajectory_parity(ours, theirs, steps, step_kwargs, method_rtol=1e-5 if name == "lms" else 0.0)

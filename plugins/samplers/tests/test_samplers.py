"""The samplers as users meet them: names, configs from model folders, saving, swapping, errors, noise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from difframe import Framework
from difframe.errors import ConfigError, UnavailableError, UnknownComponentError
from difframe.scheduling import make_alphas_cumprod, make_betas
from difframe.tolerance import assert_trajectories_match
from difframe_samplers import plugin
from difframe_samplers.pndm import PNDMScheduler

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the reference on numpy 2

# The scheduler/ folder of Stable Diffusion 1.5, as published.
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
# Stable Diffusion 2.1 (768, v-prediction).
SD21 = {
    "_class_name": "DDIMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
BASE_NAMES = ["ddpm", "ddim", "pndm", "plms", "euler", "euler_a", "heun", "lms", "dpm2", "dpm2_a", "dpmpp_2m"]
BASE_NAMES += ["dpmpp_2m_sde", "dpmpp_sde", "unipc", "deis"]


@pytest.fixture(scope="module")
def fw() -> Framework:
    return Framework(plugins=[plugin])


def model(x: torch.Tensor, t: Any) -> torch.Tensor:
    return torch.tanh(x) * 0.8 + 0.1 * torch.sin(3 * x + float(t) * 0.003)


def denoise(scheduler: Any, steps: int, seed: int = 0, shape: tuple[int, ...] = (1, 4, 8, 8)) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * scheduler.init_noise_sigma
    generator = torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x, generator=generator).prev_sample
    return x


# --- names ----------------------------------------------------------------------------------------------------
WEB_UI = {
    "DPM++ 2M Karras": ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++ 2m karras": ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "DPM++ 2M": ("dpmpp_2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp": ("dpmpp_2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "DPM++ 2M SDE Karras": (
        "dpmpp_2m_sde_karras",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++"},
    ),
    "DPM++ 3M SDE": ("dpmpp_3m_sde", "DPMSolverMultistepScheduler", {"solver_order": 3}),
    "DPM++ SDE Karras": ("dpmpp_sde_karras", "DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "Euler a": ("euler_a", "EulerAncestralScheduler", {}),
    "Euler": ("euler", "EulerScheduler", {"use_karras_sigmas": False}),
    "Heun": ("heun", "HeunScheduler", {}),
    "LMS Karras": ("lms_karras", "LMSScheduler", {"use_karras_sigmas": True}),
    "DPM2 a Karras": ("dpm2_a_karras", "DPM2AncestralScheduler", {"use_karras_sigmas": True}),
    "DPM2": ("dpm2", "DPM2Scheduler", {}),
    "PLMS": ("plms", "PNDMScheduler", {"skip_prk_steps": True}),
    "DDIM": ("ddim", "DDIMScheduler", {}),
    "UniPC": ("unipc", "UniPCScheduler", {}),
    "DEIS": ("deis", "DEISScheduler", {}),
}


@pytest.mark.parametrize("label", WEB_UI)
def test_web_ui_names_build_the_right_sampler(fw: Framework, label: str) -> None:
    name, class_name, expected = WEB_UI[label]
    assert fw.get("scheduler", label).name == name
    scheduler = fw.scheduler(label)
    assert type(scheduler).__name__ == class_name
    for key, value in expected.items():
        assert scheduler.config[key] == value


def test_every_registration_builds_and_steps(fw: Framework) -> None:
    assert len(fw.schedulers) >= 26
    for name in fw.schedulers:
        registration = fw.get("scheduler", name)
        scheduler = fw.scheduler(name)
        for key, value in registration.spec.options.items():
            assert scheduler.config[key] == value, name
        assert torch.isfinite(denoise(scheduler, 5)).all(), name


def test_each_layout_class_is_loaded_by_exactly_one_name(fw: Framework) -> None:
    loads = [pair for reg in fw.registry.all("scheduler") for pair in reg.spec.loads]
    assert len(loads) == len(set(loads))
    expected = {
        "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
        "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler",
        "DPMSolverSDEScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler", "DPMSolverSinglestepScheduler",
    }  # fmt: skip
    assert {class_name for _, class_name in loads} == expected
    for library, class_name in loads:
        registration = fw.registry.for_layout(library, class_name, "scheduler")
        scheduler = fw.scheduler(registration.name)
        assert type(scheduler).layout_name == (library, class_name)


def test_unknown_name_lists_the_installed_ones(fw: Framework) -> None:
    with pytest.raises(UnknownComponentError, match="Did you mean 'euler_a'"):
        fw.scheduler("euler_aa")
    with pytest.raises(UnknownComponentError, match="difframe-plugin-lcm"):
        fw.scheduler("lcm")


def test_listing_does_not_import_torch() -> None:
    code = "import sys, difframe; assert difframe.Framework().schedulers; assert 'torch' not in sys.modules, 'torch'"
    env = {**os.environ, "DIFFRAME_LOAD_PLUGINS": "difframe-samplers"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_dpmpp_sde_says_when_torchsde_is_missing(monkeypatch: pytest.MonkeyPatch, fw: Framework) -> None:
    from difframe import availability

    monkeypatch.setitem(sys.modules, "torchsde", None)  # find_spec now fails, as when it is not installed
    availability._package_present.cache_clear()
    try:
        assert fw.get("scheduler", "dpmpp_sde").unavailable_reason == "package torchsde not installed"
        with pytest.raises(UnavailableError, match="torchsde"):
            fw.scheduler("DPM++ SDE")
        assert fw.get("scheduler", "dpmpp_2m_sde").unavailable_reason is None
    finally:
        availability._package_present.cache_clear()


# --- configs from model folders, saving and swapping ------------------------------------------------------------
def test_stable_diffusion_folder_builds_dpmpp_with_the_models_schedule(tmp_path: Path, fw: Framework) -> None:
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15))
    pndm_class = fw.load_factory(fw.registry.for_layout("diffusers", "PNDMScheduler", "scheduler"))
    config = pndm_class.load_config(tmp_path, subfolder="scheduler")
    ours = fw.scheduler("dpmpp_2m_karras", config)
    theirs = diffusers.DPMSolverMultistepScheduler.from_config(config, use_karras_sigmas=True)
    torch.testing.assert_close(ours.alphas_cumprod, diffusers.PNDMScheduler.from_config(config).alphas_cumprod)
    assert ours.config.steps_offset == 1 and ours.config.skip_prk_steps is True  # unknown keys are kept
    ours.set_timesteps(25)
    theirs.set_timesteps(25)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert_trajectories_match(ours, theirs, model, x)


@pytest.mark.parametrize("name", BASE_NAMES)
def test_save_config_round_trip_and_reference_loads_it(tmp_path: Path, fw: Framework, name: str) -> None:
    scheduler = fw.scheduler(name, SD21)
    scheduler.save_config(tmp_path)
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == type(scheduler).layout_name[1]
    again = type(scheduler).from_pretrained(tmp_path)
    assert dict(again.config) == dict(scheduler.config)
    reference = getattr(diffusers, saved["_class_name"]).from_pretrained(tmp_path)
    for key in ("num_train_timesteps", "beta_schedule", "prediction_type", "timestep_spacing", "steps_offset"):
        if key in reference.config:
            assert reference.config[key] == scheduler.config[key], key
    torch.testing.assert_close(
        torch.as_tensor(float(reference.init_noise_sigma)), torch.as_tensor(float(scheduler.init_noise_sigma))
    )


def test_any_config_swaps_into_any_sampler(fw: Framework) -> None:
    for source in BASE_NAMES:
        config = fw.scheduler(source, SD15).config
        for target in BASE_NAMES:
            swapped = fw.scheduler(target, config)
            assert swapped.config.beta_schedule == "scaled_linear" and swapped.config.beta_end == 0.012
            torch.testing.assert_close(
                swapped.alphas_cumprod, make_alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear")
            )
            swapped.set_timesteps(4)


def test_options_a_sampler_lacks_do_not_leak_in(fw: Framework) -> None:
    """Keys kept from another sampler's config ride along in the config but do not change this sampler."""
    euler = fw.scheduler("euler_karras", SD15, final_sigmas_type="sigma_min", sigma_min=0.5, sigma_max=5.0)
    heun = fw.scheduler("heun", euler.config, use_karras_sigmas=False)
    assert heun.config.final_sigmas_type == "sigma_min" and heun.config.sigma_min == 0.5  # kept for saving
    reference = diffusers.HeunDiscreteScheduler.from_config(SD15)
    heun.set_timesteps(10)
    reference.set_timesteps(10)
    torch.testing.assert_close(heun.sigmas, reference.sigmas)
    euler.set_timesteps(10)
    assert float(euler.sigmas[0]) == pytest.approx(5.0) and float(euler.sigmas[-1]) > 0


def test_reference_configs_swap_in(fw: Framework) -> None:
    """Configs the reference library writes for one sampler load into another of ours (solver names included)."""
    for source in (
        diffusers.UniPCMultistepScheduler,
        diffusers.DEISMultistepScheduler,
        diffusers.DPMSolverMultistepScheduler,
    ):
        config = dict(source.from_config(SD15).config)
        for target in ("dpmpp_2m", "unipc", "deis", "euler"):
            assert torch.isfinite(denoise(fw.scheduler(target, config), 6)).all()


# --- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BASE_NAMES)
def test_bad_step_counts_are_clear_errors(fw: Framework, name: str) -> None:
    scheduler = fw.scheduler(name)
    with pytest.raises(ValueError, match="at least 1"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="cannot exceed num_train_timesteps"):
        scheduler.set_timesteps(1001)
    with pytest.raises(TypeError, match="must be an int"):
        scheduler.set_timesteps(2.5)
    if name == "ddpm":  # DDPM may step the whole training chain (t -> t - 1) without set_timesteps
        return
    with pytest.raises((RuntimeError, ValueError), match="set_timesteps"):
        fresh = fw.scheduler(name)
        x = torch.zeros(1, 4, 2, 2)
        fresh.step(x, 999, x)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler", "heun", "lms", "dpmpp_2m", "unipc", "deis"])
def test_explicit_timesteps(fw: Framework, name: str) -> None:
    scheduler = fw.scheduler(name)
    scheduler.set_timesteps(timesteps=[900, 500, 100])
    assert [int(t) for t in scheduler.timesteps][-1] == 100
    assert torch.isfinite(denoise_from_current(scheduler)).all()
    with pytest.raises(ValueError, match="only one of"):
        scheduler.set_timesteps(10, timesteps=[900, 500])
    with pytest.raises(ValueError, match="strictly decreasing"):
        scheduler.set_timesteps(timesteps=[100, 500])
    with pytest.raises(ValueError, match=r"lie in \[0, 999\]"):
        scheduler.set_timesteps(timesteps=[1500, 500])


def denoise_from_current(scheduler: Any) -> torch.Tensor:
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    return x


def test_explicit_sigmas_euler(fw: Framework) -> None:
    scheduler = fw.scheduler("euler")
    scheduler.set_timesteps(sigmas=[14.0, 5.0, 1.0, 0.0])
    assert scheduler.num_inference_steps == 3 and float(scheduler.sigmas[0]) == 14.0
    reference = diffusers.EulerDiscreteScheduler()
    reference.set_timesteps(sigmas=[14.0, 5.0, 1.0, 0.0])
    torch.testing.assert_close(scheduler.timesteps, reference.timesteps)
    with pytest.raises(ValueError, match="must not increase"):
        scheduler.set_timesteps(sigmas=[1.0, 5.0, 0.0])
    with pytest.raises(ValueError, match="positive except the final one"):
        scheduler.set_timesteps(sigmas=[1.0, 0.0, 0.0])


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("name", ["euler", "lms"])
def test_own_sigmas_round_trip_with_sigma_min(fw: Framework, name: str, karras: bool) -> None:
    """set_timesteps(sigmas=s.sigmas) reproduces the schedule, also when the final σ repeats the last step's σ."""
    options = {**SD15, "final_sigmas_type": "sigma_min", "use_karras_sigmas": karras, "timestep_spacing": "linspace"}
    if name == "lms":
        options.pop("final_sigmas_type")
    scheduler = fw.scheduler(name, options)
    scheduler.set_timesteps(10)
    sigmas, timesteps = scheduler.sigmas.clone(), scheduler.timesteps.clone()
    scheduler.set_timesteps(sigmas=sigmas)
    torch.testing.assert_close(scheduler.sigmas, sigmas, atol=0, rtol=0)
    torch.testing.assert_close(scheduler.timesteps, timesteps, atol=1e-4, rtol=0)
    reference = diffusers.EulerDiscreteScheduler.from_config(options) if name == "euler" else None
    if reference is not None:
        reference.set_timesteps(sigmas=sigmas.numpy())
        torch.testing.assert_close(scheduler.timesteps, reference.timesteps)
        torch.testing.assert_close(scheduler.sigmas, reference.sigmas)
        assert denoise(scheduler, len(timesteps), shape=(1, 4, 4, 4)).isfinite().all()


def test_bad_config_values_name_the_field(fw: Framework) -> None:
    with pytest.raises(ConfigError, match="beta_schedule"):
        fw.scheduler("euler", beta_schedule="cosine")
    with pytest.raises(ConfigError, match="prediction_type"):
        fw.scheduler("ddim", prediction_type="flow_prediction")
    with pytest.raises(ConfigError, match="timestep_spacing"):
        fw.scheduler("dpmpp", timestep_spacing="even")
    with pytest.raises(ConfigError, match="solver_order"):
        fw.scheduler("unipc", solver_order=5)
    with pytest.raises(ValueError, match="cannot be combined"):
        fw.scheduler("euler", use_karras_sigmas=True, use_exponential_sigmas=True)
    with pytest.raises(ValueError, match="Runge-Kutta warm-up needs at least 4 steps"):
        fw.scheduler("pndm").set_timesteps(2)
    with pytest.raises(ValueError, match="past the last training timestep 999"):
        fw.scheduler("ddim", steps_offset=1).set_timesteps(1000)
    with pytest.raises(ValueError, match="cannot be combined"):
        fw.scheduler("euler_karras").set_timesteps(timesteps=[900, 100])


# --- noise schedules -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_noise_schedules_match_reference(schedule: str, zero_snr: bool) -> None:
    reference = diffusers.DDIMScheduler(beta_schedule=schedule, rescale_betas_zero_snr=zero_snr)
    ours = make_alphas_cumprod(1000, 0.0001, 0.02, schedule, None, zero_snr)
    torch.testing.assert_close(ours, reference.alphas_cumprod, atol=0, rtol=0)


def test_sqrt_schedule_is_diffusion_lm() -> None:
    T = 1000
    betas = make_betas(T, 0.0001, 0.02, "sqrt")
    assert ((betas > 0) & (betas <= 0.999)).all()
    alphas_cumprod = torch.cumprod(1 - betas.double(), 0)
    assert (alphas_cumprod[1:] < alphas_cumprod[:-1]).all()
    # ᾱ_k telescopes to alpha_bar((k+1)/T) / alpha_bar(0) with alpha_bar(t) = 1 - sqrt(t + 1e-4).
    k = torch.arange(0, T - 10, dtype=torch.float64)
    expected = (1 - torch.sqrt((k + 1) / T + 1e-4)) / (1 - 0.01)
    torch.testing.assert_close(alphas_cumprod[: T - 10], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", BASE_NAMES)
def test_sqrt_schedule_samples(fw: Framework, name: str) -> None:
    assert torch.isfinite(denoise(fw.scheduler(name, beta_schedule="sqrt"), 10)).all()


# --- randomness and image-to-image -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", BASE_NAMES)
def test_generator_controls_the_noise(fw: Framework, name: str) -> None:
    stochastic = fw.get("scheduler", name).spec.stochastic
    first, again = denoise(fw.scheduler(name), 6, seed=1), denoise(fw.scheduler(name), 6, seed=1)
    assert torch.equal(first, again)
    other = denoise(fw.scheduler(name), 6, seed=2)
    assert torch.equal(first, other) != stochastic


@pytest.mark.parametrize("name", BASE_NAMES)
def test_add_noise_matches_reference(fw: Framework, name: str) -> None:
    ours = fw.scheduler(name, SD15)
    theirs = getattr(diffusers, type(ours).layout_name[1]).from_config(dict(ours.config))
    ours.set_timesteps(20)
    theirs.set_timesteps(20)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    timesteps = ours.timesteps[[4, 8, 12]]
    expected = theirs.add_noise(x, noise, theirs.timesteps[[4, 8, 12]])
    torch.testing.assert_close(ours.add_noise(x, noise, timesteps), expected, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("name", ["euler", "euler_a", "heun", "dpm2", "dpmpp_2m", "unipc", "ddim"])
def test_image_to_image_start_in_the_middle(fw: Framework, name: str) -> None:
    """A pipeline that skips the first steps: add_noise at the start timestep, then denoise the rest."""
    ours = fw.scheduler(name, SD15)
    theirs = getattr(diffusers, type(ours).layout_name[1]).from_config(dict(ours.config))
    start = 10 * ours.order
    starts = []
    for scheduler in (ours, theirs):
        scheduler.set_timesteps(20)
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        starts.append(scheduler.add_noise(x, noise, scheduler.timesteps[start : start + 1]))
    torch.testing.assert_close(starts[0], starts[1], atol=1e-5, rtol=1e-6)
    timesteps = (ours.timesteps[start:], theirs.timesteps[start:])
    assert_trajectories_match(ours, theirs, model, starts[1], seed=2, timesteps=timesteps)


@pytest.mark.parametrize("name", ["euler_a", "ddpm", "dpmpp_2m_sde", "dpm2_a"])
def test_one_generator_per_image_matches_reference(fw: Framework, name: str) -> None:
    """Pipelines pass a list of generators, one per image in the batch."""
    ours = fw.scheduler(name, SD15)
    theirs = getattr(diffusers, type(ours).layout_name[1]).from_config(dict(ours.config))
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * theirs.init_noise_sigma
    assert_trajectories_match(ours, theirs, model, x, seed=[3, 4])


def test_pipeline_set_scheduler_keeps_the_noise_schedule(fw: Framework) -> None:
    from difframe.testing import make_toy_pipeline

    pipe = make_toy_pipeline()
    pipe.framework = fw
    toy_config = dict(pipe.scheduler.config)
    for label in ("euler_a", "DPM++ 2M Karras", "unipc", "ddim"):
        scheduler = pipe.set_scheduler(label)
        assert scheduler is pipe.scheduler and scheduler.config.beta_schedule == toy_config["beta_schedule"]
        assert scheduler.config.num_train_timesteps == toy_config["num_train_timesteps"]
    assert pipe.scheduler.config.use_karras_sigmas is True  # carried along from "DPM++ 2M Karras", as configs are
    assert torch.isfinite(pipe(steps=3)).all()


@pytest.mark.parametrize(
    ("name", "schedule"),
    [
        ("ddpm", {"timesteps": [999, 800, 601, 400, 200, 50, 0]}),
        ("euler", {"timesteps": [999, 800, 601, 400, 200, 50, 0]}),
        ("euler", {"sigmas": [14.6, 8.0, 3.0, 1.1, 0.3, 0.0]}),
        ("heun", {"timesteps": [999, 700, 400, 100]}),
        ("dpmpp_2m", {"timesteps": [999, 800, 601, 400, 200, 50]}),
        ("dpmpp_2m_sde", {"timesteps": [999, 800, 601, 400, 200, 50]}),
    ],
)
def test_explicit_schedules_match_reference(fw: Framework, name: str, schedule: dict[str, list[float]]) -> None:
    ours = fw.scheduler(name, SD15)
    theirs = getattr(diffusers, type(ours).layout_name[1]).from_config(dict(ours.config))
    ours.set_timesteps(**schedule)
    theirs.set_timesteps(**schedule)
    torch.testing.assert_close(ours.timesteps.double(), theirs.timesteps.double(), atol=1e-3, rtol=0)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * theirs.init_noise_sigma
    assert_trajectories_match(ours, theirs, model, x, seed=3)


def test_generator_list_must_match_the_batch(fw: Framework) -> None:
    scheduler = fw.scheduler("euler_a")
    scheduler.set_timesteps(4)
    x = torch.zeros(2, 4, 4, 4)
    generators = [torch.Generator().manual_seed(s) for s in range(3)]
    with pytest.raises(ValueError, match="got 3 generators for a batch of 2"):
        scheduler.step(x, scheduler.timesteps[0], x, generator=generators)


def test_pndm_phases_can_be_called_directly() -> None:
    """step_prk and step_plms, as reference users call them, walk the same trajectory as the reference's."""

    class Phases:  # calls each phase by name, as a loop written for the reference would
        def __init__(self, sampler: Any) -> None:
            self.sampler, self.timesteps = sampler, sampler.timesteps

        def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> Any:
            warm_up = self.sampler.counter < len(self.sampler.prk_timesteps)
            return (self.sampler.step_prk if warm_up else self.sampler.step_plms)(model_output, timestep, sample)

    config = {**SD15, "skip_prk_steps": False}
    ours, theirs = PNDMScheduler.from_config(config), diffusers.PNDMScheduler.from_config(config)
    for sampler in (ours, theirs):
        sampler.set_timesteps(10)
    sample = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    assert assert_trajectories_match(Phases(ours), Phases(theirs), model, sample) == len(theirs.timesteps)
    with pytest.raises(RuntimeError, match="Runge-Kutta calls .* have run"):
        ours.step_prk(sample, ours.timesteps[-1], sample)
    with pytest.raises(RuntimeError, match="call set_timesteps"):
        PNDMScheduler().step_plms(sample, 999, sample)


@pytest.mark.parametrize("karras", [False, True])
@pytest.mark.parametrize("steps", [4, 20])
def test_dpmpp_2s_ancestral_without_noise_is_the_reference_dpm_solver_2s(steps: int, karras: bool) -> None:
    """The reference library has no DPM++ 2S a. Its deterministic core (eta=0) is DPM-Solver++(2S) with the
    intermediate point at the midpoint in λ: the reference's singlestep solver (second order, midpoint rule) given
    the same noise levels, σ_0, mid_0, σ_1, mid_1, ..., reproduces each call but the last (an Euler step to 0)."""
    from difframe_samplers.dpmpp_2s_ancestral import DPMSolver2SAncestralScheduler

    config = {**SD15, "use_karras_sigmas": karras}
    ours = DPMSolver2SAncestralScheduler.from_config(config, eta=0.0)
    ours.set_timesteps(steps)
    calls = 2 * (steps - 1)
    theirs = diffusers.DPMSolverSinglestepScheduler.from_config(
        {**config, "solver_order": 2, "lower_order_final": False, "final_sigmas_type": "sigma_min"}
    )
    theirs.set_timesteps(calls)
    theirs.sigmas = ours.sigmas[: calls + 1].clone()  # the same noise levels, ending at σ_{n-1}
    theirs.set_begin_index(0)

    class VariancePreserving:  # ours seen in x_t = x_σ / sqrt(σ² + 1), the reference's parameterization
        def __init__(self, sampler: Any) -> None:
            self.sampler, self.timesteps = sampler, sampler.timesteps

        def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> Any:
            s = self.sampler
            j = s.index_for_timestep(timestep) if s.step_index is None else s.step_index
            scale, scale_next = (float(s.sigmas[j]) ** 2 + 1) ** 0.5, (float(s.sigmas[j + 1]) ** 2 + 1) ** 0.5
            out = s.step(model_output, timestep, sample * scale)
            return type(out)(out.prev_sample / scale_next, out.pred_original_sample)

    sample = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    calls_compared = assert_trajectories_match(
        VariancePreserving(ours), theirs, model, sample, timesteps=(ours.timesteps[:calls], ours.timesteps[:calls])
    )
    assert calls_compared == calls


def test_dpmpp_2s_ancestral_noise(fw: Framework) -> None:
    """Each step goes down to σ_down and noise σ_up brings it back to σ_next; the seed decides the noise."""
    sampler = fw.scheduler("DPM++ 2S a Karras", SD15)
    sampler.set_timesteps(10)
    for sigma, down, up, _ in sampler._steps[:-1]:
        assert 0 < down < sigma and up > 0
    next_sigmas = [s for s, *_ in sampler._steps[1:]] + [0.0]
    for (_, down, up, _), sigma_next in zip(sampler._steps, next_sigmas):
        assert down**2 + up**2 == pytest.approx(sigma_next**2, rel=1e-9, abs=1e-12)
    assert len(sampler.timesteps) == 2 * 10 - 1
    a, b, c = denoise(sampler, 10, seed=1), denoise(sampler, 10, seed=1), denoise(sampler, 10, seed=2)
    assert torch.equal(a, b) and not torch.allclose(a, c) and torch.isfinite(a).all()
    with pytest.raises(ConfigError, match="eta"):
        fw.scheduler("dpmpp_2s_a", eta="a lot")
    with pytest.raises(ValueError, match="eta must be at least 0"):
        fw.scheduler("dpmpp_2s_a", eta=-1.0)


def test_dpm_solver_combinations_the_reference_fails_on_are_clear_errors(fw: Framework) -> None:
    with pytest.raises(ValueError, match="use_karras_sigmas and use_lu_lambdas cannot be combined"):
        fw.scheduler("dpmpp_2m", use_karras_sigmas=True, use_lu_lambdas=True)
    with pytest.raises(ValueError, match="final_sigmas_type='sigma_min'"):
        fw.scheduler("dpmpp_2m", algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="final_sigmas_type='sigma_min'"):
        fw.scheduler("dpmpp_2s", algorithm_type="dpmsolver")
    # The reference fails with an UnboundLocalError once a third-order step comes (5 steps or more).
    sampler = fw.scheduler("dpmpp_2m", algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min", solver_order=3)
    with pytest.raises(ValueError, match="no third-order update"):
        denoise(sampler, 5)
    assert torch.isfinite(denoise(sampler, 4)).all()  # 4 steps never reach third order


# --- the public contract a third party subclasses -------------------------------------------------------------------
def test_shared_options_are_declared_once_and_taken_by_subclasses() -> None:
    from difframe.scheduling import SCHEDULE_OPTIONS, SIGMA_BOUNDS, AlphaScheduler, SigmaScheduler, defaults

    class Plain(SigmaScheduler):  # no __init__ at all: the base's options, the common defaults
        pass

    class Own(AlphaScheduler):
        schedule_options = (*AlphaScheduler.schedule_options, *SIGMA_BOUNDS)
        schedule_defaults = defaults(beta_schedule="scaled_linear")

        def __init__(self, strength: float = 0.5) -> None:
            self.ready = self.alphas_cumprod is not None  # the base prepared the schedule first

    assert set(Plain().config) == set(SigmaScheduler.schedule_options)
    assert Plain().config.beta_start == SCHEDULE_OPTIONS["beta_start"].default
    own = Own(strength=0.25, beta_end=0.012)
    assert own.ready and own.config.strength == 0.25 and own.config.beta_schedule == "scaled_linear"
    assert own.config.timestep_spacing == "leading"  # AlphaScheduler's default, inherited
    assert "sigma_max" in own.config and own.alphas_cumprod[-1] < own.alphas_cumprod[0]
    with pytest.raises(TypeError):
        Own(0.25, 1000)  # shared options are keyword-only: a positional call cannot misplace them
    with pytest.raises(ConfigError, match="beta_schedule"):
        Own.from_config({"beta_schedule": "cubic"})


def test_a_misspelt_shared_option_fails_when_the_class_is_defined() -> None:
    from difframe.scheduling import SigmaScheduler, defaults

    with pytest.raises(TypeError, match="beta_begin"):

        class Wrong(SigmaScheduler):
            schedule_defaults = defaults(beta_begin=0.001)

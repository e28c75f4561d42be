"""Every option of each sampler's counterpart in the reference library (diffusers) is implemented here (and changes
the result as it does there), refused by name with the reason, or declared irrelevant: one table,
``difframe_samplers.options.COUNTERPARTS``, checked against the reference's own signatures and numbers, and the
table in docs/samplers.md generated from it."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from difframe.errors import ConfigError
from difframe.scheduling import Refused
from difframe.tolerance import assert_trajectories_match

REPO = Path(__file__).resolve().parents[3]
if importlib.util.find_spec("difframe_plugin_lcm") is None:  # not installed in the shared environment
    sys.path.insert(0, str(REPO / "contrib" / "lcm"))

diffusers = pytest.importorskip("diffusers")
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),  # the reference on numpy 2, its deprecated options
    pytest.mark.filterwarnings("ignore:Should have"),  # torchsde
]

from difframe_samplers import options  # noqa: E402
from difframe_samplers.options import COUNTERPARTS, METHODS, Counterpart, Irrelevant, load, parameters  # noqa: E402

_spec = importlib.util.spec_from_file_location("samplers_test_parity", Path(__file__).with_name("test_parity.py"))
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)  # the whole-trajectory comparison and the stand-in model, shared

IDS = [c.reference for c in COUNTERPARTS]


def literal_values(annotation: Any) -> set[Any]:
    """The values a (possibly nested, optional) Literal annotation allows."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    return {v for arg in typing.get_args(annotation) for v in literal_values(arg)}


# --- every option accounted for -----------------------------------------------------------------------------------
@pytest.mark.parametrize("counterpart", COUNTERPARTS, ids=IDS)
def test_every_reference_option_is_implemented_refused_or_irrelevant(counterpart: Counterpart) -> None:
    ours, theirs = load(counterpart.ours), getattr(diffusers, counterpart.reference)
    reference_keys = {key for method in METHODS for key in parameters(theirs, method)}
    for method in METHODS:
        own = set(parameters(ours, method))
        for key in parameters(theirs, method):
            status = counterpart.options.get(key)
            if key in own:  # implemented (or accepted as irrelevant); only some of its values may be refused
                assert (
                    status is None or isinstance(status, Irrelevant) or (isinstance(status, Refused) and status.values)
                ), f"{counterpart.reference}'s {key} is a parameter of {ours.__name__} and declared {status}"
            else:
                assert status is not None, (
                    f"{counterpart.reference}'s {key} is neither a parameter of {ours.__name__} nor declared in "
                    "difframe_samplers.options.COUNTERPARTS: implement it, or declare it refused or irrelevant"
                )
    assert set(counterpart.options) <= reference_keys, "the table declares options the reference does not have"
    # The sampler enforces the table's refusals of config options.
    assert dict(ours.refused_options) == options.refused_options(counterpart.reference)


@pytest.mark.parametrize("counterpart", COUNTERPARTS, ids=IDS)
def test_every_reference_value_is_accepted_or_refused(counterpart: Counterpart) -> None:
    ours, theirs = load(counterpart.ours), getattr(diffusers, counterpart.reference)
    our_hints, their_hints = typing.get_type_hints(ours.__init__), typing.get_type_hints(theirs.__init__)
    for name, annotation in their_hints.items():
        if name not in our_hints or not literal_values(annotation):
            continue
        status = counterpart.options.get(name)
        refused = set(status.values) if isinstance(status, Refused) else set()
        missing = literal_values(annotation) - literal_values(our_hints[name]) - refused
        assert not missing, f"{counterpart.reference}'s {name} takes {missing}: accept or refuse them"


@pytest.mark.parametrize("counterpart", COUNTERPARTS, ids=IDS)
def test_positional_arguments_mean_what_they_mean_in_the_reference(counterpart: Counterpart) -> None:
    """A call written for the reference never silently means something else: the arguments ours takes by position
    are the reference's first ones, in its order; the rest are keyword-only."""
    ours, theirs = load(counterpart.ours), getattr(diffusers, counterpart.reference)
    for method in ("set_timesteps", "step"):
        positional = [
            p.name
            for p in list(inspect.signature(getattr(ours, method)).parameters.values())[1:]
            if p.kind is p.POSITIONAL_OR_KEYWORD
        ]
        reference = list(inspect.signature(getattr(theirs, method)).parameters)[1:]
        assert positional == reference[: len(positional)], f"{method}: ours {positional}, reference {reference}"


def non_default(default: Any) -> Any:
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 2.0
    return 0.5 if default is None else f"not-{default}"


REFUSALS = [
    pytest.param(c, key, status, id=f"{c.reference}-{key}")
    for c in COUNTERPARTS
    for key, status in c.options.items()
    if isinstance(status, Refused)
]


@pytest.mark.parametrize(("counterpart", "key", "status"), REFUSALS)
def test_refused_options_fail_loudly_with_the_reason(counterpart: Counterpart, key: str, status: Refused) -> None:
    ours = load(counterpart.ours)
    method, _, name = key.rpartition(":")
    if method:  # not a parameter: passing it is a TypeError that names it
        sampler = ours()
        sampler.set_timesteps(4)
        x = torch.zeros(1, 4, 2, 2)
        call = sampler.set_timesteps if method == "set_timesteps" else sampler.step
        args = (4,) if method == "set_timesteps" else (x, sampler.timesteps[0], x)
        with pytest.raises(TypeError, match=name):
            call(*args, **{name: non_default(status.default)})
        return
    for value in status.values or (non_default(status.default),):
        with pytest.raises(ConfigError, match=name) as error:
            ours.from_config({name: value})
        assert status.reason in str(error.value)
    if not status.values:  # the value that leaves it off, as the reference's own configs write it, is fine
        ours.from_config({name: status.default})


# --- every implemented option changes the result as in the reference ------------------------------------------
@dataclass(frozen=True)
class Try:
    """A value for an option, with the other settings it needs to have any effect."""

    value: Any
    config: dict[str, Any] = field(default_factory=dict)
    step: dict[str, Any] = field(default_factory=dict)
    variance_head: bool = False  # the model also predicts a variance (twice the channels)
    steps: int = 4
    equivalent: bool = False  # the same computation in another form: the result may not change


SD = parity.SD
NOISE = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
KARRAS = {"use_karras_sigmas": True}
# Options whose value is not named by a Literal in the reference, and options that need company to matter.
TRIES: dict[str, list[Try]] = {
    "num_train_timesteps": [Try(500)],
    "beta_start": [Try(0.0005)],
    "beta_end": [Try(0.03)],
    "beta_schedule": [Try(v) for v in ("linear", "scaled_linear", "squaredcos_cap_v2", "exp", "laplace", "sigmoid")],
    "trained_betas": [Try(torch.linspace(0.0002, 0.03, 1000).tolist())],
    "prediction_type": [Try(v) for v in ("epsilon", "v_prediction", "sample")],
    "timestep_spacing": [Try("leading", {"steps_offset": 1}), Try("trailing"), Try("linspace")],
    "steps_offset": [Try(1, {"timestep_spacing": "leading"})],
    "rescale_betas_zero_snr": [Try(True, {"prediction_type": "v_prediction", "timestep_spacing": "trailing"})],
    "clip_sample": [Try(True, SD), Try(False, SD)],
    "clip_sample_range": [Try(0.8, {"clip_sample": True})],
    "thresholding": [Try(True, {"sample_max_value": 1.2})],
    "dynamic_thresholding_ratio": [Try(0.9, {"thresholding": True, "sample_max_value": 3.0})],
    "sample_max_value": [Try(1.2, {"thresholding": True})],
    "set_alpha_to_one": [Try(True), Try(False)],
    "skip_prk_steps": [Try(True)],
    "variance_type": [
        Try("fixed_small_log", equivalent=True),  # exp(log(v)/2) = sqrt(v)
        Try("fixed_large"),
        Try("learned", variance_head=True),
        Try("learned_range", variance_head=True),
    ],
    "use_karras_sigmas": [Try(True)],
    "use_exponential_sigmas": [Try(True)],
    "use_beta_sigmas": [Try(True)],
    "use_lu_lambdas": [Try(True)],
    "sigma_min": [Try(0.1, KARRAS)],
    "sigma_max": [Try(8.0, KARRAS)],
    "final_sigmas_type": [Try("sigma_min")],
    "timestep_type": [Try("continuous", {"prediction_type": "v_prediction"})],
    "solver_order": [Try(1), Try(3, steps=20)],
    "algorithm_type": [
        Try("sde-dpmsolver++"),
        Try("dpmsolver", {"final_sigmas_type": "sigma_min"}),
        Try("sde-dpmsolver", {"final_sigmas_type": "sigma_min"}),
    ],
    "solver_type": [Try("heun"), Try("bh1")],
    "lower_order_final": [
        Try(False, {"solver_order": 3, "final_sigmas_type": "sigma_min"}),
        Try(True, {"final_sigmas_type": "sigma_min"}),
    ],
    "euler_at_final": [Try(True, {"final_sigmas_type": "sigma_min", "lower_order_final": False})],
    "lambda_min_clipped": [Try(-5.1, {"beta_schedule": "squaredcos_cap_v2"})],
    "predict_x0": [Try(False)],
    "disable_corrector": [Try([0, 2])],
    "noise_sampler_seed": [Try(7)],
    "original_inference_steps": [Try(40)],
    "timestep_scaling": [Try(5.0)],
    "set_timesteps:timesteps": [Try([999, 599, 299, 19])],
    "set_timesteps:sigmas": [Try([14.6, 5.0, 1.0, 0.3, 0.0])],
    "set_timesteps:num_train_timesteps": [Try(500)],
    "set_timesteps:original_inference_steps": [Try(40)],
    "set_timesteps:strength": [Try(0.5)],
    "step:eta": [Try(0.5, SD), Try(0.8, SD)],
    "step:use_clipped_model_output": [Try(True, step={"eta": 0.5})],
    "step:variance_noise": [Try(NOISE, {"algorithm_type": "sde-dpmsolver++"}, step={"eta": 0.5})],
    "step:s_churn": [Try(2.0)],
    "step:s_tmin": [Try(1.0, step={"s_churn": 2.0})],
    "step:s_tmax": [Try(5.0, step={"s_churn": 2.0})],
    "step:s_noise": [Try(0.5, step={"s_churn": 2.0})],
    "step:order": [Try(2)],
}
# Implemented options that a whole-trajectory comparison cannot show, and where they are tested instead.
TESTED_ELSEWHERE = {
    "set_timesteps:device": "placement only (test_samplers.py moves schedules between devices)",
    "step:generator": "every stochastic case of test_parity.py runs with seeded generators",
    "interpolation_type": "only 'linear' is accepted; the other value is refused (see the table)",
    "DPMSolverMultistepScheduler:variance_type": "the reference keeps 3 channels: test_learned_variance",
    "DPMSolverSinglestepScheduler:variance_type": "the reference keeps 3 channels: test_learned_variance",
    "UniPCMultistepScheduler:solver_p": "a sampler object, one from each library: test_unipc_with_another_predictor",
    "DEISMultistepScheduler:algorithm_type": "the reference offers only 'deis' (other solvers' names are aliases)",
    "DEISMultistepScheduler:solver_type": "the reference offers only 'logrho' (other solvers' names are aliases)",
}


class Calls:
    """A sampler whose set_timesteps/step get fixed extra arguments (and a model output with a variance head)."""

    def __init__(self, sampler: Any, set_timesteps: dict[str, Any], step: dict[str, Any], variance: bool) -> None:
        self.sampler, self.set_kwargs, self.step_kwargs, self.variance = sampler, set_timesteps, step, variance

    def set_timesteps(self, steps: int) -> None:
        replaces_steps = {"timesteps", "sigmas"} & set(self.set_kwargs)
        self.sampler.set_timesteps(**({} if replaces_steps else {"num_inference_steps": steps}), **self.set_kwargs)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None) -> Any:
        if self.variance:  # a variance in (0.1, 0.9): valid both as a variance and as learned_range's fraction
            model_output = torch.cat([model_output, 0.5 + 0.4 * torch.tanh(model_output)], dim=1)
        if "variance_noise" not in self.step_kwargs and "generator" in inspect.signature(self.sampler.step).parameters:
            self.step_kwargs = {**self.step_kwargs, "generator": generator}
        return self.sampler.step(model_output, timestep, sample, **self.step_kwargs)

    def __getattr__(self, name: str) -> Any:
        if "sampler" not in self.__dict__:  # copy probes attributes before __init__ ran
            raise AttributeError(name)
        return getattr(self.sampler, name)


def option_cases() -> list[Any]:
    found = []
    for c in COUNTERPARTS:
        ours, theirs = load(c.ours), getattr(diffusers, c.reference)
        own = {key for method in METHODS for key in parameters(ours, method)}
        for key in (k for method in METHODS for k in parameters(theirs, method) if k in own):
            if key in TESTED_ELSEWHERE or f"{c.reference}:{key}" in TESTED_ELSEWHERE or key in c.options:
                continue
            found.append(pytest.param(c, key, id=f"{c.reference}-{key}"))
    return found


def final_sample(sampler: Any, steps: int) -> torch.Tensor:
    sampler.set_timesteps(steps)
    x, generator = NOISE * sampler.init_noise_sigma, torch.Generator().manual_seed(42)
    for t in sampler.timesteps:
        x = sampler.step(parity.model(sampler.scale_model_input(x, t), t), t, x, generator=generator).prev_sample
    return x


def default_of(cls: type, key: str) -> Any:
    method, _, name = key.rpartition(":")
    return inspect.signature(getattr(cls, method or "__init__")).parameters[name].default


def split(key: str, value: Any, trial: Try) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(config, set_timesteps kwargs, step kwargs) of a trial, with the option set to ``value``."""
    method, _, name = key.rpartition(":")
    config, set_kwargs, step_kwargs = dict(trial.config), {}, dict(trial.step)
    {"": config, "set_timesteps": set_kwargs, "step": step_kwargs}[method][name] = value
    return config, set_kwargs, step_kwargs


@pytest.mark.parametrize(("counterpart", "key"), option_cases())
def test_implemented_option_changes_the_result_as_in_the_reference(counterpart: Counterpart, key: str) -> None:
    ours_cls, theirs_cls = load(counterpart.ours), getattr(diffusers, counterpart.reference)
    refused = counterpart.options.get(key)
    refused_values = refused.values if isinstance(refused, Refused) else ()
    default, name = default_of(theirs_cls, key), key.rpartition(":")[2]
    own_config, own_step = set(parameters(ours_cls, "__init__")), set(parameters(ours_cls, "step"))
    compared = 0
    for trial in TRIES[key]:
        plain = not isinstance(trial.value, list | torch.Tensor)
        if plain and (trial.value == default or trial.value in refused_values):
            continue
        config, set_kwargs, step_kwargs = split(key, trial.value, trial)
        config = {k: v for k, v in config.items() if k in own_config}
        step_kwargs = {k: v for k, v in step_kwargs.items() if f"step:{k}" in own_step}
        wrap = {"set_timesteps": set_kwargs, "step": step_kwargs, "variance": trial.variance_head}
        try:  # is this a value the reference offers for this sampler? (ours may offer more)
            theirs = theirs_cls.from_config(config)
            if not key.partition(":")[1] and theirs.config.get(name, trial.value) == default:
                continue  # an alias the reference maps to the default (another solver's solver_type)
            final_sample(Calls(copy.deepcopy(theirs), **wrap), trial.steps)
        except (NotImplementedError, ValueError, AssertionError):
            continue
        ours = ours_cls.from_config(config)
        parity.trajectory_parity(Calls(ours, **wrap), Calls(theirs, **wrap), trial.steps, {})
        # And the option does something: the same run without it ends elsewhere.
        base_config, base_set, base_step = split(key, default, trial)
        base_config = {k: v for k, v in base_config.items() if k in own_config and v is not inspect.Parameter.empty}
        base_set = {k: v for k, v in base_set.items() if v is not None and k not in ("timesteps", "sigmas")}
        base_step = {k: v for k, v in base_step.items() if k in step_kwargs and v is not None}
        with_option = final_sample(Calls(ours_cls.from_config(config), **wrap), trial.steps)
        base = Calls(ours_cls.from_config(base_config), base_set, base_step, trial.variance_head)
        changed = not torch.allclose(with_option, final_sample(base, trial.steps), atol=1e-6, rtol=0)
        assert changed or trial.equivalent, f"{key}={trial.value!r} changes nothing"
        compared += 1
    assert compared, f"no value tried for {key} is one the reference offers: add one to TRIES"


IRRELEVANT = [
    pytest.param(c, key, id=f"{c.reference}-{key}")
    for c in COUNTERPARTS
    for key, status in c.options.items()
    if isinstance(status, Irrelevant) and ":" not in key
]


@pytest.mark.parametrize(("counterpart", "key"), IRRELEVANT)
def test_irrelevant_options_change_nothing_here_or_in_the_reference(counterpart: Counterpart, key: str) -> None:
    for cls in (load(counterpart.ours), getattr(diffusers, counterpart.reference)):
        default = default_of(cls, key)
        for trial in TRIES[key]:
            if trial.value == default:
                continue
            config = {**trial.config, key: trial.value}
            changed = final_sample(cls.from_config(config), 4)
            same = final_sample(cls.from_config({k: v for k, v in config.items() if k != key}), 4)
            torch.testing.assert_close(changed, same, atol=0, rtol=0, msg=f"{cls.__name__}: {key} changes the result")


def with_variance(x: torch.Tensor, t: Any) -> torch.Tensor:
    """The stand-in model with a variance head: twice the channels, the variance in (0.1, 0.9) (valid both as a
    variance and as learned_range's interpolation fraction)."""
    mean = parity.model(x, t)
    return torch.cat([mean, 0.5 + 0.4 * torch.tanh(mean)], dim=1)


@pytest.mark.parametrize("steps", parity.STEPS)
@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
@pytest.mark.parametrize("reference", ["DDPMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler"])
def test_learned_variance(reference: str, variance_type: str, steps: int) -> None:
    """A model that also predicts its variance: DDPM samples with it, DPM-Solver uses the mean channels only. The
    samples have 3 channels (pixel space), as the reference's DPM-Solver assumes: it keeps the first 3 channels,
    ours the first half, which is the same there."""
    (counterpart,) = (c for c in COUNTERPARTS if c.reference == reference)
    config = {**SD, "variance_type": variance_type}
    ours, theirs = load(counterpart.ours).from_config(config), getattr(diffusers, reference).from_config(config)
    for sampler in (ours, theirs):
        sampler.set_timesteps(steps)
    sample = torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    compared = assert_trajectories_match(ours, theirs, with_variance, sample, seed=42)
    assert compared == len(theirs.timesteps)
    with pytest.raises(ValueError, match="twice the sample's 3 channels"):
        ours.set_timesteps(4)
        ours.step(parity.model(sample, 999), ours.timesteps[0], sample)


# --- the reference's other samplers, and the docs --------------------------------------------------------------
def test_every_reference_sampler_has_a_counterpart_or_a_reason() -> None:
    exported = {name for name in dir(diffusers) if name.endswith("Scheduler") and name != "SchedulerMixin"}
    paired = {c.reference for c in COUNTERPARTS}
    assert not paired & set(options.NOT_OFFERED)
    unaccounted = exported - paired - set(options.NOT_OFFERED)
    assert not unaccounted, f"reference samplers with neither a counterpart nor a reason: {sorted(unaccounted)}"
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

    stable_diffusion = {member.name for member in KarrasDiffusionSchedulers}  # what SD pipelines accept
    assert stable_diffusion - paired <= {"EDMEulerScheduler"}


def test_docs_show_the_table() -> None:
    docs = (REPO / "docs" / "samplers.md").read_text(encoding="utf-8")
    assert options.markdown() in docs, (
        "docs/samplers.md's options table is out of date: run "
        "`PYTHONPATH=contrib/lcm .venv/bin/python -m difframe_samplers.options docs/samplers.md`"
    )


@pytest.mark.parametrize(
    ("predictor", "reference_predictor"),
    [
        ("dpmpp:DPMSolverMultistepScheduler", "DPMSolverMultistepScheduler"),
        ("ddim:DDIMScheduler", "DDIMScheduler"),
    ],
)
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_unipc_with_another_predictor(predictor: str, reference_predictor: str, steps: int) -> None:
    """solver_p: another sampler predicts, UniC corrects; the same trajectory as the reference's with its own."""
    config = {**SD, "steps_offset": 1, "clip_sample": False}
    (unipc,) = (c for c in COUNTERPARTS if c.reference == "UniPCMultistepScheduler")
    ours = load(unipc.ours).from_config(config, solver_p=load(predictor).from_config(config))
    theirs = diffusers.UniPCMultistepScheduler.from_config(
        config, solver_p=getattr(diffusers, reference_predictor).from_config(config)
    )
    parity.trajectory_parity(ours, theirs, steps, {})
    plain = load(unipc.ours).from_config(config)
    if steps > 1:  # one step of first-order DPM-Solver++ is UniP's own first step
        assert not torch.allclose(final_sample(ours, steps), final_sample(plain, steps), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="cannot be saved"):
        ours.config_dict_for_saving()

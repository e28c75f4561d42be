"""SchedulerMixin: the interface every sampler shares, and the noise-schedule math they all use.

Notation: ``alphas_cumprod[t]`` is the signal fraction ᾱ_t of training timestep t; ``sigma = sqrt((1 - ᾱ) / ᾱ)`` is the
noise level of the equivalent variance-exploding process (k-diffusion's σ), so ``x_σ = x_0 + σ·ε`` and
``x_t = x_σ / sqrt(σ² + 1)``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from .configuration import ConfigMixin
from .errors import ConfigError

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sqrt", "exp", "laplace", "sigmoid"]
PredictionType = Literal["epsilon", "v_prediction", "sample"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
FinalSigmas = Literal["zero", "sigma_min"]
FixedVariance = Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"]


@dataclass
class SchedulerOutput:
    """What ``step`` returns: the sample for the next (lower-noise) timestep and the model's clean estimate."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def __iter__(self):  # allows `prev, x0 = scheduler.step(...)`
        return iter((self.prev_sample, self.pred_original_sample))

    def __getitem__(self, index: int) -> torch.Tensor | None:  # `scheduler.step(...)[0]`, as with a tuple
        return (self.prev_sample, self.pred_original_sample)[index]


# --- the training noise schedule -------------------------------------------------------------------------------
def betas_for_alpha_bar(num_steps: int, alpha_bar: Any, max_beta: float = 0.999) -> torch.Tensor:
    """Discretize a continuous alpha_bar(t), t in [0, 1], into betas (Nichol & Dhariwal 2021)."""
    betas = [min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Any = None,
) -> torch.Tensor:
    """The training noise schedule named in scheduler_config.json."""
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":  # linear in sqrt(beta): the Stable Diffusion schedule
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(num_train_timesteps, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    if beta_schedule == "exp":  # the reference's Heun: alpha_bar(t) = e^(-12 t)
        return betas_for_alpha_bar(num_train_timesteps, lambda t: math.exp(-12.0 * t))
    if beta_schedule == "laplace":  # the reference's DDPM: log-SNR from a Laplace distribution's quantiles
        return betas_for_alpha_bar(num_train_timesteps, _laplace_alpha_bar)
    if beta_schedule == "sigmoid":  # GeoDiff (Xu et al. 2022): a sigmoid ramp from beta_start to beta_end
        return torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    if beta_schedule == "sqrt":
        # Not in the reference library: the schedule of Li et al. 2022 (Diffusion-LM), alpha_bar(t) = 1 - sqrt(t + s)
        # with s = 1e-4, discretized like the cosine one. beta_start/beta_end are ignored, as for the cosine one.
        return betas_for_alpha_bar(num_train_timesteps, lambda t: 1 - math.sqrt(t + 0.0001))
    raise ValueError(
        f"unknown beta_schedule {beta_schedule!r}; use linear, scaled_linear, squaredcos_cap_v2, sqrt, exp, laplace "
        "or sigmoid"
    )


def _laplace_alpha_bar(t: float) -> float:
    """ᾱ(t) of the 'laplace' schedule: log-SNR from a Laplace quantile. It returns sqrt(SNR / (1 + SNR)), the
    square root of the ᾱ that SNR implies, which is how the reference library defines this schedule."""
    log_snr = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(log_snr)
    return math.sqrt(snr / (1 + snr))


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift the schedule so the last timestep has zero signal (Lin et al. 2023, 'Common Diffusion Noise
    Schedules and Sample Steps are Flawed', Algorithm 1)."""
    sqrt_alpha_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * (first / (first - last))
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[0:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def make_alphas_cumprod(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Any = None,
    rescale_betas_zero_snr: bool = False,
    *,
    finite_sigmas: bool = False,
) -> torch.Tensor:
    """ᾱ_t for every training timestep. ``finite_sigmas``: with a zero-SNR schedule, nudge ᾱ_T from 0 to 2⁻²⁴ so
    that σ_T stays finite (samplers that work in σ need it)."""
    betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    if rescale_betas_zero_snr and finite_sigmas:
        alphas_cumprod[-1] = 2**-24
    return alphas_cumprod


# --- choosing inference timesteps ------------------------------------------------------------------------------
def spaced_timesteps(
    spacing: str,
    num_train_timesteps: int,
    steps: int,
    steps_offset: int = 0,
    *,
    multistep: bool = False,
    upto: int | None = None,
) -> np.ndarray:
    """Descending training timesteps for ``steps`` inference steps (float64; 'linspace' is left unrounded).

    leading: multiples of T // steps from 0 (plus steps_offset); trailing: from T - 1 down in steps of T / steps;
    linspace: evenly from T - 1 to 0. ``multistep``: the spacing of the multistep solvers, which lay out
    steps + 1 points and drop the last, so the schedule never ends exactly at t = 0. ``upto``: use only the
    timesteps below it (DPM-Solver's lambda_min_clipped).
    """
    T = num_train_timesteps
    top = T if upto is None else upto
    if spacing == "linspace":
        if multistep:
            return np.linspace(0, top - 1, steps + 1).round()[::-1][:-1].copy()
        return np.linspace(0, top - 1, steps)[::-1].copy()
    if spacing == "leading":
        n = steps + 1 if multistep else steps
        timesteps = (np.arange(0, n) * (top // n)).round()[::-1].astype(np.float64)
        timesteps = (timesteps[:-1] if multistep else timesteps) + steps_offset
        if len(timesteps) and timesteps[0] > T - 1:
            raise ValueError(
                f"steps_offset={steps_offset} with {steps} 'leading' steps puts the first timestep at "
                f"{int(timesteps[0])}, past the last training timestep {T - 1}; use fewer steps or 'trailing' spacing"
            )
        return timesteps
    if spacing == "trailing":
        # The reference's float arange can end on a point just above 0 (T=100 with 29 steps: 30 points), which
        # rounds to timestep -1; a step at t = -1 is not a training timestep, so that point is dropped.
        timesteps = np.round(np.arange(top, 0, -T / steps)) - 1
        return timesteps[timesteps >= 0]
    raise ValueError(f"unknown timestep_spacing {spacing!r}; use leading, trailing or linspace")


def check_steps(num_inference_steps: int | None, timesteps: Any, sigmas: Any, num_train_timesteps: int) -> None:
    """Clear errors for the ways set_timesteps can be called wrongly."""
    given = [name for name, v in (("timesteps", timesteps), ("sigmas", sigmas)) if v is not None]
    if num_inference_steps is None and not given:
        raise ValueError("set_timesteps needs num_inference_steps, or an explicit list of timesteps or sigmas")
    if len(given) + (num_inference_steps is not None) > 1:
        both = " and ".join(["num_inference_steps", *given] if num_inference_steps is not None else given)
        raise ValueError(f"pass only one of num_inference_steps, timesteps or sigmas (got {both})")
    if num_inference_steps is not None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
        if num_inference_steps > num_train_timesteps:
            raise ValueError(
                f"num_inference_steps ({num_inference_steps}) cannot exceed num_train_timesteps ({num_train_timesteps})"
            )
    if timesteps is not None:
        values = [float(t) for t in timesteps]
        if not values:
            raise ValueError("timesteps must not be empty")
        if any(b >= a for a, b in pairwise(values)):
            raise ValueError(f"timesteps must be strictly decreasing, got {values}")
        if values[-1] < 0 or values[0] > num_train_timesteps - 1:
            raise ValueError(f"timesteps must lie in [0, {num_train_timesteps - 1}], got {values}")
    if sigmas is not None:
        values = [float(s) for s in sigmas]
        if len(values) < 2:
            raise ValueError("sigmas needs at least two values: the noise levels to step from and the final one")
        # Equal neighbours are a step of length zero (the last σ of a final_sigmas_type='sigma_min' schedule is
        # the σ of timestep 0, which a schedule may already end on); only the final σ may be 0.
        if any(b > a for a, b in pairwise(values)) or values[-1] < 0 or min(values[:-1]) <= 0:
            raise ValueError(
                f"sigmas must not increase, must be positive except the final one, which may be 0; got {values}"
            )


# --- noise levels ----------------------------------------------------------------------------------------------
def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """σ of every training timestep, ascending with t (float32)."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).numpy()


def sigma_to_t(sigmas: Any, log_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of each σ: linear interpolation in log σ between neighbouring timesteps."""
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10)).reshape(-1)
    dists = log_sigma[None, :] - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigmas.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> np.ndarray:
    """Noise levels evenly spaced in σ^(1/ρ) (Karras et al. 2022, eq. 5)."""
    ramp = np.linspace(0, 1, steps)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, steps: int) -> np.ndarray:
    """Noise levels evenly spaced in log σ."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), steps))


def beta_sigmas(sigma_min: float, sigma_max: float, steps: int, a: float = 0.6, b: float = 0.6) -> np.ndarray:
    """Noise levels at the quantiles of a Beta(a, b) distribution between σ_max and σ_min: dense at both ends
    (Lee et al. 2024, 'Beta Sampling is All You Need'). Needs scipy for the inverse incomplete beta function."""
    try:
        from scipy.special import betaincinv
    except ImportError:
        raise ImportError("use_beta_sigmas needs scipy: pip install scipy") from None
    quantiles = betaincinv(a, b, 1 - np.linspace(0, 1, steps))
    return sigma_min + quantiles * (sigma_max - sigma_min)


# The config flags that respace the noise levels of a schedule, and what each one does.
RESPACINGS = {
    "use_karras_sigmas": "karras",
    "use_exponential_sigmas": "exponential",
    "use_beta_sigmas": "beta",
    "use_lu_lambdas": "lu",  # DPM-Solver's: evenly spaced in λ = -log σ, i.e. exponential σs with rounded timesteps
}


def sigma_respacing(config: Any) -> str | None:
    """Which respacing the config turns on ('karras', 'exponential', 'beta', 'lu') or None; an error for several."""
    on = [flag for flag in RESPACINGS if config.get(flag)]
    if len(on) > 1:
        raise ValueError(f"{' and '.join(on)} cannot be combined; turn on at most one of them")
    return RESPACINGS[on[0]] if on else None


def respace_sigmas(
    sigmas: np.ndarray,
    steps: int,
    kind: str | None,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> np.ndarray | None:
    """Karras, exponential (or Lu) or beta noise levels between the ends of ``sigmas`` (descending), or None."""
    if kind is None:
        return None
    lo = sigma_min if sigma_min is not None else float(sigmas[-1])
    hi = sigma_max if sigma_max is not None else float(sigmas[0])
    if kind == "karras":
        return karras_sigmas(lo, hi, steps)
    if kind == "beta":
        return beta_sigmas(lo, hi, steps)
    if kind == "lu":  # the same, but the ends' log σ taken in float32, as the reference does (it decides rounding)
        log_hi, log_lo = float(np.log(np.float32(hi))), float(np.log(np.float32(lo)))
        return np.exp(np.linspace(log_hi, log_lo, steps))
    return exponential_sigmas(lo, hi, steps)


def alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(α_t, σ_t) of the variance-preserving process at VE noise level σ: α_t = 1/sqrt(σ² + 1), σ_t = σ·α_t."""
    alpha_t = 1 / (sigma**2 + 1) ** 0.5
    return alpha_t, sigma * alpha_t


# --- model outputs -------------------------------------------------------------------------------------------------
def x0_from_alpha(
    prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor, alpha_prod: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂_0, ε̂) from a model output at a timestep with signal fraction ᾱ (DDPM parameterization)."""
    beta_prod = 1 - alpha_prod
    if prediction_type == "epsilon":
        return (sample - beta_prod**0.5 * model_output) / alpha_prod**0.5, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha_prod**0.5 * model_output) / beta_prod**0.5
    if prediction_type == "v_prediction":
        return (
            alpha_prod**0.5 * sample - beta_prod**0.5 * model_output,
            alpha_prod**0.5 * model_output + beta_prod**0.5 * sample,
        )
    raise ValueError(f"unknown prediction_type {prediction_type!r}; use epsilon, v_prediction or sample")


def x0_from_sigma(prediction_type: str, model_output: torch.Tensor, sample: torch.Tensor, sigma: Any) -> torch.Tensor:
    """x̂_0 from a model output at VE noise level σ, ``sample`` being the unscaled x_σ (k-diffusion)."""
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; use epsilon, v_prediction or sample")


def split_variance(
    variance_type: str | None, model_output: torch.Tensor, sample: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(mean output, predicted variance) for a model that also predicts its variance (variance_type 'learned' or
    'learned_range': twice the sample's channels, the mean first); (model_output, None) for any other model."""
    if variance_type not in ("learned", "learned_range"):
        return model_output, None
    channels = sample.shape[1]
    if model_output.shape[1] != 2 * channels:
        raise ValueError(
            f"variance_type={variance_type!r} expects a model output with twice the sample's {channels} channels "
            f"(mean, then variance), got {model_output.shape[1]}; unset variance_type for a model that predicts no "
            "variance"
        )
    return model_output[:, :channels], model_output[:, channels:]


def dynamic_threshold(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding: clamp each sample to its ``ratio`` quantile s of |x| (s in [1, max_value])
    and divide by s, so saturated pixels are pushed inwards instead of clipped (Saharia et al. 2022)."""
    dtype = sample.dtype
    flat = sample.float().reshape(sample.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(sample.shape).to(dtype)


def randn_like(
    sample: torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gaussian noise shaped like ``sample``, drawn on the generator's device so a seed gives the same noise
    whatever device the sample is on. ``generator`` may be a list with one generator per batch item: item i's
    noise then comes from generator i alone (so an image does not depend on its position in the batch)."""
    dtype = dtype or sample.dtype
    if isinstance(generator, (list, tuple)):
        if len(generator) == 1:
            generator = generator[0]
        else:
            if len(generator) != sample.shape[0]:
                raise ValueError(f"got {len(generator)} generators for a batch of {sample.shape[0]}")
            shape = (1, *sample.shape[1:])
            parts = [torch.randn(shape, generator=g, device=g.device, dtype=dtype) for g in generator]
            return torch.cat(parts).to(sample.device)
    device = generator.device if generator is not None else sample.device
    return torch.randn(sample.shape, generator=generator, device=device, dtype=dtype).to(sample.device)


def broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample scalars shaped to broadcast against a batch."""
    return values.flatten().reshape(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class Refused:
    """An option of a sampler's counterpart in the reference library that the sampler does not offer, and why."""

    reason: str
    default: Any = None  # the value that leaves the option off: accepted, so the reference's own configs load
    values: tuple[Any, ...] = ()  # when given, only these values are refused (the option itself is implemented)

    def refuses(self, value: Any) -> bool:
        return value in self.values if self.values else value != self.default


def check_schedule_values(values: Mapping[str, Any], label: str) -> None:
    """Range checks of the shared scheduler_config.json fields, so a bad value is refused when the sampler is
    built (naming the field and what would work) instead of failing or misbehaving mid-run."""

    def number(name: str) -> float | None:
        value = values.get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    problems = []
    steps = values.get("num_train_timesteps")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 2):
        problems.append(f"num_train_timesteps must be an integer of at least 2 (SD uses 1000), got {steps!r}")
    for name in ("beta_start", "beta_end"):
        value = number(name)
        if value is not None and not 0 <= value < 1:
            problems.append(f"{name} must lie in [0, 1), got {values[name]!r}")
    betas = values.get("trained_betas")
    if betas is not None:
        flat = [float(b) for b in np.asarray(betas, dtype=np.float64).reshape(-1)] if len(betas) else []
        if not flat or not all(0 <= b <= 1 for b in flat):
            problems.append("trained_betas must be a non-empty list of values in [0, 1]")
        elif isinstance(steps, int) and len(flat) != steps:
            problems.append(f"trained_betas has {len(flat)} values but num_train_timesteps is {steps}")
    offset = values.get("steps_offset")
    if offset is not None and (isinstance(offset, bool) or not isinstance(offset, int) or offset < 0):
        problems.append(f"steps_offset must be a non-negative integer (0 or 1), got {offset!r}")
    for name in ("sigma_min", "sigma_max", "clip_sample_range", "sample_max_value"):
        value = number(name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            problems.append(f"{name} must be a positive number, got {values[name]!r}")
    low, high = number("sigma_min"), number("sigma_max")
    if low is not None and high is not None and low >= high:
        problems.append(f"sigma_min ({low}) must be below sigma_max ({high})")
    ratio = number("dynamic_thresholding_ratio")
    if ratio is not None and not 0 < ratio <= 1:
        problems.append(f"dynamic_thresholding_ratio must lie in (0, 1], got {ratio}")
    if problems:
        raise ConfigError(f"invalid scheduler config for {label}: " + "; ".join(problems))


@dataclass(frozen=True)
class ScheduleOption:
    """One shared scheduler_config.json option: its type and common default (a sampler may change the default)."""

    annotation: Any
    default: Any
    help: str


# The options that the samplers share, declared once. A sampler lists the ones it takes in ``schedule_options``
# (its base class's list, by default) and changes a default in ``schedule_defaults``; its own ``__init__`` declares
# only the options that are its own.
SCHEDULE_OPTIONS: Mapping[str, ScheduleOption] = {
    "num_train_timesteps": ScheduleOption(int, 1000, "training timesteps T"),
    "beta_start": ScheduleOption(float, 0.0001, "β of the first training timestep"),
    "beta_end": ScheduleOption(float, 0.02, "β of the last training timestep"),
    "beta_schedule": ScheduleOption(BetaSchedule, "linear", "how β goes from beta_start to beta_end"),
    "trained_betas": ScheduleOption(list[float] | None, None, "explicit βs instead of a schedule"),
    "prediction_type": ScheduleOption(PredictionType, "epsilon", "what the model predicts"),
    "timestep_spacing": ScheduleOption(TimestepSpacing, "linspace", "how inference timesteps are spread"),
    "steps_offset": ScheduleOption(int, 0, "added to 'leading' timesteps"),
    "rescale_betas_zero_snr": ScheduleOption(bool, False, "rescale the schedule to zero terminal SNR"),
    "use_karras_sigmas": ScheduleOption(bool, False, "respace σ as Karras et al. 2022"),
    "use_exponential_sigmas": ScheduleOption(bool, False, "respace σ evenly in log σ"),
    "use_beta_sigmas": ScheduleOption(bool, False, "respace σ at Beta(0.6, 0.6) quantiles"),
    "sigma_min": ScheduleOption(float | None, None, "lowest σ of a respaced schedule"),
    "sigma_max": ScheduleOption(float | None, None, "highest σ of a respaced schedule"),
    "final_sigmas_type": ScheduleOption(FinalSigmas, "zero", "σ after the last step"),
    "clip_sample": ScheduleOption(bool, False, "clip x̂_0 to ±clip_sample_range"),
    "clip_sample_range": ScheduleOption(float, 1.0, "bound of clip_sample"),
    "thresholding": ScheduleOption(bool, False, "Imagen's dynamic thresholding of x̂_0"),
    "dynamic_thresholding_ratio": ScheduleOption(float, 0.995, "quantile of dynamic thresholding"),
    "sample_max_value": ScheduleOption(float, 1.0, "bound of dynamic thresholding"),
    "set_alpha_to_one": ScheduleOption(bool, True, "ᾱ after the last step: 1 (clean) or ᾱ_0"),
    "solver_order": ScheduleOption(int, 2, "how many previous model outputs a multistep solver uses"),
}
NOISE_SCHEDULE = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
)
SIGMA_RESPACING = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
SIGMA_BOUNDS = ("sigma_min", "sigma_max", "final_sigmas_type")
CLIPPING = ("clip_sample", "clip_sample_range")
THRESHOLDING = ("thresholding", "dynamic_thresholding_ratio", "sample_max_value")


def defaults(**values: Any) -> Mapping[str, Any]:
    """A sampler's ``schedule_defaults``: the shared options whose default it changes, e.g.
    ``defaults(beta_start=0.00085, beta_end=0.012)``."""
    return MappingProxyType(values)


_DECLARES_ITSELF = object()


def _compose_init(cls: type[SchedulerMixin]) -> None:
    """Give ``cls`` an ``__init__`` whose signature is its own options plus the shared ones it takes (typed and
    defaulted from SCHEDULE_OPTIONS), so the config records and validates all of them. The base class prepares the
    noise schedule (``prepare_schedule``) before the class's own ``__init__`` runs with its own options."""
    own = cls.__dict__.get("__init__") or getattr(cls, "_own_init", None)
    if own is _DECLARES_ITSELF:
        return
    own_parameters = list(inspect.signature(own).parameters.values())[1:] if own else []
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in own_parameters):
        cls._own_init = _DECLARES_ITSELF  # takes *args or **kwargs: it declares its config itself, as before
        return
    cls._own_init = own
    defaults: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        defaults.update(klass.__dict__.get("schedule_defaults", {}))
    unknown = sorted((set(cls.schedule_options) | set(defaults)) - set(SCHEDULE_OPTIONS))
    if unknown:
        raise TypeError(
            f"{cls.__name__}: {', '.join(unknown)} not shared schedule options (difframe.scheduling.SCHEDULE_OPTIONS); "
            "declare an option of your own as an __init__ parameter"
        )
    own_names = [p.name for p in own_parameters]
    shared = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=defaults.get(name, SCHEDULE_OPTIONS[name].default),
            annotation=SCHEDULE_OPTIONS[name].annotation,
        )
        for name in cls.schedule_options
        if name not in own_names
    ]
    first = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    signature = inspect.Signature([first, *own_parameters, *shared], return_annotation=None)

    def __init__(self: SchedulerMixin, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self.prepare_schedule()
        if own is not None:
            own(self, **{name: bound.arguments[name] for name in own_names})

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__annotations__ = {
        **(own.__annotations__ if own else {}),
        **{p.name: p.annotation for p in shared},
        "return": None,
    }
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    __init__.__doc__ = own.__doc__ if own else None
    if own is not None:
        __init__.__wrapped__ = own  # type: ignore[attr-defined]  # typing.get_type_hints reads its module's names
    cls.__init__ = __init__  # type: ignore[method-assign]


class SchedulerMixin(ConfigMixin):
    """Every sampler: set_timesteps, scale_model_input, step, add_noise, init_noise_sigma, order.

    Samplers read and write the shared scheduler_config.json, so any sampler swaps into any pipeline:
    ``EulerScheduler.from_config(pipe.scheduler.config)`` keeps the model's noise schedule.
    """

    config_name: ClassVar[str] = "scheduler_config.json"
    # The shared options (SCHEDULE_OPTIONS) this sampler takes, and the defaults in which it differs.
    schedule_options: ClassVar[tuple[str, ...]] = ()
    schedule_defaults: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    # Config options of the reference counterpart that this sampler refuses: building it with one of them set to
    # anything but its default is an error that gives the reason (rather than a key kept and silently ignored).
    refused_options: ClassVar[Mapping[str, Refused]] = {}
    order: ClassVar[int] = 1
    init_noise_sigma: float = 1.0
    timesteps: torch.Tensor
    num_inference_steps: int | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        _compose_init(cls)
        super().__init_subclass__(**kwargs)

    def prepare_schedule(self) -> None:
        """Derive the noise schedule from ``self.config``; runs before a sampler's own ``__init__``."""

    @classmethod
    def validate_config(cls, config: Mapping[str, Any], *, label: str | None = None) -> dict[str, Any]:
        for name, refusal in cls.refused_options.items():
            if name in config and refusal.refuses(config[name]):
                fix = "use another value" if refusal.values else f"remove it or set it to {refusal.default!r}"
                raise ConfigError(
                    f"{label or cls.__name__}: {name}={config[name]!r} is not supported: {refusal.reason}; {fix}"
                )
        values = super().validate_config(config, label=label)
        check_schedule_values(values, label or cls.__name__)
        return values

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> None:
        raise NotImplementedError

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None
    ) -> SchedulerOutput:
        raise NotImplementedError

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.config.get("num_train_timesteps", 1000))


class AlphaScheduler(SchedulerMixin):
    """Base of the samplers that step between integer training timesteps using ᾱ_t (DDPM, DDIM, PNDM, LCM...).

    It sets ``alphas_cumprod`` (ᾱ per training timestep) and ``final_alpha_cumprod`` (the ᾱ after the last step,
    see ``alpha_prod_at``); ``set_spaced_timesteps`` sets the integer timesteps of a run.
    """

    schedule_options = (*NOISE_SCHEDULE, *CLIPPING, *THRESHOLDING, "set_alpha_to_one")
    schedule_defaults = defaults(timestep_spacing="leading")
    # True: keep ᾱ_T just above 0 with a zero-SNR schedule (for a sampler that divides by ᾱ_t).
    finite_sigmas: ClassVar[bool] = False
    alphas_cumprod: torch.Tensor
    final_alpha_cumprod: torch.Tensor

    def prepare_schedule(self) -> None:
        c = self.config
        finite_sigmas, set_alpha_to_one = self.finite_sigmas, c.get("set_alpha_to_one", True)
        self.alphas_cumprod = make_alphas_cumprod(
            c.num_train_timesteps,
            c.beta_start,
            c.beta_end,
            c.beta_schedule,
            c.trained_betas,
            c.get("rescale_betas_zero_snr", False),
            finite_sigmas=finite_sigmas,
        )
        # ᾱ "before" timestep 0: 1 (a clean image) or ᾱ_0 (stop one step short of clean).
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.timesteps = torch.arange(c.num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.num_inference_steps = None

    def alpha_prod_at(self, timestep: Any) -> torch.Tensor:
        return self.alphas_cumprod[timestep] if timestep >= 0 else self.final_alpha_cumprod

    def set_spaced_timesteps(
        self, num_inference_steps: int | None, timesteps: Sequence[int] | None = None, device: Any = None
    ) -> None:
        """Set integer timesteps from the config's spacing, or from an explicit descending list."""
        c = self.config
        check_steps(num_inference_steps, timesteps, None, c.num_train_timesteps)
        if timesteps is not None:
            values = np.array([int(t) for t in timesteps], dtype=np.int64)
        else:
            values = spaced_timesteps(c.timestep_spacing, c.num_train_timesteps, num_inference_steps, c.steps_offset)
            values = values.round().astype(np.int64)
        self.num_inference_steps = len(values)
        self.timesteps = torch.from_numpy(values).to(device)

    def postprocess_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding or clipping of x̂_0, where the config asks for it."""
        c = self.config
        if c.get("thresholding"):
            return dynamic_threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        if c.get("clip_sample"):
            return x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        return x0

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 - ᾱ_t)·ε, for training timesteps (one per sample, or one for all)."""
        alphas_cumprod = self.alphas_cumprod.to(device=original.device, dtype=original.dtype)
        alpha_prod = broadcast(alphas_cumprod[torch.as_tensor(timesteps, device=original.device)], original)
        return alpha_prod**0.5 * original + (1 - alpha_prod) ** 0.5 * noise


def _first_step_index(matches: torch.Tensor) -> int:
    """Where a trajectory starts, given the schedule positions that hold its first timestep.

    A timestep listed twice away from the start (second-order samplers list each step twice) means an
    image-to-image start in the middle: take the later entry so that no step is skipped. A timestep repeated at the
    very start (Karras σs that round to one timestep) starts at 0, where the reference library would run past the
    end of its schedule.
    """
    first = int(matches[0].item())
    return int(matches[1].item()) if len(matches) > 1 and first != 0 else first


class StepTracking:
    """Where in its schedule a run is, for a sampler whose step depends on the position and not only on the timestep
    (σ-based and multistep samplers, LCM). ``step`` calls ``current_index`` first and ``advance`` last;
    ``set_timesteps`` calls ``restart``. Mix it in before the sampler base class."""

    timesteps: torch.Tensor
    num_inference_steps: int | None
    _step_index: int | None = None
    _begin_index: int | None = None

    def restart(self) -> None:
        """Forget where in the schedule the last run was (``set_timesteps`` calls it)."""
        self._step_index = None
        self._begin_index = None

    @property
    def step_index(self) -> int | None:
        return self._step_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at this step (image-to-image pipelines that skip the first steps call it)."""
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: Any, schedule_timesteps: torch.Tensor | None = None) -> int:
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        matches = (schedule == torch.as_tensor(timestep, device=schedule.device)).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {float(timestep)} is not in this sampler's schedule; use scheduler.timesteps")
        return _first_step_index(matches)

    def current_index(self, timestep: Any) -> int:
        """The schedule position of this step (from the begin index, or found from ``timestep`` at the first step)."""
        if self.num_inference_steps is None:
            raise RuntimeError(f"call set_timesteps before stepping {type(self).__name__}")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        return self._step_index

    def advance(self) -> None:
        """Move to the next schedule position; ``step`` calls it once it has used ``current_index``."""
        self._step_index = (self._step_index or 0) + 1


class SigmaScheduler(StepTracking, SchedulerMixin):
    """Base of the samplers that integrate over σ, k-diffusion style (Euler, Heun, LMS, DPM2, DPM++ SDE...).

    ``self.sigmas`` holds one σ per step plus the final one; ``self.timesteps`` the (fractional) training timestep
    of each step, which is what the model is given. The sample lives in the σ parameterization x_σ = x_0 + σ·ε,
    so ``scale_model_input`` divides by sqrt(σ² + 1) before the model sees it.
    """

    schedule_options = (*NOISE_SCHEDULE, *SIGMA_RESPACING)
    sigmas: torch.Tensor

    def prepare_schedule(self) -> None:
        c = self.config
        respacing = sigma_respacing(c)
        self.alphas_cumprod = make_alphas_cumprod(
            c.num_train_timesteps,
            c.beta_start,
            c.beta_end,
            c.beta_schedule,
            c.trained_betas,
            c.get("rescale_betas_zero_snr", False),
            finite_sigmas=True,
        )
        # Read now, while the config holds only this class's own parameters: keys kept from another sampler's config
        # are added after __init__ and must not change how this sampler works.
        self._respacing = respacing
        self._sigma_bounds = (c.get("sigma_min"), c.get("sigma_max"))
        self._final_sigmas_type = c.get("final_sigmas_type", "zero")
        self.num_inference_steps = None
        train_sigmas = torch.from_numpy(sigmas_from_alphas_cumprod(self.alphas_cumprod)).flip(0)
        self.sigmas = torch.cat([train_sigmas, torch.zeros(1)])
        self.timesteps = torch.arange(c.num_train_timesteps - 1, -1, -1, dtype=torch.float32)

    @property
    def init_noise_sigma(self) -> torch.Tensor:  # type: ignore[override]
        sigma_max = self.sigmas.max()
        # 'leading' starts below T - 1, where the model was trained on x_t, not on x_σ: scale up like x_t would be.
        return sigma_max if self.config.timestep_spacing in ("linspace", "trailing") else (sigma_max**2 + 1) ** 0.5

    def sigma_schedule(
        self,
        num_inference_steps: int | None,
        timesteps: Sequence[float] | None,
        sigmas: Sequence[float] | None,
        *,
        round_karras: bool = False,
        dtype: Any = np.float32,
        num_train_timesteps: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(training timestep per step, σ per step plus the final σ) for the config's spacing and Karras/exponential/
        beta options, or for explicit timesteps or σs. ``dtype``: of the spaced timesteps that σ is interpolated at.
        ``num_train_timesteps``: space the steps over this many timesteps instead of the config's."""
        c = self.config
        check_steps(num_inference_steps, timesteps, sigmas, c.num_train_timesteps)
        if num_train_timesteps is not None and not 1 <= num_train_timesteps <= c.num_train_timesteps:
            raise ValueError(f"num_train_timesteps must be in [1, {c.num_train_timesteps}], got {num_train_timesteps}")
        train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        log_sigmas = np.log(train_sigmas)
        if sigmas is not None:
            chosen = np.array([float(s) for s in sigmas], dtype=np.float32)
            return sigma_to_t(chosen[:-1], log_sigmas), chosen
        if timesteps is not None:
            self._no_respacing_with_timesteps()
            steps = np.array([float(t) for t in timesteps], dtype=dtype)
        else:
            T = num_train_timesteps or c.num_train_timesteps
            steps = spaced_timesteps(c.timestep_spacing, T, num_inference_steps, c.steps_offset).astype(dtype)
        chosen = np.interp(steps, np.arange(0, len(train_sigmas)), train_sigmas)
        respaced = respace_sigmas(chosen, len(steps), self._respacing, *self._sigma_bounds)
        if respaced is not None:
            chosen, steps = respaced, sigma_to_t(respaced, log_sigmas)
            if round_karras and self._respacing == "karras":
                steps = steps.round()
        return steps, np.concatenate([chosen, [self._final_sigma()]]).astype(np.float32)

    def _no_respacing_with_timesteps(self) -> None:
        if self._respacing is not None:
            flag = next(flag for flag, kind in RESPACINGS.items() if kind == self._respacing)
            raise ValueError(f"explicit timesteps cannot be combined with {flag}; pass sigmas or turn {flag} off")

    def _final_sigma(self) -> float:
        """σ after the last step: 0 (a clean sample) or, with final_sigmas_type='sigma_min', the σ of timestep 0."""
        if self._final_sigmas_type == "sigma_min":
            return float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        return 0.0

    def set_schedule(self, timesteps: Any, sigmas: Any, device: Any = None) -> None:
        """Use these timesteps (one per model call) and σs (one per model call plus the final one) for the next run,
        starting from its first step."""
        self.timesteps = torch.as_tensor(np.asarray(timesteps)).to(device=device, dtype=torch.float32)
        self.sigmas = torch.as_tensor(np.asarray(sigmas))
        self.num_inference_steps = len(self.timesteps)
        self.restart()

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        sigma = self.sigmas[self.current_index(timestep)]
        return sample / (sigma**2 + 1) ** 0.5

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_σ = x_0 + σ·ε at the σ of the given schedule timesteps (from ``self.timesteps``)."""
        return original + noise * self._noise_sigmas(original, timesteps)

    def _noise_sigmas(self, original: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The σ of each given schedule timestep (or of the current step, once a begin index is set), shaped to
        broadcast over ``original``'s batch."""
        sigmas = self.sigmas.to(device=original.device, dtype=original.dtype)
        schedule = self.timesteps.to(original.device)
        timesteps = torch.as_tensor(timesteps, device=original.device).reshape(-1)
        if self._begin_index is None:
            indices = [self.index_for_timestep(t, schedule) for t in timesteps]
        else:
            indices = [self._step_index if self._step_index is not None else self._begin_index] * len(timesteps)
        return broadcast(sigmas[indices], original)


class MultistepScheduler(SigmaScheduler):
    """Base of the exponential-integrator solvers (DPM-Solver++, UniPC, DEIS): the model output is turned into a data
    (or noise) prediction and the step is solved exactly in λ = log(α_t/σ_t), reusing the previous outputs.

    The sample is in the usual x_t parameterization (no input scaling, init_noise_sigma = 1); ``self.sigmas`` are the
    VE noise levels of the steps, converted with ``alpha_sigma``. Integer timesteps.
    """

    schedule_options = (*NOISE_SCHEDULE, *SIGMA_RESPACING, *THRESHOLDING, "solver_order")
    init_noise_sigma = 1.0  # type: ignore[assignment]
    model_outputs: list[torch.Tensor | None]
    lower_order_nums: int = 0

    def prepare_schedule(self) -> None:
        super().prepare_schedule()
        self.sigmas = torch.from_numpy(sigmas_from_alphas_cumprod(self.alphas_cumprod))
        self.timesteps = torch.arange(self.config.num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0

    def set_multistep_schedule(
        self,
        num_inference_steps: int | None,
        timesteps: Sequence[int] | None,
        device: Any,
        *,
        round_karras: bool = True,
        final_sigmas_type: str = "zero",
        final_from_schedule: bool = True,
        upto: int | None = None,
        spacing: str | None = None,
    ) -> None:
        """Set integer timesteps and their σ. The final σ is 0 for final_sigmas_type='zero'; else the last respaced
        (Karras/exponential) σ if ``final_from_schedule``, or the σ of timestep 0."""
        c = self.config
        check_steps(num_inference_steps, timesteps, None, c.num_train_timesteps)
        train_sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        log_sigmas = np.log(train_sigmas)
        if timesteps is not None:
            self._no_respacing_with_timesteps()
            steps = np.array([int(t) for t in timesteps], dtype=np.int64)
        else:
            steps = spaced_timesteps(
                spacing or c.timestep_spacing,
                c.num_train_timesteps,
                num_inference_steps,
                c.get("steps_offset", 0),
                multistep=True,
                upto=upto,
            ).astype(np.int64)
        sigma_min_0 = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        respaced = respace_sigmas(np.flip(train_sigmas).copy(), len(steps), self._respacing, *self._sigma_bounds)
        if respaced is not None:
            sigmas, steps = respaced, sigma_to_t(respaced, log_sigmas)
            if self._respacing in ("karras", "lu") and round_karras:
                steps = steps.round()
            last = float(sigmas[-1]) if final_from_schedule else sigma_min_0
        else:
            sigmas, last = np.interp(steps, np.arange(0, len(train_sigmas)), train_sigmas), sigma_min_0
        final = 0.0 if final_sigmas_type == "zero" else last
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [final]]).astype(np.float32))
        self.timesteps = torch.from_numpy(np.asarray(steps)).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(self.timesteps)
        self.model_outputs = [None] * c.solver_order
        self.lower_order_nums = 0
        self.restart()

    def index_for_timestep(self, timestep: Any, schedule_timesteps: torch.Tensor | None = None) -> int:
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        matches = (schedule == torch.as_tensor(timestep, device=schedule.device)).nonzero()
        if len(matches) == 0:  # a timestep between steps: treat it as the last one
            return len(self.timesteps) - 1
        return _first_step_index(matches)

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def mean_output(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The model output without its variance channels, if the config says the model predicts them."""
        return split_variance(self.config.get("variance_type"), model_output, sample)[0]

    def noise_prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """ε̂ at the current step; with thresholding, the ε̂ that the thresholded x̂_0 implies."""
        c = self.config
        alpha_t, sigma_t = alpha_sigma(self.sigmas[self._step_index])
        model_output = self.mean_output(model_output, sample)
        if c.prediction_type == "epsilon":
            eps = model_output
        elif c.prediction_type == "v_prediction":
            eps = alpha_t * model_output + sigma_t * sample
        else:
            eps = (sample - alpha_t * model_output) / sigma_t
        if c.thresholding:
            x0 = dynamic_threshold((sample - sigma_t * eps) / alpha_t, c.dynamic_thresholding_ratio, c.sample_max_value)
            eps = (sample - alpha_t * x0) / sigma_t
        return eps

    def data_prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """x̂_0 at the current step, thresholded if the config asks for it."""
        c = self.config
        model_output = self.mean_output(model_output, sample)
        alpha_t, sigma_t = alpha_sigma(self.sigmas[self._step_index])
        if c.prediction_type == "epsilon":
            x0 = (sample - sigma_t * model_output) / alpha_t
        elif c.prediction_type == "v_prediction":
            x0 = alpha_t * sample - sigma_t * model_output
        else:
            x0 = model_output
        return dynamic_threshold(x0, c.dynamic_thresholding_ratio, c.sample_max_value) if c.thresholding else x0

    def remember(self, output: torch.Tensor) -> None:
        """Keep ``output`` as the newest of the last ``solver_order`` converted model outputs."""
        self.model_outputs = [*self.model_outputs[1:], output]

    def lambdas(self, *indices: int, device: Any = None) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(α_t, σ_t, λ_t = log(α_t/σ_t)) at the given step indices."""
        result = []
        for i in indices:
            alpha_t, sigma_t = alpha_sigma(self.sigmas[i].to(device))
            result.append((alpha_t, sigma_t, torch.log(alpha_t) - torch.log(sigma_t)))
        return result

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = α_t·x_0 + σ_t·ε at the given schedule timesteps."""
        alpha_t, sigma_t = alpha_sigma(self._noise_sigmas(original, timesteps))
        return alpha_t * original + sigma_t * noise

"""How far two float32 implementations of one sampler may drift apart, measured on the computation itself.

Parity tests run our sampler and the reference library's side by side. Their results may differ by float32
rounding and by nothing else, but how much rounding moves a result depends on the step, not on the result's size:

- A step can combine operands far larger than its result. An ancestral step at σ = 2·10⁴ adds a kept sample of
  size σ·|noise| ≈ 10⁵ to a slope times (σ_down - σ) of the same size and lands near 10²; a multistep solver in
  the α/σ parameterisation multiplies by α_t/α_s ≈ 10⁴ and cancels. Rounding such operands errs by ε·10⁵ ≈ 10⁻²,
  so one unit in the last place of difference anywhere in the step (another vector width for ``exp``, a fused
  multiply-add, another summation order: what differs between CPUs) reaches the result 10³-10⁵ times larger than
  the result's own rounding. A fixed ``atol=1e-5`` passes on the CPU where both sides happen to round alike and
  fails on the next one.
- An error already made travels on with the sample and may grow or shrink with the steps that follow.

So the allowance is measured, the way stochastic arithmetic (CESTAC, Monte Carlo arithmetic) measures how many
digits of a float computation are significant: two more copies of the reference run the same trajectory with
every sample and model output they read moved by one float32 rounding at random. How far they drift from the
reference, step by step, is how far rounding alone moves this trajectory on this computation; another CPU rounds
differently but no more. Ours must stay within ``SPREAD_FACTOR`` times the larger of the two drifts, plus a floor
of a few roundings of the result itself for steps where the perturbations happen to cancel out.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

EPS = torch.finfo(torch.float32).eps
# Another CPU's rounding is one more random draw of the same size. Over the samplers' parity grid (424 cases) a
# third perturbed run strays from the reference by at most 1.64x the larger drift of the two that set the allowance
# (4.1x with one run only: hence two); 8 leaves room for that, while a wrong coefficient moves results by orders
# of magnitude more than rounding does.
SPREAD_FACTOR = 8.0
SHADOW_RUNS = 2
# The floor: a step is a handful of float32 operations, each rounding within ε/2 of its operands, on both sides.
FLOOR_ROUNDINGS = 16

Model = Callable[[torch.Tensor, Any], torch.Tensor]
Seed = int | Sequence[int] | None  # a list: one generator per image, as pipelines pass them


def perturb(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` with each element moved by one float32 rounding (ε·|x|) up, down or not at all, at random."""
    direction = torch.randint(-1, 2, x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
    return x + direction * EPS * x.abs()


def _size(x: torch.Tensor) -> float:
    return float(x.detach().abs().max()) if x.numel() else 0.0


def _finite(x: Any) -> bool:
    return x is None or bool(torch.isfinite(x).all())


class _Run:
    """One sampler walking its trajectory: the model is evaluated on its own samples, with its own generator."""

    def __init__(self, sampler: Any, sample: torch.Tensor, seed: Seed, step_kwargs: dict[str, Any]) -> None:
        self.sampler, self.sample, self.step_kwargs = sampler, sample, step_kwargs
        self.generator: Any = None
        if seed is not None and "generator" in inspect.signature(sampler.step).parameters:
            seeds = [seed] if isinstance(seed, int) else list(seed)
            generators = [torch.Generator().manual_seed(s) for s in seeds]
            self.generator = generators[0] if isinstance(seed, int) else generators

    def step(self, model: Model, t: Any, disturb: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Any:
        sample = disturb(self.sample) if disturb else self.sample
        scale = getattr(self.sampler, "scale_model_input", None)
        model_output = model(scale(sample, t) if scale else sample, t)
        if disturb:
            model_output = disturb(model_output)
        extra = {"generator": self.generator} if self.generator is not None else {}
        out = self.sampler.step(model_output, t, sample, **extra, **self.step_kwargs)
        self.sample = out.prev_sample
        return out


def assert_trajectories_match(
    ours: Any,
    theirs: Any,
    model: Model,
    sample: torch.Tensor,
    *,
    seed: Seed = None,
    step_kwargs: dict[str, Any] | None = None,
    theirs_step_kwargs: dict[str, Any] | None = None,
    method_rtol: float = 0.0,
    timesteps: tuple[Any, Any] | None = None,
) -> int:
    """Walk both samplers (timesteps already set) from ``sample``; assert each step's sample and x̂₀ agree.

    The samplers' ``step`` results must have ``prev_sample`` (and may have ``pred_original_sample``).

    ``seed`` seeds one generator per run for stochastic steps (a list of seeds: one generator per image).
    ``method_rtol`` allows a stated difference of method on top of rounding (for example coefficients integrated
    numerically by one side and exactly by the other). Stops early, without failing, where the reference's own
    result stops being finite (its overflows are its own). Returns the number of steps compared.
    """
    kwargs = step_kwargs or {}
    theirs_kwargs = theirs_step_kwargs if theirs_step_kwargs is not None else kwargs
    ours_run, theirs_run = _Run(ours, sample, seed, kwargs), _Run(theirs, sample, seed, theirs_kwargs)
    shadows = [_Run(copy.deepcopy(theirs), sample, seed, theirs_kwargs) for _ in range(SHADOW_RUNS)]
    roundings = [torch.Generator().manual_seed(1000 + k) for k in range(SHADOW_RUNS)]
    ours_ts, theirs_ts = timesteps or (ours.timesteps, theirs.timesteps)
    compared = 0
    for i, (t_ours, t_theirs) in enumerate(zip(ours_ts, theirs_ts)):
        ours_out, theirs_out = ours_run.step(model, t_ours), theirs_run.step(model, t_theirs)
        shadow_outs = [run.step(model, t_theirs, lambda x, g=g: perturb(x, g)) for run, g in zip(shadows, roundings)]
        if not all(_finite(out.prev_sample) for out in (theirs_out, *shadow_outs)):
            break
        for what in ("prev_sample", "pred_original_sample"):
            a, b, *others = (getattr(out, what, None) for out in (ours_out, theirs_out, *shadow_outs))
            if a is None or b is None or any(c is None for c in others):
                continue
            spread = max(_size(c - b) for c in others)
            atol = SPREAD_FACTOR * spread + FLOOR_ROUNDINGS * EPS * max(_size(b), 1.0)
            torch.testing.assert_close(
                a,
                b,
                atol=atol,
                rtol=method_rtol,
                msg=lambda m, i=i, what=what, spread=spread, atol=atol: (
                    f"step {i} ({what}): {m}\nrounding spread of the reference here {spread:.3g}, allowed {atol:.3g}"
                ),
            )
        compared += 1
    return compared

"""What each sampler does with every option of its counterpart in the reference library (diffusers).

An option that is a parameter of the same method here (constructor, ``set_timesteps`` or ``step``) is implemented:
it changes the result as it does there, which ``tests/test_options.py`` checks against the reference. This table
names the rest: **refused** (building the sampler with any value but the one that leaves it off is an error that
gives the reason; a refused ``set_timesteps``/``step`` argument is not a parameter, so passing it is a TypeError)
or **irrelevant** (accepted, so the usual configs load, but it changes nothing, here as in the reference: why).
``values``: only these values of an implemented option are refused.

docs/samplers.md shows this table; ``python -m difframe_samplers.options docs/samplers.md`` rewrites that section
(it reads the reference's signatures, so it needs diffusers), and a test fails when the two disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from difframe.scheduling import Refused


@dataclass(frozen=True)
class Irrelevant:
    reason: str


Status = Refused | Irrelevant


@dataclass(frozen=True)
class Counterpart:
    """One of our samplers and its reference class. Keys: constructor options by name, method arguments as
    ``set_timesteps:name`` / ``step:name``."""

    ours: str  # "module:Class", under difframe_samplers unless it names a package
    reference: str  # the reference library's class name
    options: Mapping[str, Status] = field(default_factory=dict)


FLOW_REASON = (
    "flow matching (SD3/Flux/SANA-style models that predict a velocity between noise and data); these samplers "
    "integrate the noise-prediction diffusion of SD 1.x/2.x, and a flow model needs a flow-matching sampler"
)
FLOW: dict[str, Status] = {
    "use_flow_sigmas": Refused(FLOW_REASON, default=False),
    "flow_shift": Refused(FLOW_REASON, default=1.0),
    "use_dynamic_shifting": Refused(FLOW_REASON, default=False),
    "time_shift_type": Refused(FLOW_REASON, default="exponential"),
    "set_timesteps:mu": Refused(FLOW_REASON),
    "prediction_type": Refused(FLOW_REASON, values=("flow_prediction",)),
}
RETURN_DICT: dict[str, Status] = {
    "step:return_dict": Refused(
        "step always returns a SchedulerOutput, which unpacks (`prev, x0 = step(...)`) and indexes "
        "(`step(...)[0]`) like the reference's tuple; drop the argument"
    )
}

CONSISTENCY: dict[str, Status] = {
    "timestep_spacing": Irrelevant(
        "LCM and TCD pick their timesteps from the distillation schedule (original_inference_steps), whatever the "
        "spacing, as the reference does (accepted, so a model's usual config loads)"
    ),
    "steps_offset": Irrelevant(
        "LCM and TCD pick their timesteps from the distillation schedule (original_inference_steps), whatever the "
        "spacing, as the reference does (accepted, so a model's usual config loads)"
    ),
    "set_alpha_to_one": Irrelevant(
        "the schedule never steps below timestep 0, where this ᾱ would be used (accepted, so a model's usual config "
        "loads)"
    ),
}

COUNTERPARTS: tuple[Counterpart, ...] = (
    Counterpart(
        "ddpm:DDPMScheduler",
        "DDPMScheduler",
        {
            "variance_type": Refused(
                "the reference's step takes the square root of log β, a NaN, for this value",
                values=("fixed_large_log",),
            ),
            **RETURN_DICT,
        },
    ),
    Counterpart("ddim:DDIMScheduler", "DDIMScheduler", RETURN_DICT),
    Counterpart("pndm:PNDMScheduler", "PNDMScheduler", RETURN_DICT),
    Counterpart(
        "euler:EulerScheduler",
        "EulerDiscreteScheduler",
        {
            "interpolation_type": Refused(
                "the reference's 'log_linear' pairs num_inference_steps + 1 log-spaced σs with the num_inference_steps "
                "spaced timesteps, so the model is told timesteps that do not match its noise levels and the last "
                "step stops at σ_min instead of 0; use_exponential_sigmas spaces σ evenly in log σ with matched "
                "timesteps",
                values=("log_linear",),
            ),
            **RETURN_DICT,
        },
    ),
    Counterpart("euler:EulerAncestralScheduler", "EulerAncestralDiscreteScheduler", RETURN_DICT),
    Counterpart("heun:HeunScheduler", "HeunDiscreteScheduler", RETURN_DICT),
    Counterpart("lms:LMSScheduler", "LMSDiscreteScheduler", RETURN_DICT),
    Counterpart("dpm2:DPM2Scheduler", "KDPM2DiscreteScheduler", RETURN_DICT),
    Counterpart("dpm2:DPM2AncestralScheduler", "KDPM2AncestralDiscreteScheduler", RETURN_DICT),
    Counterpart("dpmpp:DPMSolverMultistepScheduler", "DPMSolverMultistepScheduler", {**FLOW, **RETURN_DICT}),
    Counterpart("dpm_single:DPMSolverSinglestepScheduler", "DPMSolverSinglestepScheduler", {**FLOW, **RETURN_DICT}),
    Counterpart("dpmpp_sde:DPMSolverSDEScheduler", "DPMSolverSDEScheduler", RETURN_DICT),
    Counterpart(
        "unipc:UniPCScheduler",
        "UniPCMultistepScheduler",
        {
            **FLOW,
            "shift_terminal": Refused(FLOW_REASON),
            "set_timesteps:sigmas": Refused(f"the reference takes it only with use_flow_sigmas: {FLOW_REASON}"),
            **RETURN_DICT,
        },
    ),
    Counterpart("deis:DEISScheduler", "DEISMultistepScheduler", {**FLOW, **RETURN_DICT}),
    Counterpart("difframe_plugin_lcm.lcm:LCMScheduler", "LCMScheduler", {**CONSISTENCY, **RETURN_DICT}),
    Counterpart(
        "difframe_plugin_lcm.tcd:TCDScheduler",
        "TCDScheduler",
        {
            **CONSISTENCY,
            **dict.fromkeys(
                ("clip_sample", "clip_sample_range", "thresholding", "dynamic_thresholding_ratio", "sample_max_value"),
                Irrelevant(
                    "the reference's TCD accepts it and never applies it: TCD's step neither clips nor thresholds "
                    "x̂_0 (accepted, so TCD configs load, with the reference's numbers)"
                ),
            ),
            "timestep_scaling": Irrelevant(
                "the reference's TCD accepts it and never applies it: TCD's step has no consistency boundary "
                "condition to scale (accepted, so TCD configs load, with the reference's numbers)"
            ),
            **RETURN_DICT,
        },
    ),
)

# The reference's other samplers, and why none of them has a counterpart here.
NOT_OFFERED: Mapping[str, str] = {
    "EDMEulerScheduler": "EDM-parameterized models (Playground v2.5); SD 1.x/2.x are not, and `euler` is its "
    "counterpart for them",
    "EDMDPMSolverMultistepScheduler": "EDM-parameterized models; `dpmpp_2m` is its counterpart for SD 1.x/2.x",
    "SASolverScheduler": "not implemented yet (SA-Solver, a stochastic Adams solver)",
    "DDIMInverseScheduler": "inversion (image to noise), not sampling",
    "DPMSolverMultistepInverseScheduler": "inversion (image to noise), not sampling",
    "DDIMParallelScheduler": "DDIM with batched parallel steps (ParaDiGMS): `ddim` gives the same samples",
    "DDPMParallelScheduler": "DDPM with batched parallel steps (ParaDiGMS): `ddpm` gives the same samples",
    "IPNDMScheduler": "for variance-exploding score models, not SD 1.x/2.x",
    "KarrasVeScheduler": "for variance-exploding score models (deprecated in the reference)",
    "ScoreSdeVeScheduler": "for variance-exploding score models (NCSN++), not SD 1.x/2.x",
    "RePaintScheduler": "an inpainting algorithm that needs its own pipeline (mask and resampling jumps)",
    "UnCLIPScheduler": "Karlo/unCLIP's prior and decoder only",
    "CMStochasticIterativeScheduler": "consistency models (Song et al. 2023) only; LCM/TCD are in difframe-plugin-lcm",
    "AmusedScheduler": "masked-token models (aMUSEd), not diffusion in a latent space",
    "VQDiffusionScheduler": "discrete (VQ token) diffusion",
    "DiscreteDDIMScheduler": "discrete (token) diffusion",
    "BlockRefinementScheduler": "discrete (token) diffusion",
    "EntropyBoundScheduler": "discrete (token) diffusion",
    "DDPMWuerstchenScheduler": "Würstchen / Stable Cascade's continuous-time prior only",
    "CogVideoXDDIMScheduler": "CogVideoX video models only",
    "CogVideoXDPMScheduler": "CogVideoX video models only",
    "CosineDPMSolverMultistepScheduler": "Stable Audio's cosine (EDM-style) schedule only",
    "FlowMatchEulerDiscreteScheduler": FLOW_REASON,
    "FlowMatchHeunDiscreteScheduler": FLOW_REASON,
    "FlowMatchLCMScheduler": FLOW_REASON,
    "FlowMapEulerDiscreteScheduler": FLOW_REASON,
    "LTXEulerAncestralRFScheduler": FLOW_REASON,
    "SCMScheduler": "continuous-time consistency models (sCM) with a TrigFlow parameterization only",
    "HeliosScheduler": "Helios video models only",
    "HeliosDMDScheduler": "Helios video models only",
    "MiniMaxH3Scheduler": "MiniMax video models only",
    "PiflowScheduler": "pi-Flow policy-based flow models only",
    "RFD4ProteinaScheduler": "protein structure models only",
}


def refused_options(reference: str) -> dict[str, Refused]:
    """The constructor options that the counterpart of ``reference`` refuses, for its ``refused_options``."""
    (counterpart,) = (c for c in COUNTERPARTS if c.reference == reference)
    return {k: v for k, v in counterpart.options.items() if isinstance(v, Refused) and ":" not in k}


# --- the table in docs/samplers.md --------------------------------------------------------------------------------
BEGIN, END = "<!-- options table: generated by python -m difframe_samplers.options -->", "<!-- end of options table -->"
METHODS = ("__init__", "set_timesteps", "step")
ALWAYS = frozenset({"self", "model_output", "timestep", "sample", "num_inference_steps"})  # the calls themselves


def load(path: str) -> type:
    """Our class from a ``Counterpart.ours`` path."""
    import importlib

    module, name = path.split(":")
    package_module = module if "." in module else f"difframe_samplers.{module}"
    return getattr(importlib.import_module(package_module), name)


def parameters(cls: type, method: str) -> list[str]:
    """The parameters of ``cls.method`` that an option can name (the table's keys: ``name`` or ``method:name``)."""
    import inspect

    names = [n for n in inspect.signature(getattr(cls, method)).parameters if n not in ALWAYS]
    return names if method == "__init__" else [f"{method}:{n}" for n in names]


def registered_names() -> dict[str, list[str]]:
    """Our registered sampler names for each class path (difframe_samplers and difframe-plugin-lcm)."""
    from . import plugin

    found: dict[str, list[str]] = {}

    def register(**spec: object) -> None:
        factory = str(spec["factory"]).removeprefix("difframe_samplers.")
        found.setdefault(factory, []).append(str(spec["name"]))

    plugin.register_scheduler(register)
    try:
        from difframe_plugin_lcm import plugin as lcm_plugin

        lcm_plugin.register_scheduler(register)
    except ImportError:
        pass
    return found


def markdown() -> str:
    """The options table: for each sampler, its reference's options, implemented / refused (why) / irrelevant (why)."""
    import diffusers

    names, reasons = registered_names(), list[str]()

    def cite(reason: str) -> str:
        if reason not in reasons:
            reasons.append(reason)
        return f"[{reasons.index(reason) + 1}]"

    def show(key: str, status: Status | None = None) -> str:
        method, _, name = key.rpartition(":")
        shown = f"`{method}({name})`" if method else f"`{name}`"
        if isinstance(status, Refused) and status.values:
            shown = f"`{key.rpartition(':')[2]}={'/'.join(map(repr, status.values))}`".replace("'", '"')
        return shown if status is None else f"{shown} {cite(status.reason)}"

    rows = [
        "| sampler (names) | reference class | implemented | refused (reason) | irrelevant (reason) |",
        "|---|---|---|---|---|",
    ]
    for c in COUNTERPARTS:
        ours, theirs = load(c.ours), getattr(diffusers, c.reference)
        own = {p for m in METHODS for p in parameters(ours, m)}
        reference = [p for m in METHODS for p in parameters(theirs, m)]
        implemented = [show(p) for p in reference if p in own and not isinstance(c.options.get(p), Irrelevant)]
        refused = [show(k, s) for k, s in c.options.items() if isinstance(s, Refused)]
        irrelevant = [show(k, s) for k, s in c.options.items() if isinstance(s, Irrelevant)]
        label = ", ".join(f"`{n}`" for n in names.get(c.ours, [])) or f"`{c.ours}`"
        cells = [label, f"`{c.reference}`", ", ".join(implemented), ", ".join(refused), ", ".join(irrelevant)]
        rows.append("| " + " | ".join(cell or "—" for cell in cells) + " |")
    notes = [f"{i}. {reason}" for i, reason in enumerate(reasons, 1)]
    others = ["| reference class | why difframe has no counterpart |", "|---|---|"]
    others += [f"| `{name}` | {why} |" for name, why in sorted(NOT_OFFERED.items())]
    return "\n".join([BEGIN, "", *rows, "", *notes, "", *others, "", END])


def rewrite(path: str) -> bool:
    """Replace the table between the markers in ``path``; True if the file changed."""
    from pathlib import Path

    from difframe.atomic import atomic_write_text

    text = Path(path).read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path} has no options table markers: add the lines\n{BEGIN}\n{END}\nwhere it goes")
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    new = before + markdown() + after
    if new != text:
        atomic_write_text(Path(path), new)
    return new != text


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m difframe_samplers.options docs/samplers.md")
    print("rewritten" if rewrite(sys.argv[1]) else "already up to date")

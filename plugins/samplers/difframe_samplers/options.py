"""What each sampler does with every option of its counterpart in the reference library (diffusers).

An option that is a parameter of the same method here (constructor, ``set_timesteps`` or ``step``) is implemented:
it changes the result as it does there, which ``tests/test_options.py`` checks against the reference. This table
names the rest: **refused** (building the sampler with any value but the one that leaves it off is an error that
gives the reason; a refused ``set_timesteps``/``step`` argument is not a parameter, so passing it is a TypeError)
or **irrelevant** (why it has no meaning here). ``values``: only these values of an implemented option are refused.

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
    Counterpart("difframe_plugin_lcm.lcm:LCMScheduler", "LCMScheduler", RETURN_DICT),
    Counterpart("difframe_plugin_lcm.tcd:TCDScheduler", "TCDScheduler", RETURN_DICT),
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

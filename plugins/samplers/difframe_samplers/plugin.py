"""The samplers' registrations. Factories are strings: listing plugins imports neither torch nor the samplers."""

from __future__ import annotations

from typing import Any

import difframe

KARRAS = {"use_karras_sigmas": True}
DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
DPMPP_3M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}
DPMPP_3S = {"algorithm_type": "dpmsolver++", "solver_order": 3}
NEEDS_TORCHSDE = {"packages": ("torchsde",)}

# name -> (label, Schedule type) in AUTOMATIC1111's web UI, which PNG parameters write and read. Web UI 1.9 and later
# write the two separately and give some samplers a default schedule ("DPM++ 2M" alone means Karras there); earlier
# versions know only combined labels ("DPM++ 2M Karras") and 1.4-1.8 stop on a "Schedule type" they do not know. So
# the label is combined where the schedule is Karras (both read it alike); PNG parameters add "Schedule type" only
# where 1.9 needs it. DPM++ 2S/3S (singlestep, not ancestral) have no web-UI sampler: their names are written as they
# are.
WEB_UI: dict[str, tuple[str, str | None]] = {
    "ddim": ("DDIM", None),
    "ddpm": ("DDPM", None),
    "pndm": ("PNDM", None),
    "plms": ("PLMS", None),
    "unipc": ("UniPC", None),
    "unipc_karras": ("UniPC Karras", None),
    "deis": ("DEIS", None),
    "lms": ("LMS", "Uniform"),
    "lms_karras": ("LMS Karras", "Karras"),
    "euler": ("Euler", "Uniform"),
    "euler_karras": ("Euler Karras", "Karras"),
    "euler_a": ("Euler a", "Uniform"),
    "heun": ("Heun", "Uniform"),
    "heun_karras": ("Heun Karras", "Karras"),
    "dpm2": ("DPM2", "Uniform"),
    "dpm2_karras": ("DPM2 Karras", "Karras"),
    "dpm2_a": ("DPM2 a", "Uniform"),
    "dpm2_a_karras": ("DPM2 a Karras", "Karras"),
    "dpmpp_2m": ("DPM++ 2M", "Uniform"),
    "dpmpp_2m_karras": ("DPM++ 2M Karras", "Karras"),
    "dpmpp_sde": ("DPM++ SDE", "Uniform"),
    "dpmpp_sde_karras": ("DPM++ SDE Karras", "Karras"),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", "Uniform"),
    "dpmpp_2m_sde_karras": ("DPM++ 2M SDE Karras", "Karras"),
    "dpmpp_2m_sde_exponential": ("DPM++ 2M SDE", "Exponential"),
    "dpmpp_3m_sde": ("DPM++ 3M SDE", "Uniform"),
    "dpmpp_3m_sde_karras": ("DPM++ 3M SDE Karras", "Karras"),
    "dpmpp_3m_sde_exponential": ("DPM++ 3M SDE", "Exponential"),
    "dpmpp_2s_a": ("DPM++ 2S a", "Uniform"),
    "dpmpp_2s_a_karras": ("DPM++ 2S a Karras", "Karras"),
}


@difframe.hookimpl
def register_scheduler(register: Any) -> None:
    def add(
        name: str,
        factory: str,
        aliases: tuple[str, ...],
        description: str,
        *,
        options: dict[str, Any] | None = None,
        stochastic: bool = False,
        loads: str | None = None,
        requires: dict[str, Any] | None = None,
    ) -> None:
        # Each class of the shared layout is loaded by exactly one name: the plain one, without options.
        label, schedule_type = WEB_UI.get(name, (None, None))
        register(
            name=name,
            factory=f"difframe_samplers.{factory}",
            aliases=aliases,
            description=description,
            options=options or {},
            stochastic=stochastic,
            loads=[("diffusers", loads)] if loads else [],
            requires=requires or {},
            label=label,
            schedule_type=schedule_type,
        )

    # Aliases include the names web UIs show ("DPM++ 2M Karras", "Euler a"); they match case-insensitively.
    add("ddpm", "ddpm:DDPMScheduler", ("DDPM",), "DDPM ancestral sampling", stochastic=True, loads="DDPMScheduler")
    add("ddim", "ddim:DDIMScheduler", ("DDIM",), "DDIM; eta=0 is deterministic", loads="DDIMScheduler")
    add("pndm", "pndm:PNDMScheduler", ("PNDM",), "Runge-Kutta warm-up, then linear multistep", loads="PNDMScheduler")
    add("plms", "pndm:PNDMScheduler", ("PLMS",), "PNDM without the warm-up", options={"skip_prk_steps": True})
    add("euler", "euler:EulerScheduler", ("Euler",), "Euler", loads="EulerDiscreteScheduler")
    add("euler_karras", "euler:EulerScheduler", ("Euler Karras",), "Euler, Karras sigmas", options=KARRAS)
    add(
        "euler_a",
        "euler:EulerAncestralScheduler",
        ("Euler a", "euler_ancestral", "Euler ancestral"),
        "Euler ancestral",
        stochastic=True,
        loads="EulerAncestralDiscreteScheduler",
    )
    add("heun", "heun:HeunScheduler", ("Heun",), "Heun, 2 model calls a step", loads="HeunDiscreteScheduler")
    add("heun_karras", "heun:HeunScheduler", ("Heun Karras",), "Heun, Karras sigmas", options=KARRAS)
    add("lms", "lms:LMSScheduler", ("LMS",), "linear multistep", loads="LMSDiscreteScheduler")
    add("lms_karras", "lms:LMSScheduler", ("LMS Karras",), "linear multistep, Karras sigmas", options=KARRAS)
    add("dpm2", "dpm2:DPM2Scheduler", ("DPM2",), "DPM2, 2 model calls a step", loads="KDPM2DiscreteScheduler")
    add("dpm2_karras", "dpm2:DPM2Scheduler", ("DPM2 Karras",), "DPM2, Karras sigmas", options=KARRAS)
    add(
        "dpm2_a",
        "dpm2:DPM2AncestralScheduler",
        ("DPM2 a", "dpm2_ancestral"),
        "DPM2 ancestral",
        stochastic=True,
        loads="KDPM2AncestralDiscreteScheduler",
    )
    add(
        "dpm2_a_karras",
        "dpm2:DPM2AncestralScheduler",
        ("DPM2 a Karras",),
        "DPM2 ancestral, Karras sigmas",
        options=KARRAS,
        stochastic=True,
    )
    dpmpp = "dpmpp:DPMSolverMultistepScheduler"
    add(
        "dpmpp_2m",
        dpmpp,
        ("dpmpp", "DPM++ 2M", "dpmsolver++"),
        "DPM-Solver++ 2M",
        options=DPMPP_2M,
        loads="DPMSolverMultistepScheduler",
    )
    add(
        "dpmpp_2m_karras",
        dpmpp,
        ("DPM++ 2M Karras", "dpmpp_karras"),
        "DPM++ 2M, Karras sigmas",
        options=DPMPP_2M | KARRAS,
    )
    add("dpmpp_2m_sde", dpmpp, ("DPM++ 2M SDE",), "DPM++ 2M, stochastic", options=DPMPP_2M_SDE, stochastic=True)
    add(
        "dpmpp_2m_sde_karras",
        dpmpp,
        ("DPM++ 2M SDE Karras",),
        "DPM++ 2M SDE, Karras sigmas",
        options=DPMPP_2M_SDE | KARRAS,
        stochastic=True,
    )
    add("dpmpp_3m_sde", dpmpp, ("DPM++ 3M SDE",), "DPM++ 3M, stochastic", options=DPMPP_3M_SDE, stochastic=True)
    add(
        "dpmpp_3m_sde_karras",
        dpmpp,
        ("DPM++ 3M SDE Karras",),
        "DPM++ 3M SDE, Karras sigmas",
        options=DPMPP_3M_SDE | KARRAS,
        stochastic=True,
    )
    exponential = {"use_exponential_sigmas": True}  # the web UI's default schedule of its DPM++ SDE samplers
    add(
        "dpmpp_2m_sde_exponential",
        dpmpp,
        ("DPM++ 2M SDE Exponential",),
        "DPM++ 2M SDE, exponential sigmas",
        options=DPMPP_2M_SDE | exponential,
        stochastic=True,
    )
    add(
        "dpmpp_3m_sde_exponential",
        dpmpp,
        ("DPM++ 3M SDE Exponential",),
        "DPM++ 3M SDE, exponential sigmas",
        options=DPMPP_3M_SDE | exponential,
        stochastic=True,
    )
    add(
        "dpmpp_sde",
        "dpmpp_sde:DPMSolverSDEScheduler",
        ("DPM++ SDE",),
        "DPM++ SDE, Brownian-tree noise",
        stochastic=True,
        loads="DPMSolverSDEScheduler",
        requires=NEEDS_TORCHSDE,
    )
    add(
        "dpmpp_sde_karras",
        "dpmpp_sde:DPMSolverSDEScheduler",
        ("DPM++ SDE Karras",),
        "DPM++ SDE, Karras sigmas",
        options=KARRAS,
        stochastic=True,
        requires=NEEDS_TORCHSDE,
    )
    single = "dpm_single:DPMSolverSinglestepScheduler"
    add(
        "dpmpp_2s",
        single,
        ("DPM++ 2S", "dpm_singlestep", "dpmsolver_singlestep"),
        "DPM-Solver++ singlestep, second order",
        options=DPMPP_2M,
        loads="DPMSolverSinglestepScheduler",
    )
    add("dpmpp_2s_karras", single, ("DPM++ 2S Karras",), "DPM++ 2S, Karras sigmas", options=DPMPP_2M | KARRAS)
    add("dpmpp_3s", single, ("DPM++ 3S",), "DPM-Solver++ singlestep, third order", options=DPMPP_3S)
    two_s_a = "dpmpp_2s_ancestral:DPMSolver2SAncestralScheduler"
    add("dpmpp_2s_a", two_s_a, ("DPM++ 2S a", "dpmpp_2s_ancestral"), "DPM++ 2S ancestral", stochastic=True)
    add(
        "dpmpp_2s_a_karras",
        two_s_a,
        ("DPM++ 2S a Karras",),
        "DPM++ 2S ancestral, Karras sigmas",
        options=KARRAS,
        stochastic=True,
    )
    add("unipc", "unipc:UniPCScheduler", ("UniPC",), "UniPC predictor-corrector", loads="UniPCMultistepScheduler")
    add("unipc_karras", "unipc:UniPCScheduler", ("UniPC Karras",), "UniPC, Karras sigmas", options=KARRAS)
    add("deis", "deis:DEISScheduler", ("DEIS",), "DEIS log-rho multistep", loads="DEISMultistepScheduler")

"""What this plugin adds to difframe. Kept free of torch imports: difframe reads it just to list plugins."""

from __future__ import annotations

from typing import Any

import difframe


@difframe.hookimpl
def register_scheduler(register: Any) -> None:
    register(
        name="lcm",
        factory="difframe_plugin_lcm.lcm:LCMScheduler",
        aliases=("LCM", "latent-consistency"),
        description="Latent Consistency Model sampling: 2-8 steps with an LCM-distilled model or LoRA",
        stochastic=True,
        label="LCM",  # the web UI's name for it (PNG parameters)
        loads=[("diffusers", "LCMScheduler")],
    )
    register(
        name="tcd",
        factory="difframe_plugin_lcm.tcd:TCDScheduler",
        aliases=("TCD",),
        description="Trajectory Consistency Distillation sampling (eta sets how much noise each step re-adds)",
        stochastic=True,
        loads=[("diffusers", "TCDScheduler")],
    )

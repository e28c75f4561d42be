"""Registrations of difframe-guiders. No torch import here: factories are strings."""

from __future__ import annotations

from difframe import hookimpl

PACKAGE = "difframe_guiders"


@hookimpl
def register_guider(register) -> None:
    register(
        name="apg",
        factory=f"{PACKAGE}.adaptive_projected:AdaptiveProjectedGuidance",
        aliases=("adaptive-projected-guidance",),
        description="adaptive projected guidance: the guidance update minus most of its part parallel to cond",
    )
    register(
        name="cfg-zero-star",
        factory=f"{PACKAGE}.zero_star:ClassifierFreeZeroStarGuidance",
        aliases=("cfg-zero*", "cfgzero*"),
        description="CFG-Zero*: unconditional prediction scaled by its optimal projection; zeroed first steps",
    )
    register(
        name="pag",
        factory=f"{PACKAGE}.perturbed_attention:PerturbedAttentionGuidance",
        aliases=("perturbed-attention-guidance",),
        description="perturbed-attention guidance: an extra branch with identity self-attention on chosen layers",
    )


@hookimpl
def register_inference_hook(register) -> None:
    register(
        name="identity-self-attention",
        factory=f"{PACKAGE}.perturbed_attention:IdentitySelfAttention",
        description="self-attention replaced by its value projection for one guidance branch (PAG's perturbation)",
    )

"""Registrations of difframe-sd-unet. No torch import here: the factory is a string, imported when built."""

from __future__ import annotations

from difframe import hookimpl


@hookimpl
def register_model(register) -> None:
    register(
        name="sd-unet",
        factory="difframe_sd_unet.unet:UNet2DConditionModel",
        aliases=("unet2dcondition",),
        role="denoiser",
        loads=[("diffusers", "UNet2DConditionModel")],
        description="Stable Diffusion 1.x / 2.x conditional UNet (cross-attention, v-prediction, inpainting)",
        supports={"families": ("sd1", "sd2"), "dtypes": ("float32", "float16", "bfloat16")},
    )

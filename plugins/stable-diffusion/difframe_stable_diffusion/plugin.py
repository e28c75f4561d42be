"""Registrations of difframe-stable-diffusion. No torch import here: factories are strings."""

from __future__ import annotations

from difframe import hookimpl

PACKAGE = "difframe_stable_diffusion"
BUILT_IN_MODEL = "difframe_shapes_model:difframe-shapes"  # used when build() is given no model
# its 8x8 latents make oneDNN's per-call weight reorders cost as much as the convolutions themselves
BUILT_IN_OPTIONS = {"prepacked_convolutions": "auto"}


@hookimpl
def register_pipeline(register) -> None:
    register(
        name="stable-diffusion",
        factory=f"{PACKAGE}.text_to_image:StableDiffusionPipeline",
        aliases=("txt2img", "text-to-image", "sd"),
        loads=[("diffusers", "StableDiffusionPipeline")],
        default_model=BUILT_IN_MODEL,
        default_model_options=BUILT_IN_OPTIONS,
        description="Stable Diffusion 1.x / 2.x text-to-image",
    )
    register(
        name="stable-diffusion-img2img",
        factory=f"{PACKAGE}.image_to_image:StableDiffusionImg2ImgPipeline",
        aliases=("img2img", "image-to-image"),
        loads=[("diffusers", "StableDiffusionImg2ImgPipeline")],
        default_model=BUILT_IN_MODEL,
        default_model_options=BUILT_IN_OPTIONS,
        description="Stable Diffusion image-to-image: an init image, noised to `strength`, then denoised",
    )
    register(
        name="stable-diffusion-inpaint",
        factory=f"{PACKAGE}.inpaint:StableDiffusionInpaintPipeline",
        aliases=("inpaint", "inpainting"),
        loads=[("diffusers", "StableDiffusionInpaintPipeline")],
        default_model=BUILT_IN_MODEL,
        default_model_options=BUILT_IN_OPTIONS,
        description="Stable Diffusion inpainting: plain checkpoints (latent blending) or 9-channel inpainting UNets",
    )


@hookimpl
def register_commands(cli) -> None:
    from .cli import add_generate_command

    add_generate_command(cli)

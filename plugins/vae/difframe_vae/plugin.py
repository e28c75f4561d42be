"""Registrations of difframe-vae. Factories are strings: listing plugins never imports torch."""

from __future__ import annotations

from difframe import hookimpl


@hookimpl
def register_model(register) -> None:
    register(
        name="vae-kl",
        factory="difframe_vae.autoencoder_kl:AutoencoderKL",
        aliases=("autoencoder-kl",),
        role="autoencoder",
        loads=[("diffusers", "AutoencoderKL")],
        description="Stable Diffusion's KL autoencoder: encode images to latents, decode back (sliced, tiled)",
    )

"""difframe plugin: Stable Diffusion's KL autoencoder. Importing the package does not import torch."""

from __future__ import annotations

from typing import Any

__all__ = ["AutoencoderKL", "DiagonalGaussian"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import autoencoder_kl

        return getattr(autoencoder_kl, name)
    raise AttributeError(f"module 'difframe_vae' has no attribute {name!r}")

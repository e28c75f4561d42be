"""Registrations of difframe-step-cache. No torch import here: factories are strings."""

from __future__ import annotations

from difframe import hookimpl

PACKAGE = "difframe_step_cache"
STEP_CACHES = ("deepcache", "first-block-cache")


@hookimpl
def register_inference_hook(register) -> None:
    register(
        name="deepcache",
        factory=f"{PACKAGE}.deepcache:DeepCache",
        aliases=("deep-cache",),
        description="DeepCache: the full UNet every `interval` steps, between them its shallow path on cached features",
        incompatible=tuple(name for name in STEP_CACHES if name != "deepcache"),
    )
    register(
        name="first-block-cache",
        factory=f"{PACKAGE}.first_block:FirstBlockCache",
        aliases=("fbcache",),
        description="first-block cache: reuse the rest of the UNet's residual while the first block's barely changes",
        incompatible=tuple(name for name in STEP_CACHES if name != "first-block-cache"),
    )

"""Registrations of difframe-ip-adapter. No torch import here: factories are strings, imported when built."""

from __future__ import annotations

from difframe import hookimpl


@hookimpl
def register_conditioner(register) -> None:
    register(
        name="ip-adapter",
        factory="difframe_ip_adapter.pipeline:ImagePrompter",
        modality="image",
        description="IP-Adapter image prompts: a CLIP image encoder, projection models, decoupled cross-attention",
    )

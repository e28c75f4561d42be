"""Registration of difframe-xformers-attn. No torch or xformers import here: the factory is a string."""

from __future__ import annotations

from difframe import hookimpl


@hookimpl
def register_attention_processor(register) -> None:
    register(
        name="xformers",
        factory="difframe_xformers_attn.backend:XFormersBackend",
        aliases=("memory_efficient", "xformers_memory_efficient_attention"),
        role="backend",
        priority=20,
        description="xformers memory_efficient_attention (NVIDIA GPUs)",
        supports={"devices": ("cuda",)},
        requires={
            "packages": ("xformers",),
            "cuda": True,
            "install": "pip install 'difframe-xformers-attn[xformers]'",
        },
    )

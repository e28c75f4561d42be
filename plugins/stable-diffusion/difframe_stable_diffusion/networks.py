"""What a pipeline adds on top of its weights: LoRA adapters, textual-inversion embeddings, and the web UIs'
``<lora:NAME:WEIGHT>`` prompt syntax (looked up in a LoRA folder, recorded in the PNG as "Lora hashes")."""

from __future__ import annotations

from .lora import LoraMixin


class NetworksMixin(LoraMixin):
    """LoRA and textual inversion for the Stable Diffusion pipelines."""

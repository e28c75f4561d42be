"""difframe plugin: CLIP text conditioning and the CLIP vision encoder. Importing it does not import torch."""

from __future__ import annotations

from typing import Any

_LAZY = {
    "CLIPTextConditioner": "conditioner",
    "CLIPTextModelLoader": "models",
    "CLIPTokenizerLoader": "models",
    "CLIPVisionModelLoader": "models",
    "CLIPImageProcessor": "models",
    "write_tokenizer_folder": "vocab",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'difframe_clip' has no attribute {name!r}")

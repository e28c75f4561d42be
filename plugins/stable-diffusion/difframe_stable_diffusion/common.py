"""Former home of everything the pipelines share; the pieces now live one concern per module (docs/architecture.md).
These names stay importable from here for code written against the earlier layout."""

from __future__ import annotations

from .base import StableDiffusionBase
from .batching import split_where_changes
from .loop import Chunk, Start
from .output import INTERRUPTED_KEY, StableDiffusionOutput
from .request import OUTPUT_TYPES
from .runtime import check_attention_name as _check_attention_name

__all__ = [
    "INTERRUPTED_KEY",
    "OUTPUT_TYPES",
    "Chunk",
    "StableDiffusionBase",
    "StableDiffusionOutput",
    "Start",
    "_check_attention_name",
    "split_where_changes",
]

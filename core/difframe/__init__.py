"""difframe: a plugin-based diffusion framework.

Importing this package does not import torch; the torch-backed base classes load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .hookspecs import hookimpl
from .specs import (
    AttentionProcessorSpec,
    BackendSpec,
    ConditionerSpec,
    ModelSpec,
    PipelineSpec,
    Requirements,
    SchedulerSpec,
    Supports,
)

__version__ = "0.1.0"

_LAZY = {
    "Framework": "difframe.framework",
    "ConfigMixin": "difframe.configuration",
    "ModelMixin": "difframe.modeling",
    "SchedulerMixin": "difframe.scheduling",
    "SchedulerOutput": "difframe.scheduling",
    "DiffusionPipeline": "difframe.pipeline",
    "Component": "difframe.pipeline",
}

if TYPE_CHECKING:
    from .configuration import ConfigMixin
    from .framework import Framework
    from .modeling import ModelMixin
    from .pipeline import Component, DiffusionPipeline
    from .scheduling import SchedulerMixin, SchedulerOutput


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difframe' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AttentionProcessorSpec",
    "BackendSpec",
    "Component",
    "ConditionerSpec",
    "ConfigMixin",
    "DiffusionPipeline",
    "Framework",
    "ModelMixin",
    "ModelSpec",
    "PipelineSpec",
    "Requirements",
    "SchedulerMixin",
    "SchedulerOutput",
    "SchedulerSpec",
    "Supports",
    "__version__",
    "hookimpl",
]

"""What both step caches share: settings checked by pydantic, and outputs kept per guidance branch."""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from difframe.guidance import StepContext
from pydantic import BaseModel, ValidationError

Settings = TypeVar("Settings", bound=BaseModel)


def checked(model: type[Settings], hook: str, **values: Any) -> Settings:
    """The hook's settings, or a ValueError that names the hook, each bad option and what it accepts."""
    try:
        return model(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}={e.get('input')!r}: {e['msg']}" for e in error.errors(include_url=False)
        )
        fields = ", ".join(f"{name} ({field.description})" for name, field in model.model_fields.items())
        raise ValueError(f"inference hook {hook!r}: bad option(s): {problems}. Its options: {fields}") from None


def map_tensors(value: Any, function: Any) -> Any:
    """``function`` applied to every tensor of a module output (a tensor, or tuples and lists of them)."""
    if torch.is_tensor(value):
        return function(value)
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(item, function) for item in value)
    raise TypeError(f"a step cache keeps tensors, tuples and lists, not {type(value).__name__}")


class BranchCache:
    """Module outputs of one step, reusable in later steps that run the same guidance branches or some of them
    (a guidance interval drops the unconditional branch; PAG adds a perturbed one)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self, step: StepContext | None = None) -> None:
        self.branches: tuple[str, ...] = step.branches if step is not None else ()
        self.rows = step.rows if step is not None else 0
        self.values: dict[str, Any] = {}

    def covers(self, step: StepContext) -> bool:
        """Whether every row ``step`` runs was cached."""
        return bool(self.branches) and step.rows == self.rows and set(step.branches) <= set(self.branches)

    def put(self, key: str, value: Any) -> None:
        self.values[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str, step: StepContext) -> Any:
        """The cached value with its rows in ``step``'s branch order."""
        value = self.values[key]
        if step.branches == self.branches:
            return value
        at = [self.branches.index(branch) for branch in step.branches]
        rows = self.rows
        return map_tensors(value, lambda t: torch.cat([t[i * rows : (i + 1) * rows] for i in at]))

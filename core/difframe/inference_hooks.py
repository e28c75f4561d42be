"""Inference hooks: code run before and after named modules of a model at every denoising step.

A hook names the modules it wraps (``targets``: glob patterns over ``named_modules()`` names, or class names), and
gets ``pre_forward`` (may change the inputs, or return ``Skip(output)`` to skip the module) and ``post_forward``
(may replace the output). The step it runs in (index, timestep, guidance branches) is ``current_step()``. Several
hooks on one module run in the order they were added: ``pre_forward`` first to last, ``post_forward`` last to first,
like nested wrappers. ``reset()`` runs at the start of every call, so state never leaks from one image to the next.
"""

from __future__ import annotations

import contextvars
import fnmatch
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from .errors import DifframeError
from .guidance import StepContext

_STEP: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar("difframe_step", default=None)


def current_step() -> StepContext | None:
    """The step the running call is at (None outside a denoising loop)."""
    return _STEP.get()


@contextmanager
def at_step(step: StepContext) -> Iterator[None]:
    token = _STEP.set(step)
    try:
        yield
    finally:
        _STEP.reset(token)


@dataclass(frozen=True)
class Skip:
    """Returned by ``pre_forward``: the module does not run and this is its output."""

    output: Any


class HookError(DifframeError):
    """A hook raised: the message names the hook and the module."""


class InferenceHook:
    """Base of inference hooks. Subclasses set ``targets`` and override what they need."""

    targets: ClassVar[tuple[str, ...]] = ()  # module name globs ("mid_block*") or class names ("Attention")
    stateful: ClassVar[bool] = False  # keeps state across steps: calls using it run one at a time
    name: str = ""  # the registered name, set when built by name

    def matches(self, module_name: str, module: nn.Module) -> bool:
        return any(fnmatch.fnmatchcase(module_name, t) or type(module).__name__ == t for t in self.targets)

    def reset(self) -> None:
        """Start of a call: drop what earlier calls left."""

    def pre_forward(self, module_name: str, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        """None, ``(args, kwargs)`` to change the inputs, or ``Skip(output)``."""
        return None

    def post_forward(self, module_name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """None, or the output to use instead."""
        return None

    def description(self) -> dict[str, Any]:
        """Settings recorded with the image."""
        return {}


class _Wrapped:
    """The forward a hooked module gets: runs its hooks around the original."""

    def __init__(self, module_name: str, module: nn.Module) -> None:
        self.module_name, self.module = module_name, module
        self.original = module.forward
        self.own = "forward" in module.__dict__  # it replaced an instance forward (a backend's compiled layer)
        self.hooks: list[InferenceHook] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ran: list[InferenceHook] = []
        output: Any = None
        skipped = False
        for hook in self.hooks:
            result = self._call(hook, "pre_forward", hook.pre_forward, args, kwargs)
            ran.append(hook)
            if isinstance(result, Skip):
                output, skipped = result.output, True
                break
            if result is not None:
                args, kwargs = result
        if not skipped:
            output = self.original(*args, **kwargs)
        for hook in reversed(ran):
            replaced = self._call(hook, "post_forward", hook.post_forward, args, kwargs, output)
            if replaced is not None:
                output = replaced
        return output

    def _call(self, hook: InferenceHook, stage: str, function: Any, *args: Any) -> Any:
        try:
            return function(self.module_name, self.module, *args)
        except HookError:
            raise
        except Exception as error:
            label = hook.name or type(hook).__name__
            raise HookError(
                f"inference hook {label!r} failed in {stage} of module {self.module_name!r} "
                f"({type(self.module).__name__}): {type(error).__name__}: {error}"
            ) from error


def hooks_on(module: nn.Module) -> list[InferenceHook]:
    """The inference hooks wrapping ``module``'s forward (empty when none)."""
    wrapped = module.__dict__.get("forward")
    return list(wrapped.hooks) if isinstance(wrapped, _Wrapped) else []


def replace_forward(module: nn.Module, forward: Any) -> None:
    """Give ``module`` its own forward (a backend's compiled graph) beneath any inference hooks wrapping it: the hooks
    keep running around it, and removing them leaves this forward in place."""
    wrapped = module.__dict__.get("forward")
    if isinstance(wrapped, _Wrapped):
        wrapped.original, wrapped.own = forward, True
    else:
        module.forward = forward


class HookSet:
    """The hooks installed on one model, in order."""

    def __init__(self) -> None:
        self.hooks: list[InferenceHook] = []
        self._wrapped: dict[str, _Wrapped] = {}

    def add(self, model: nn.Module, hook: InferenceHook) -> None:
        matched = [(n, m) for n, m in model.named_modules() if n and hook.matches(n, m)]
        if not matched:
            raise ValueError(
                f"inference hook {hook.name or type(hook).__name__!r} targets {list(hook.targets)}, which match no "
                f"module of {type(model).__name__}"
            )
        for module_name, module in matched:
            wrapped = self._wrapped.get(module_name)
            if wrapped is None:
                wrapped = self._wrapped[module_name] = _Wrapped(module_name, module)
                module.forward = wrapped
            wrapped.hooks.append(hook)
        self.hooks.append(hook)

    def remove(self, hook: InferenceHook) -> None:
        self.hooks.remove(hook)
        for module_name, wrapped in list(self._wrapped.items()):
            if hook in wrapped.hooks:
                wrapped.hooks.remove(hook)
            if not wrapped.hooks:
                if wrapped.own:  # the instance forward it replaced (a backend's), not the class's
                    wrapped.module.forward = wrapped.original
                else:
                    del wrapped.module.forward  # the class's forward again
                del self._wrapped[module_name]

    def reset(self) -> None:
        for hook in self.hooks:
            hook.reset()

    @property
    def stateful(self) -> bool:
        return any(hook.stateful for hook in self.hooks)

"""One pipeline, several threads: calls run side by side, changes to the shared models wait for them.

A call holds the gate shared for its whole run; a change that rewires the models (attention backend, slicing,
tiling, prepacking, offload, moving to a device) holds it exclusively, so it waits for the calls in progress and
the calls that start after it see the change whole. Each call keeps its own state (its sampler copy, its interrupt
flag) in a ``CallState``; nothing a call mutates lives on the pipeline.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class CallGate:
    """A readers-writer lock that knows which thread holds it shared (a writer from inside a call would wait for
    itself forever, so that is refused with an error instead)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._waiting_writers = 0
        self._local = threading.local()

    def _held_here(self) -> int:
        return getattr(self._local, "depth", 0)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._condition:
            if self._writer == me or self._held_here():  # nested: a call made from a callback, or inside a change
                self._local.depth = self._held_here() + 1
                nested = True
            else:
                while self._writer is not None or self._waiting_writers:
                    self._condition.wait()
                self._readers += 1
                self._local.depth = 1
                nested = False
        try:
            yield
        finally:
            with self._condition:
                self._local.depth -= 1
                if not nested:
                    self._readers -= 1
                    self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self, what: str) -> Iterator[None]:
        me = threading.get_ident()
        with self._condition:
            if self._writer == me:
                nested = True
            elif self._held_here():
                raise RuntimeError(
                    f"{what} cannot run inside a call of this pipeline (from a step callback): it rewires the models "
                    "the call is using. Make the change before or after the call."
                )
            else:
                nested = False
                self._waiting_writers += 1
                try:
                    while self._writer is not None or self._readers:
                        self._condition.wait()
                finally:
                    self._waiting_writers -= 1
                self._writer = me
        try:
            yield
        finally:
            if not nested:
                with self._condition:
                    self._writer = None
                    self._condition.notify_all()


@dataclass
class CallState:
    """What one call owns: its copy of the sampler and whether it was asked to stop."""

    sampler: Any
    interrupted: bool = False
    steps_run: dict[int, int] = field(default_factory=dict)  # chunk start -> denoising steps it ran


class ActiveCalls:
    """The calls in progress, and the one (if any) running in the current thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[int, CallState] = {}
        self._local = threading.local()

    @contextlib.contextmanager
    def begin(self, state: CallState) -> Iterator[CallState]:
        outer = getattr(self._local, "state", None)
        self._local.state = state
        with self._lock:
            self._states[id(state)] = state
        try:
            yield state
        finally:
            self._local.state = outer
            with self._lock:
                self._states.pop(id(state), None)

    def current(self) -> CallState | None:
        return getattr(self._local, "state", None)

    def all(self) -> list[CallState]:
        with self._lock:
            return list(self._states.values())

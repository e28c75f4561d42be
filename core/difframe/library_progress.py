"""Progress bars of the libraries that read weights (transformers' "Loading weights", the hub's downloads):
turned off while a pipeline loads with ``progress=False`` (or the CLI runs with ``--no-progress``), then restored."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def quiet_library_progress(quiet: bool = True) -> Iterator[None]:
    restore: list[Callable[[], None]] = []
    if quiet and importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as transformers_logging

        if transformers_logging.is_progress_bar_enabled():
            transformers_logging.disable_progress_bar()
            restore.append(transformers_logging.enable_progress_bar)
    if quiet and importlib.util.find_spec("huggingface_hub") is not None:
        from huggingface_hub import utils as hub_utils

        if not hub_utils.are_progress_bars_disabled():
            hub_utils.disable_progress_bars()
            restore.append(hub_utils.enable_progress_bars)
    try:
        yield
    finally:
        for undo in restore:
            undo()

"""First-block cache (the "First Block Cache" of ParaAttention, for a UNet): every step runs the first down block;
when its residual (its full-resolution output minus its input) moved less than ``threshold`` (mean absolute change
relative to its mean magnitude) since the last step that ran the whole network, the rest of the network is not
run: its residual from that step (the last up block's output minus the first block's output) is added to this
step's first-block output. Otherwise the whole network runs and both residuals are kept.

One decision per denoiser call, for the whole batch (every guidance branch). Works on UNets laid out as
difframe's sd-unet (``down_blocks``, ``mid_block``, ``up_blocks``).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from difframe.inference_hooks import InferenceHook, Skip, current_step
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .common import BranchCache, checked


class FirstBlockCacheSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(
        0.2, gt=0.0, le=1.0, description="largest relative change of the first block's residual that reuses the rest"
    )


class FirstBlockCache(InferenceHook):
    """See the module docstring. ``steps_run`` after a call: one entry per denoiser call, True where the whole
    network ran; ``changes``: the relative change measured at each call (None where nothing was cached yet)."""

    targets = ("down_blocks.N", "mid_block", "up_blocks.N")
    stateful = True

    def __init__(self, threshold: float = 0.2) -> None:
        self.settings = checked(FirstBlockCacheSettings, "first-block-cache", threshold=threshold)
        self._last_up = ""
        self.reset()

    def matches(self, module_name: str, module: nn.Module) -> bool:
        if module_name == "up_blocks":
            self._last_up = f"up_blocks.{len(module) - 1}"
        return module_name == "mid_block" or re.fullmatch(r"(down|up)_blocks\.\d+", module_name) is not None

    def reset(self) -> None:
        self._reference = BranchCache()  # the first block's residual and the rest's, from the last full run
        self._full = True
        self._first_output: torch.Tensor | None = None
        self.steps_run: list[bool] = []
        self.changes: list[float | None] = []

    def pre_forward(self, module_name: str, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        step = current_step()
        if step is None or self._full or module_name == "down_blocks.0":
            return None
        if module_name == self._last_up:  # the rest of the network, from its kept residual
            return Skip(self._first_output + self._reference.get("rest", step))
        if module_name.startswith("down_blocks."):
            return Skip((args[0], []))  # placeholders: every consumer of these outputs is skipped too
        return Skip(args[0])

    def post_forward(self, module_name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        step = current_step()
        if step is None:
            return None
        if module_name == "down_blocks.0":
            self._first_output = output[1][len(module.resnets) - 1]  # before the downsampler: the input's size
            residual = self._first_output - args[0]
            change = None
            if self._reference.covers(step) and "first" in self._reference:
                kept = self._reference.get("first", step)
                change = float((residual - kept).abs().mean() / kept.abs().mean())
            self._full = change is None or change > self.settings.threshold
            if self._full:
                self._reference.clear(step)
                self._reference.put("first", residual)
            self.steps_run.append(self._full)
            self.changes.append(change)
        elif module_name == self._last_up and self._full:
            self._reference.put("rest", output - self._first_output)
        return None

    def description(self) -> dict[str, Any]:
        return self.settings.model_dump()

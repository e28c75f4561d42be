"""DeepCache (Ma, Fang and Wang, CVPR 2024): a UNet's deep features change slowly from one step to the next, so
run the whole network every ``interval`` steps, keep what the deep part hands to the skip branch chosen by
``branch``, and in the steps between run only the shallow path above that branch on the kept features.

Branches count from the shallowest: ``branch = 3 * block + layer`` picks layer ``layer`` of down block ``block``
(the numbering of the ``deepcache`` package's Stable Diffusion helper, so the same setting means the same thing).
On a cached step the down block's layers from ``layer`` on, the deeper blocks, the mid block, and the matching up
layers are not run; their last outputs are reused. Works on UNets laid out as difframe's sd-unet
(``down_blocks.N.{resnets,attentions,downsamplers}``, ``mid_block``, ``up_blocks.N...``).
"""

from __future__ import annotations

import re
from typing import Any

from difframe.guidance import StepContext
from difframe.inference_hooks import InferenceHook, Skip, current_step
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .common import BranchCache, checked

LAYERS_PER_BRANCH_BLOCK = 3  # the package's numbering: three branches per down block


class DeepCacheSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interval: int = Field(3, ge=1, description="run the full UNet every this many steps; 1 caches nothing")
    branch: int = Field(0, ge=0, description="skip branch the shallow path starts from: 3 * down block + layer")


class DeepCache(InferenceHook):
    """Step caching of the UNet's deep features (see the module docstring). ``steps_run`` after a call: one
    entry per step, True where the full UNet ran."""

    targets = ("down_blocks.N...", "mid_block", "up_blocks.N...")  # narrowed by matches(), from the layout
    stateful = True

    def __init__(self, interval: int = 3, branch: int = 0) -> None:
        self.settings = checked(DeepCacheSettings, "deepcache", interval=interval, branch=branch)
        self.block, self.layer = divmod(self.settings.branch, LAYERS_PER_BRANCH_BLOCK)
        self._inner: set[str] = set()  # layers inside the branch's own blocks that a cached step skips
        self._up_blocks = 0
        self.reset()

    # --- which modules a cached step skips ------------------------------------------------------------------------
    def matches(self, module_name: str, module: nn.Module) -> bool:
        # named_modules() yields a parent before its children, so the counts below are known when they are needed
        if module_name == "down_blocks":
            self._inner = set()
            if self.block >= len(module):
                raise ValueError(
                    f"inference hook 'deepcache': branch {self.settings.branch} is in down block {self.block}, but "
                    f"this UNet has {len(module)} down blocks: branches 0 to {3 * len(module) - 1}"
                )
            return False
        if module_name == "up_blocks":
            self._up_blocks = len(module)
            return False
        if module_name == "mid_block":
            return True
        if found := re.fullmatch(r"down_blocks\.(\d+)", module_name):
            index = int(found[1])
            if index == self.block and self.layer > 0:
                layers = len(module.resnets)
                self._inner |= {
                    f"{module_name}.{kind}.{i}"
                    for kind in ("resnets", "attentions")
                    for i in range(layers)
                    if i >= self.layer
                }
                if layers >= self.layer:  # the downsampler counts as the layer after the last resnet
                    self._inner.add(f"{module_name}.downsamplers.0")
            return index > self.block or (index == self.block and self.layer == 0)
        if found := re.fullmatch(r"up_blocks\.(\d+)", module_name):
            depth = self._up_blocks - 1 - int(found[1])  # up blocks mirror the down blocks
            if depth == self.block:
                layers = len(module.resnets)  # numbered from the block's output end, as the skips are consumed
                self._inner |= {
                    f"{module_name}.{kind}.{i}"
                    for kind in ("resnets", "attentions")
                    for i in range(layers)
                    if layers - 1 - i > self.layer
                }
            return depth > self.block
        return module_name in self._inner

    # --- state ----------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._cache = BranchCache()
        self._step: tuple[int, tuple[str, ...]] | None = None
        self._full = True
        self._first: int | None = None
        self.steps_run: list[bool] = []

    def _full_step(self, step: StepContext) -> bool:
        """Whether this step runs the full UNet (decided once per step, at its first hooked module)."""
        key = (step.index, step.branches)
        if key != self._step:
            self._step = key
            self._first = step.index if self._first is None else self._first
            due = (step.index - self._first) % self.settings.interval == 0
            self._full = due or not self._cache.covers(step)  # a branch never cached (guidance starts late)
            if self._full:
                self._cache.clear(step)
            self.steps_run.append(self._full)
        return self._full

    # --- around the modules ---------------------------------------------------------------------------------------
    def pre_forward(self, module_name: str, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        step = current_step()
        if step is None or self._full_step(step):
            return None  # outside a denoising loop the UNet runs as it is
        if re.fullmatch(r"up_blocks\.\d+", module_name):  # an up block takes its skips off the shared list
            skips = args[1] if len(args) > 1 else kwargs["skips"]
            del skips[len(skips) - len(module.resnets) :]
        return Skip(self._cache.get(module_name, step))

    def post_forward(self, module_name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        step = current_step()
        if step is not None and self._full:
            self._cache.put(module_name, output)
        return None

    def description(self) -> dict[str, Any]:
        return self.settings.model_dump()

"""Convolutions with their weights reordered once for oneDNN, for inference on the CPU.

A plain ``nn.Conv2d`` on the CPU hands oneDNN a weight in PyTorch's layout, and oneDNN reorders it into its
blocked layout on every call. For small feature maps (a 64x64 image's 8x8 latents) that reorder costs as much as
the convolution itself. ``PrepackedConv2d`` keeps the reordered weight for the input shape it last saw and reuses
it while the weight is unchanged. Parameters, ``state_dict`` and training are those of ``nn.Conv2d``: the packed
copy is used only without autograd, in float32 on the CPU, and is rebuilt when the weight changes (in-place
updates, ``load_state_dict``, ``.to()``).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def prepacking_available() -> bool:
    """Whether this torch build's oneDNN operators that prepacking uses exist and agree with ``F.conv2d``."""
    if not torch.backends.mkldnn.is_available():
        return False
    with torch.random.fork_rng(devices=[]):  # a module's init draws from the global RNG: leave the caller's alone
        torch.manual_seed(0)
        probe = PrepackedConv2d(3, 4, 3, padding=1)
        x = torch.randn(1, 3, 5, 5)
    try:  # the operators are internal to torch: check that this build's versions still behave as expected
        with torch.no_grad():
            return torch.allclose(probe(x), F.conv2d(x, probe.weight, probe.bias, padding=1), atol=1e-5)
    except (RuntimeError, AttributeError, TypeError):
        return False


class PrepackedConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose inference on the CPU reuses a weight reordered once for oneDNN."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._can_use_packed(input):
            return super().forward(input)
        packed = self._packed_weight(input.shape)
        return torch.ops.mkldnn._convolution_pointwise(
            input, packed, self.bias, self._padding, list(self.stride), list(self.dilation), self.groups, "none", [], ""
        )

    def __getstate__(self) -> dict:
        # the packed copy is an opaque oneDNN tensor: not copyable or picklable, and cheap to rebuild
        state = super().__getstate__()
        state.pop("_packed", None)
        return state

    @property
    def _padding(self) -> list[int]:
        return list(self.padding)  # type: ignore[arg-type]  # never a string here: see _can_use_packed

    def _can_use_packed(self, input: torch.Tensor) -> bool:
        weight = self.weight
        return (
            input.device.type == "cpu"
            and input.dtype == torch.float32
            and weight.dtype == torch.float32
            and input.ndim == 4
            and not (torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad))
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
        )

    def _packed_weight(self, shape: torch.Size) -> torch.Tensor:
        weight = self.weight
        # one packed copy per module: a new input shape or a changed weight replaces it
        key = (tuple(shape), weight.data_ptr(), weight._version)
        cached = self.__dict__.get("_packed")
        if cached is None or cached[0] != key:
            packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                weight.detach().to_mkldnn(),
                self._padding,
                list(self.stride),
                list(self.dilation),
                self.groups,
                list(shape),
            )
            cached = self.__dict__["_packed"] = (key, packed)
        return cached[1]


def prepack_convolutions(model: nn.Module, enabled: bool = True) -> int:
    """Turn every plain ``nn.Conv2d`` of ``model`` into a ``PrepackedConv2d`` (or back); returns how many.

    The modules keep their identity, parameters and hooks: only their class changes.
    """
    if enabled and not prepacking_available():
        raise RuntimeError(
            "prepacked convolutions need PyTorch's oneDNN (mkldnn) CPU operators, which this torch build lacks; "
            "leave prepacked_convolutions off"
        )
    source, target = (nn.Conv2d, PrepackedConv2d) if enabled else (PrepackedConv2d, nn.Conv2d)
    changed = 0
    for module in model.modules():
        if type(module) is source:
            module.__class__ = target
            module.__dict__.pop("_packed", None)
            changed += 1
    return changed


def uses_prepacked_convolutions(model: nn.Module) -> bool:
    return any(type(module) is PrepackedConv2d for module in model.modules())


__all__ = ["PrepackedConv2d", "prepack_convolutions", "prepacking_available", "uses_prepacked_convolutions"]

"""Token merging as an inference hook: every transformer block at a resolution the settings allow runs its
self-attention (and optionally its cross-attention and feed-forward) on merged tokens, unmerged right after.

Built only on difframe's public hook API. The hook wraps two kinds of module of the UNet: ``conv_in`` (it reads the
latent size there) and ``BasicTransformerBlock``, whose forward it replaces (``Skip``) with the same sequence of
its sub-modules (norm1, attn1, norm2, attn2, norm3, ff) around the merges. The sub-modules are called as modules,
so other hooks on them (perturbed-attention guidance's, for example) and attention add-ons still run, on the
merged tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from difframe.inference_hooks import InferenceHook, Skip
from torch import nn

from .matching import Matching, destinations

MAX_DOWNSAMPLE = (1, 2, 4, 8)
BLOCK_INPUTS = ("x", "context", "context_mask", "attention_kwargs")


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


class TokenMerging(InferenceHook):
    """Token merging for Stable Diffusion.

    ratio: the fraction of a block's tokens merged away, in [0, 1 - 1/(sx*sy)] (0.75 with the default strides).
    max_downsample: merge only where the latent is downsampled at most this much (1, 2, 4 or 8).
    sx, sy: cell size; one destination token per cell.
    use_rand: draw the destination of each cell at random instead of taking its top-left token. The draws come
        from a CPU generator seeded with ``seed`` at the start of every call, so a seed gives the same image.
        As in tomesd, an odd batch (guidance off, or three branches) always takes the top-left token.
    merge_attn, merge_crossattn, merge_mlp: which of the block's three parts run on merged tokens.
    """

    targets = ("conv_in", "BasicTransformerBlock")
    stateful = True  # the latent size and the generator belong to the running call

    def __init__(
        self,
        ratio: float = 0.5,
        max_downsample: int = 1,
        sx: int = 2,
        sy: int = 2,
        use_rand: bool = True,
        seed: int = 0,
        merge_attn: bool = True,
        merge_crossattn: bool = False,
        merge_mlp: bool = False,
    ) -> None:
        for label, value in (("sx", sx), ("sy", sy), ("seed", seed)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if label == "seed" else 1):
                minimum = "non-negative" if label == "seed" else "positive"
                raise ValueError(f"token merging: {label} must be a {minimum} integer, got {value!r}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
            raise ValueError(f"token merging: ratio must be a number in [0, 1) (0.5 is the default), got {ratio!r}")
        most = 1 - 1 / (sx * sy)
        if ratio > most:
            raise ValueError(
                f"token merging: ratio {ratio} is more than can be merged with sx={sx}, sy={sy}: one token in "
                f"{sx * sy} is a destination, so at most {most:g}; lower the ratio or raise sx/sy"
            )
        if max_downsample not in MAX_DOWNSAMPLE:
            raise ValueError(f"token merging: max_downsample must be one of {MAX_DOWNSAMPLE}, got {max_downsample!r}")
        for label, flag in (
            ("use_rand", use_rand),
            ("merge_attn", merge_attn),
            ("merge_crossattn", merge_crossattn),
            ("merge_mlp", merge_mlp),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"token merging: {label} must be true or false, got {flag!r}")
        self.ratio, self.max_downsample, self.sx, self.sy = float(ratio), max_downsample, sx, sy
        self.use_rand, self.seed = use_rand, seed
        self.merge_attn, self.merge_crossattn, self.merge_mlp = merge_attn, merge_crossattn, merge_mlp
        self.reset()

    def reset(self) -> None:
        self._latent_size: tuple[int, int] | None = None
        self._generator = torch.Generator().manual_seed(self.seed) if self.use_rand else None

    def description(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "max_downsample": self.max_downsample,
            "sx": self.sx,
            "sy": self.sy,
            "use_rand": self.use_rand,
            "seed": self.seed,
            "merge_attn": self.merge_attn,
            "merge_crossattn": self.merge_crossattn,
            "merge_mlp": self.merge_mlp,
        }

    def matches(self, module_name: str, module: nn.Module) -> bool:
        return module_name == "conv_in" or type(module).__name__ == "BasicTransformerBlock"

    def pre_forward(self, module_name: str, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if module_name == "conv_in":
            sample = args[0] if args else kwargs["input"]
            self._latent_size = (sample.shape[-2], sample.shape[-1])
            return None
        inputs = _block_inputs(args, kwargs)
        matching = self._matching(inputs["x"])
        if matching is None:
            return None  # this resolution is not merged: the block runs as it is
        return Skip(self._run_block(module, matching, **inputs))

    def _matching(self, x: torch.Tensor) -> Matching | None:
        if self._latent_size is None:
            raise RuntimeError("token merging needs the UNet's conv_in to run before its transformer blocks")
        height, width = self._latent_size
        tokens = x.shape[1]
        downsample = math.ceil(math.sqrt(height * width // tokens))
        r = int(tokens * self.ratio)
        if downsample > self.max_downsample or r <= 0:
            return None
        height, width = math.ceil(height / downsample), math.ceil(width / downsample)
        if height * width != tokens:
            raise RuntimeError(
                f"token merging: a block of {tokens} tokens does not fit the {height}x{width} grid expected from the "
                f"{self._latent_size[0]}x{self._latent_size[1]} latent"
            )
        generator = self._generator if x.shape[0] % 2 == 0 else None
        dst = destinations(height, width, self.sx, self.sy, generator, x.device)
        return Matching(x, dst, r)

    def _run_block(
        self,
        block: nn.Module,
        matching: Matching,
        x: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        attention_kwargs: Any,
    ) -> torch.Tensor:
        def pair(on: bool) -> tuple[Callable, Callable]:
            return (matching.merge, matching.unmerge) if on else (_same, _same)

        kwargs = dict(attention_kwargs or {})
        merge, unmerge = pair(self.merge_attn)
        x = unmerge(block.attn1(merge(block.norm1(x)), **kwargs)) + x
        merge, unmerge = pair(self.merge_crossattn)
        x = unmerge(block.attn2(merge(block.norm2(x)), context, context_mask, **kwargs)) + x
        merge, unmerge = pair(self.merge_mlp)
        return unmerge(block.ff(merge(block.norm3(x)))) + x


def _block_inputs(args: tuple, kwargs: dict) -> dict[str, Any]:
    """The block's inputs by name (its forward takes x, context, context_mask, attention_kwargs)."""
    if len(args) > len(BLOCK_INPUTS) or set(kwargs) - set(BLOCK_INPUTS):
        raise TypeError(
            f"token merging expects transformer blocks called as block{BLOCK_INPUTS}, got {len(args)} positional "
            f"arguments and keywords {sorted(kwargs)}"
        )
    inputs = dict(zip(BLOCK_INPUTS, args), **kwargs)
    inputs.setdefault("context_mask", None)
    inputs.setdefault("attention_kwargs", {})
    return inputs

"""The xformers backend: ``attend`` in difframe's (batch, heads, tokens, dim) layout over xformers'
``memory_efficient_attention``, which takes (batch, tokens, heads, dim) and an additive bias."""

from __future__ import annotations

import torch


class XFormersBackend:
    def __init__(self) -> None:
        import xformers.ops

        self._attention = xformers.ops.memory_efficient_attention

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        q, k, v = (t.transpose(1, 2).contiguous() for t in (query, key, value))
        bias = None if mask is None else additive_bias(mask, query, key)
        out = self._attention(q, k, v, attn_bias=bias, scale=scale)
        return out.transpose(1, 2)


def additive_bias(mask: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """A boolean (True = attend) or additive mask as a full (batch, heads, q, k) bias in the query's dtype.

    xformers wants the bias's rows aligned to 8 elements: it is cut from a tensor padded to that width.
    """
    batch, heads, q_len = query.shape[:3]
    k_len = key.shape[2]
    padded = torch.zeros(batch, heads, q_len, k_len + (-k_len) % 8, dtype=query.dtype, device=query.device)
    bias = padded[..., :k_len]
    if mask.dtype == torch.bool:
        bias.masked_fill_(~mask.expand(batch, heads, q_len, k_len), float("-inf"))
    else:
        bias.copy_(mask.expand(batch, heads, q_len, k_len))
    return bias

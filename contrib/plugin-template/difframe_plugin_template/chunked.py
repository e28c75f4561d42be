"""An attention backend that walks the query tokens in chunks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class QueryChunkedBackend:
    """Scores for ``chunk_size`` queries at a time: memory O(chunk_size x keys) instead of O(queries x keys)."""

    def __init__(self, chunk_size: int = 1024) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.chunk_size = chunk_size

    def attend(self, query, key, value, *, mask, scale):
        parts = []
        for start in range(0, query.shape[-2], self.chunk_size):
            rows = slice(start, start + self.chunk_size)
            part_mask = None if mask is None else mask[..., rows, :] if mask.shape[-2] > 1 else mask
            parts.append(
                F.scaled_dot_product_attention(query[..., rows, :], key, value, attn_mask=part_mask, scale=scale)
            )
        return torch.cat(parts, dim=-2)

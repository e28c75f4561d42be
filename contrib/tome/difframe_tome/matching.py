"""Bipartite soft matching over a grid of tokens, as in "Token Merging for Fast Stable Diffusion" (Bolya and
Hoffman, 2023).

The grid is cut into cells of ``sx`` by ``sy`` tokens; one token per cell is a destination, every other token is a
source. Each source finds its most similar destination (cosine similarity); the ``r`` sources with the highest
similarity are averaged into their destinations. Tokens outside the cells (a grid that the strides do not divide)
are sources. Unmerging copies each destination's value back to the sources merged into it.
"""

from __future__ import annotations

import torch


def destinations(
    height: int, width: int, sx: int, sy: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Positions (row-major over the grid) of the destination tokens: the top-left token of every cell, or one
    drawn from ``generator`` per cell (one ``randint`` call of shape (cells down, cells across, 1))."""
    down, across = height // sy, width // sx
    if generator is None:
        offset = torch.zeros(down, across, dtype=torch.long, device=device)
    else:
        drawn = torch.randint(sx * sy, (down, across, 1), generator=generator, device=generator.device)
        offset = drawn[..., 0].to(device)
    rows = torch.arange(down, device=device)[:, None] * sy + offset // sx
    cols = torch.arange(across, device=device)[None, :] * sx + offset % sx
    return (rows * width + cols).flatten()


class Matching:
    """The merge of one block call, found from its input tokens ``metric`` (batch, tokens, channels); every row
    of the batch gets its own matching. ``merge`` maps (batch, tokens, c) to (batch, tokens - r, c): the unmerged
    sources, then the destinations (each the mean of itself and the sources merged into it); ``unmerge`` maps back.
    """

    def __init__(self, metric: torch.Tensor, dst: torch.Tensor, r: int) -> None:
        batch, tokens, _ = metric.shape
        device = metric.device
        is_src = torch.ones(tokens, dtype=torch.bool, device=device)
        is_src[dst] = False
        src = is_src.nonzero().squeeze(1)
        r = min(r, src.numel())
        with torch.no_grad():
            unit = metric / metric.norm(dim=-1, keepdim=True)
            similarity = unit.index_select(1, src) @ unit.index_select(1, dst).transpose(1, 2)
            best, nearest = similarity.max(dim=-1)  # (batch, sources)
            order = best.argsort(dim=-1, descending=True)
        merged, kept = order[:, :r], order[:, r:]
        self.r = r
        self.dst = dst
        self.kept_at = src[kept]  # (batch, sources - r): positions of the unmerged sources
        self.merged_at = src[merged]  # (batch, r): positions of the merged sources, most similar first
        self.into = nearest.gather(1, merged)  # (batch, r): the destination slot each one joins
        # Where each output position of unmerge reads from in the merged sequence: one gather undoes the merge.
        kept_count = self.kept_at.shape[1]
        source = torch.empty(batch, tokens, dtype=torch.long, device=device)
        source[:, dst] = kept_count + torch.arange(dst.numel(), device=device)
        source.scatter_(1, self.kept_at, torch.arange(kept_count, device=device).expand(batch, -1))
        source.scatter_(1, self.merged_at, kept_count + self.into)
        self.source = source

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, channels = x.shape
        kept = x.gather(1, self.kept_at[..., None].expand(batch, -1, channels))
        merged = x.gather(1, self.merged_at[..., None].expand(batch, -1, channels))
        dst = x.index_select(1, self.dst)
        dst = dst.scatter_reduce(1, self.into[..., None].expand(batch, -1, channels), merged, reduce="mean")
        return torch.cat([kept, dst], dim=1)

    def unmerge(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, channels = x.shape
        return x.gather(1, self.source[..., None].expand(batch, -1, channels))

"""Decoupled cross-attention: an attention add-on that adds image-token attention to a cross-attention layer.

out = attention(q, text) + sum over adapters of scale * attention(q, image tokens), every attention computed by the
module's own backend (sdpa, sliced, a kernel plugin), so the add-on composes with any of them.

The UNet's ``cross_attention_kwargs`` carry, per call:
- ``ip_hidden_states``: one tensor per loaded adapter, (batch or 1, images, tokens, dim): projected image tokens;
  row i belongs to sample i of the UNet's batch (never spread over other rows).
- ``ip_adapter_masks`` (optional): one entry per adapter, None or (1 or batch, images, height, width) in [0, 1]:
  where on the image each of that adapter's images acts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def mask_grid(mask_height: int, mask_width: int, queries: int) -> tuple[int, int]:
    """The (rows, columns) of a layer's token grid for a mask of this aspect ratio, as the reference computes it."""
    rows = int(math.sqrt(queries / (mask_width / mask_height)))
    rows = rows + int(queries % rows != 0)
    return rows, queries // rows


def downsample_mask(mask: torch.Tensor, queries: int) -> torch.Tensor:
    """(rows, H, W) mask -> (rows, queries, 1): bicubic to the layer's token grid."""
    rows, columns = mask_grid(mask.shape[-2], mask.shape[-1], queries)
    if rows * columns != queries:
        raise ValueError(
            f"an IP-Adapter mask of {mask.shape[-2]}x{mask.shape[-1]} does not fit a layer of {queries} tokens: its "
            "aspect ratio differs from the image's; give masks the size of the generated image"
        )
    small = F.interpolate(mask[None].float(), size=(rows, columns), mode="bicubic")[0]
    return small.reshape(mask.shape[0], queries, 1)


def _rows_for(tensor: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise ValueError(
        f"{what} has {tensor.shape[0]} rows but the UNet's batch has {batch}: pass one row per sample (or one for all)"
    )


class IPAdapterAttention:
    """The add-on of one cross-attention layer: its to_k_ip / to_v_ip per adapter and their scales."""

    def __init__(self, layer: str, to_k_ip: Sequence[nn.Linear], to_v_ip: Sequence[nn.Linear]) -> None:
        self.layer = layer
        self.to_k_ip = list(to_k_ip)
        self.to_v_ip = list(to_v_ip)
        self.scales = [1.0] * len(self.to_k_ip)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        ip_hidden_states: Sequence[torch.Tensor] | None = None,
        ip_adapter_masks: Sequence[torch.Tensor | None] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if hidden_states.ndim != 3 or attn.group_norm is not None or encoder_hidden_states is None:
            raise ValueError(f"IP-Adapter is set on {self.layer}, which is not a text cross-attention layer")
        adapters = len(self.to_k_ip)
        if ip_hidden_states is None or len(ip_hidden_states) != adapters:
            given = "none" if ip_hidden_states is None else len(ip_hidden_states)
            raise ValueError(
                f"{adapters} IP-Adapter(s) loaded but image tokens for {given} given (cross_attention_kwargs "
                "'ip_hidden_states'); pass an image prompt per adapter, or unload the adapters"
            )
        masks = list(ip_adapter_masks) if ip_adapter_masks is not None else [None] * adapters
        if len(masks) != adapters:
            raise ValueError(f"{len(masks)} IP-Adapter masks for {adapters} adapters: pass one entry (or None) each")
        batch, queries = hidden_states.shape[:2]
        query = attn.to_q(hidden_states)
        out = attn.attend(query, attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states), attention_mask)
        for index, (tokens, to_k, to_v, scale, mask) in enumerate(
            zip(ip_hidden_states, self.to_k_ip, self.to_v_ip, self.scales, masks)
        ):
            if scale == 0:
                continue
            tokens = _rows_for(tokens.to(query.dtype), batch, f"image tokens of IP-Adapter {index}")
            if mask is None:  # all images of this adapter in one attention
                flat = tokens.reshape(batch, -1, tokens.shape[-1])
                out = out + scale * attn.attend(query, to_k(flat), to_v(flat))
                continue
            if mask.ndim != 4 or mask.shape[1] != tokens.shape[1]:
                raise ValueError(
                    f"the mask of IP-Adapter {index} has shape {tuple(mask.shape)}; it must be (1, images="
                    f"{tokens.shape[1]}, height, width): one mask per image of that adapter"
                )
            mask = _rows_for(mask, batch, f"the mask of IP-Adapter {index}")
            for image in range(tokens.shape[1]):  # each masked image attends on its own
                attended = attn.attend(query, to_k(tokens[:, image]), to_v(tokens[:, image]))
                weight = downsample_mask(mask[:, image], queries).to(device=query.device, dtype=query.dtype)
                out = out + scale * (attended * weight)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor if attn.rescale_output_factor != 1.0 else out

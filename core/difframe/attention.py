"""Attention: one module with the shared checkpoint's parameter names, and swappable processors.

A *backend* computes softmax(q k^T * scale) v on (batch, heads, tokens, head_dim) tensors: sdpa, sliced, reference,
or a plugin's kernel (xformers, Triton). An *add-on* (IP-Adapter, token merging) wraps the module's whole forward
and calls the module's backend for the attention itself, so add-ons and backends compose freely.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn


@runtime_checkable
class AttentionBackend(Protocol):
    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor: ...


@runtime_checkable
class AttentionAddon(Protocol):
    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor: ...


class SDPABackend:
    """torch.nn.functional.scaled_dot_product_attention: fused kernels where torch has them."""

    def attend(self, query, key, value, *, mask, scale):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


class ReferenceBackend:
    """The textbook formula in float32: slow and memory-hungry, the yardstick for the others."""

    def attend(self, query, key, value, *, mask, scale):
        scores = query.float() @ key.float().transpose(-1, -2) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        return (scores.softmax(dim=-1) @ value.float()).to(query.dtype)


class SlicedBackend:
    """Attention over a few (batch x head) slices at a time: peak memory of one slice's score matrix.

    slice_size: "auto" (half the heads), "max" (one slice at a time: least memory) or a number of slices' rows.
    """

    def __init__(self, slice_size: int | Literal["auto", "max"] = "auto") -> None:
        if isinstance(slice_size, int) and slice_size < 1:
            raise ValueError(f"slice_size must be at least 1, 'auto' or 'max', got {slice_size}")
        self.slice_size = slice_size

    def _rows(self, heads: int) -> int:
        if self.slice_size == "auto":
            return max(heads // 2, 1)
        return 1 if self.slice_size == "max" else int(self.slice_size)

    def attend(self, query, key, value, *, mask, scale):
        batch, heads = query.shape[:2]
        q, k, v = (t.reshape(batch * heads, *t.shape[2:]) for t in (query, key, value))
        if mask is not None:
            mask = mask.expand(batch, heads, q.shape[1], k.shape[1]).reshape(batch * heads, q.shape[1], k.shape[1])
        out = torch.empty_like(q[..., :1].expand(*q.shape[:-1], v.shape[-1]))
        rows = self._rows(heads)
        for start in range(0, q.shape[0], rows):
            part = slice(start, start + rows)
            out[part] = F.scaled_dot_product_attention(
                q[part], k[part], v[part], attn_mask=None if mask is None else mask[part], scale=scale
            )
        return out.reshape(batch, heads, *out.shape[1:])


class Attention(nn.Module):
    """Multi-head self- or cross-attention, as in Stable Diffusion's UNet and VAE.

    Parameter names (to_q, to_k, to_v, to_out.0, group_norm) are those of the shared checkpoint layout.
    """

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        bias: bool = False,
        out_bias: bool = True,
        upcast_attention: bool = False,
        norm_num_groups: int | None = None,
        eps: float = 1e-5,
        residual_connection: bool = False,
        rescale_output_factor: float = 1.0,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.upcast_attention = upcast_attention
        self.residual_connection = residual_connection
        self.rescale_output_factor = rescale_output_factor
        self.is_cross_attention = cross_attention_dim is not None
        self.group_norm = nn.GroupNorm(norm_num_groups, query_dim, eps=eps) if norm_num_groups else None
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim, bias=out_bias), nn.Dropout(0.0)])
        self.backend: AttentionBackend = SDPABackend()
        self.addon: AttentionAddon | None = None

    def split_heads(self, tensor: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = tensor.shape
        return tensor.view(batch, tokens, self.heads, -1).transpose(1, 2)

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Projected (batch, tokens, heads*dim) inputs -> (batch, tokens, heads*dim), through the backend."""
        q, k, v = self.split_heads(query), self.split_heads(key), self.split_heads(value)
        dtype = q.dtype
        if self.upcast_attention and dtype in (torch.float16, torch.bfloat16):
            q, k = q.float(), k.float()
            v = v.float()
        out = self.backend.attend(q, k, v, mask=mask, scale=self.scale).to(dtype)
        return out.transpose(1, 2).reshape(out.shape[0], -1, self.heads * out.shape[-1])

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if self.addon is not None:
            return self.addon(self, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        return self.default_forward(hidden_states, encoder_hidden_states, attention_mask)

    def default_forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
        if self.group_norm is not None:
            hidden_states = self.group_norm(hidden_states)
        if spatial:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = self.attend(self.to_q(hidden_states), self.to_k(context), self.to_v(context), attention_mask)
        out = self.to_out[1](self.to_out[0](out))
        if spatial:
            out = out.transpose(1, 2).reshape(batch, channels, height, width)
        if self.residual_connection:
            out = out + residual
        return out / self.rescale_output_factor if self.rescale_output_factor != 1.0 else out


def attention_modules(model: nn.Module) -> Iterator[tuple[str, Attention]]:
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            yield name, module


def set_attention(
    model: nn.Module,
    processor: AttentionBackend | AttentionAddon | Mapping[str, AttentionBackend | AttentionAddon],
) -> None:
    """Set a backend or add-on on every attention module, or per module with {module_name: processor}."""
    modules = dict(attention_modules(model))
    if isinstance(processor, Mapping):
        unknown = processor.keys() - modules.keys()
        if unknown:
            raise KeyError(f"no attention module(s) {sorted(unknown)[:3]}; the model has e.g. {list(modules)[:3]}")
        targets = [(modules[name], p) for name, p in processor.items()]
    else:
        targets = [(module, processor) for module in modules.values()]
    for module, chosen in targets:
        if isinstance(chosen, AttentionBackend):
            module.backend = chosen
        elif callable(chosen):
            module.addon = chosen
        else:
            raise TypeError(f"{type(chosen).__name__} is neither an attention backend (attend) nor an add-on")


def resolve_backend_name(framework: Any, name: str) -> str:
    """'auto' -> the available registered backend with the highest priority; other names pass through."""
    if name != "auto":
        return name
    candidates = [
        r
        for r in framework.registry.all("attention_processor")
        if r.spec.role == "backend" and r.unavailable_reason is None
    ]
    if not candidates:
        raise LookupError("no attention backend is available; install difframe (it registers 'sdpa')")
    return max(candidates, key=lambda r: (r.spec.priority, r.name)).name

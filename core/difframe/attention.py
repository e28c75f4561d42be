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

    slice_size: "auto" (half the heads at a time), "max" (one head of one sample at a time: least memory), or a
    number of (sample, head) pairs per slice.
    """

    def __init__(self, slice_size: int | Literal["auto", "max"] = "auto") -> None:
        if not (slice_size in ("auto", "max") or (isinstance(slice_size, int) and slice_size >= 1)):
            raise ValueError(f"slice_size must be 'auto', 'max' or a whole number of at least 1, got {slice_size!r}")
        self.slice_size = slice_size

    def _rows(self, heads: int) -> int:
        if self.slice_size == "auto":
            return max(heads // 2, 1)
        return 1 if self.slice_size == "max" else int(self.slice_size)

    def attend(self, query, key, value, *, mask, scale):
        batch, heads, q_len = query.shape[:3]
        k_len = key.shape[2]
        q, k, v = (t.reshape(batch * heads, *t.shape[2:]) for t in (query, key, value))
        if mask is not None:  # a broadcast view; each slice copies only its own rows
            mask = mask.expand(batch, heads, q_len, k_len)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        rows = self._rows(heads)
        for start in range(0, q.shape[0], rows):
            part = slice(start, start + rows)
            part_mask = None
            if mask is not None:
                index = torch.arange(start, min(start + rows, q.shape[0]), device=mask.device)
                part_mask = mask[index // heads, index % heads]
            out[part] = F.scaled_dot_product_attention(q[part], k[part], v[part], attn_mask=part_mask, scale=scale)
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


Processor = AttentionBackend | AttentionAddon | str | None


def set_attention(
    model: nn.Module,
    processor: Processor | Mapping[str, Processor],
    *,
    framework: Any = None,
    **options: Any,
) -> None:
    """Set the attention of every attention module of ``model``, or per module with ``{name: processor}``.

    A processor is a backend object (has ``attend``), an add-on (callable), ``None`` (remove the add-on), or the
    registered name of either: ``"sdpa"``, ``"sliced"`` (``slice_size=...`` in ``options``), ``"reference"``, a
    plugin's name, or ``"auto"`` for the best available backend. A mapping key names a module
    (``"mid_block.attentions.0.transformer_blocks.0.attn1"``) or a parent module (``"mid_block"``: all inside it).
    """
    modules = dict(attention_modules(model))
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention modules")
    if isinstance(processor, Mapping):
        targets: list[tuple[Attention, Processor]] = []
        for key, chosen in processor.items():
            matched = [m for name, m in modules.items() if name == key or name.startswith(f"{key}.")]
            if not matched:
                raise KeyError(
                    f"no attention module {key!r} or modules under it; the model has e.g. {list(modules)[:3]}"
                )
            targets += [(module, chosen) for module in matched]
    else:
        targets = [(module, processor) for module in modules.values()]
    built: dict[str, Any] = {}  # one object per registered name, shared by the modules that use it
    device = next((p.device.type for p in model.parameters()), None)
    for module, chosen in targets:
        if isinstance(chosen, str):
            if chosen not in built:
                built[chosen] = build_processor(chosen, framework=framework, device=device, **options)
            chosen = built[chosen]
        if chosen is None:
            module.addon = None
        elif isinstance(chosen, AttentionBackend):
            module.backend = chosen
        elif callable(chosen):
            module.addon = chosen
        else:
            raise TypeError(f"{type(chosen).__name__} is neither an attention backend (attend) nor an add-on")


def build_processor(
    name: str, *, framework: Any = None, device: str | None = None, **options: Any
) -> AttentionBackend | AttentionAddon:
    """A registered attention processor by name ("auto": the best available backend for ``device``), built with
    ``options``."""
    if framework is None:
        from .framework import Framework

        framework = Framework()
    return framework.create("attention_processor", resolve_backend_name(framework, name, device=device), **options)


def resolve_backend_name(framework: Any, name: str, *, device: str | None = None) -> str:
    """'auto' -> the available registered backend with the highest priority that runs on ``device`` ("cpu",
    "cuda", ...; None: any); other names pass through."""
    if name != "auto":
        return name
    device = device.split(":")[0] if device else None
    candidates = [
        r
        for r in framework.registry.all("attention_processor")
        if r.spec.role == "backend"
        and r.unavailable_reason is None
        and (device is None or not r.spec.supports.devices or device in r.spec.supports.devices)
    ]
    if not candidates:
        raise LookupError("no attention backend is available; install difframe (it registers 'sdpa')")
    return max(candidates, key=lambda r: (r.spec.priority, r.name)).name

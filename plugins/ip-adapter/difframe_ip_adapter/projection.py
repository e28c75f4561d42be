"""Image projection models: image-encoder features -> extra cross-attention tokens.

Parameter names are those of the published IP-Adapter checkpoints (the ``image_proj.*`` keys), so a checkpoint's
state dict loads into these modules as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Kind = Literal["plain", "plus", "full"]


class ImageProjModel(nn.Module):
    """IP-Adapter (and its light variant): one pooled image embedding -> ``tokens`` tokens."""

    kind: Kind = "plain"

    def __init__(self, image_embed_dim: int, cross_attention_dim: int, tokens: int = 4) -> None:
        super().__init__()
        self.tokens = tokens
        self.proj = nn.Linear(image_embed_dim, tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:  # (N, image_embed_dim) -> (N, tokens, dim)
        return self.norm(self.proj(embeds.to(self.proj.weight.dtype)).reshape(embeds.shape[0], self.tokens, -1))


class MLPProjModel(nn.Module):
    """Full-face IP-Adapter: every token of the encoder's penultimate layer through a two-layer MLP."""

    kind: Kind = "full"

    def __init__(self, image_embed_dim: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(image_embed_dim, image_embed_dim),
            nn.GELU(),
            nn.Linear(image_embed_dim, cross_attention_dim),
            nn.LayerNorm(cross_attention_dim),
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (N, tokens, image_embed_dim) -> (N, tokens, dim)
        return self.proj(hidden.to(self.proj[0].weight.dtype))


class PerceiverAttention(nn.Module):
    """Latent queries attend to the image tokens and themselves (keys/values from both, one projection)."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        key, value = self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(latents)), split(key), split(value))
        return self.to_out(out.transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1))


class Resampler(nn.Module):
    """IP-Adapter Plus (and Plus-face): a perceiver resampler from the encoder's penultimate-layer tokens."""

    kind: Kind = "plus"

    def __init__(
        self,
        image_embed_dim: int,
        cross_attention_dim: int,
        hidden_dim: int,
        queries: int,
        depth: int,
        heads: int,
        dim_head: int = 64,
        ff_mult: int = 4,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, queries, hidden_dim) / hidden_dim**0.5)
        self.proj_in = nn.Linear(image_embed_dim, hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, cross_attention_dim)
        self.norm_out = nn.LayerNorm(cross_attention_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PerceiverAttention(hidden_dim, heads, dim_head),
                    nn.Sequential(
                        nn.LayerNorm(hidden_dim),
                        nn.Linear(hidden_dim, hidden_dim * ff_mult, bias=False),
                        nn.GELU(),
                        nn.Linear(hidden_dim * ff_mult, hidden_dim, bias=False),
                    ),
                ]
            )
            for _ in range(depth)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (N, tokens, image_embed_dim) -> (N, queries, dim)
        features = self.proj_in(hidden.to(self.proj_in.weight.dtype))
        latents = self.latents.expand(hidden.shape[0], -1, -1)
        for attention, feed_forward in self.layers:
            latents = attention(features, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))


def projection_from_state_dict(state: Mapping[str, torch.Tensor], label: str) -> nn.Module:
    """The projection model whose published layout ``state`` (the ``image_proj.*`` keys, prefix removed) has,
    sized from its tensors. Raises ValueError for a layout this plugin does not implement."""
    if "proj.weight" in state:
        tokens_dim, embed_dim = state["proj.weight"].shape
        dim = state["norm.weight"].shape[0] if "norm.weight" in state else 0
        if not dim or tokens_dim % dim:
            raise ValueError(
                f"{label}: image_proj.proj and image_proj.norm do not fit together ({tokens_dim} vs {dim})"
            )
        model: nn.Module = ImageProjModel(embed_dim, dim, tokens_dim // dim)
    elif "proj.3.weight" in state:
        model = MLPProjModel(state["proj.0.weight"].shape[1], state["proj.3.weight"].shape[0])
    elif "latents" in state and "proj_in.weight" in state:
        depth = len({key.split(".")[1] for key in state if key.startswith("layers.")})
        hidden_dim = state["latents"].shape[2]
        inner = state["layers.0.0.to_q.weight"].shape[0]
        ff = state["layers.0.1.1.weight"].shape[0] // hidden_dim
        # the published resamplers use 64-channel heads; the head count follows from the query width
        model = Resampler(
            state["proj_in.weight"].shape[1],
            state["proj_out.weight"].shape[0],
            hidden_dim,
            state["latents"].shape[1],
            depth,
            heads=inner // 64,
            dim_head=64,
            ff_mult=ff,
        )
    else:
        known = ", ".join(sorted(state)[:4])
        raise ValueError(
            f"{label}: unknown image projection layout (keys {known}, ...); this plugin loads IP-Adapter, light, "
            "Plus, Plus-face and full-face checkpoints (Face ID variants are not implemented)"
        )
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{label}: image_proj weights do not fit a {type(model).__name__}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return model.eval()

"""The Stable Diffusion UNet: a conditional 2D UNet with cross-attention, for SD 1.x and 2.x checkpoints.

Reads top to bottom: timestep embedding, resnet, transformer (self-attention, cross-attention, GEGLU feed-forward),
the down / mid / up blocks, and the UNet that ties them together. Module and parameter names are those of the
shared checkpoint layout (a unet/ folder with config.json and diffusion_pytorch_model.safetensors), so such a
folder loads unchanged and what we save loads in the reference library.

Config note kept from the shared layout: ``attention_head_dim`` is the number of attention *heads* per block
(SD 1.x: 8 heads; SD 2.x: [5, 10, 20, 20] heads of 64 channels). ``num_attention_heads``, when given, wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from difframe.attention import Attention
from difframe.errors import ConfigError
from difframe.modeling import ModelMixin
from torch import nn
from torch.utils.checkpoint import checkpoint

# Keys of the shared config layout that select features this module does not implement, with the one value
# (the reference library's default) we accept. Anything else is refused instead of silently ignored.
UNSUPPORTED_UNLESS: dict[str, Any] = {
    "class_embed_type": None,
    "num_class_embeds": None,
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "mid_block_only_cross_attention": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "cross_attention_norm": None,
    "reverse_transformer_layers_per_block": None,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
}
DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")


def _unsupported(key: str, value: Any) -> bool:
    default = UNSUPPORTED_UNLESS[key]
    if key == "only_cross_attention" and isinstance(value, (list, tuple)):
        return any(value)
    return value != default


# --- timestep embedding ------------------------------------------------------------------------------------------
def timestep_embedding(timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps, (batch,) -> (batch, dim), in float32."""
    half = dim // 2
    # the same operation order as the reference: at t ~ 1000 a one-ulp change in a frequency moves the angle 1e-4
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    angles = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([angles.cos(), angles.sin()] if flip_sin_to_cos else [angles.sin(), angles.cos()], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    def __init__(self, channels: int, dim: int, cond_proj_dim: int | None = None) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(channels, dim)
        self.linear_2 = nn.Linear(dim, dim)
        # LCM-distilled UNets add a projection of the guidance-scale embedding to the timestep features.
        self.cond_proj = nn.Linear(cond_proj_dim, channels, bias=False) if cond_proj_dim else None

    def forward(self, t_emb: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError("timestep_cond was given, but this UNet's config has no time_cond_proj_dim")
            t_emb = t_emb + self.cond_proj(condition)
        return self.linear_2(F.silu(self.linear_1(t_emb)))


# --- resnet -------------------------------------------------------------------------------------------------------
class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, the timestep embedding added in between, plus a (1x1 conv) shortcut."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int,
        eps: float,
        dropout: float = 0.0,
        output_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, act_temb: torch.Tensor) -> torch.Tensor:
        """``act_temb`` is SiLU(timestep embedding), computed once per UNet call for every resnet."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(act_temb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = shortcut + h
        return out if self.output_scale_factor == 1.0 else out / self.output_scale_factor


# --- transformer --------------------------------------------------------------------------------------------------
class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float = 0.0, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the text embeddings, GEGLU feed-forward; each residual."""

    def __init__(
        self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, dropout: float, upcast_attention: bool
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, None, heads, head_dim, upcast_attention=upcast_attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, cross_attention_dim, heads, head_dim, upcast_attention=upcast_attention)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout)
        if dropout:
            self.attn1.to_out[1].p = self.attn2.to_out[1].p = dropout

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        attention_kwargs: Mapping[str, Any],
    ) -> torch.Tensor:
        x = self.attn1(self.norm1(x), **attention_kwargs) + x
        x = self.attn2(self.norm2(x), context, context_mask, **attention_kwargs) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """Image features to tokens (1x1 conv or linear projection), transformer blocks, back, plus the residual."""

    def __init__(
        self,
        heads: int,
        head_dim: int,
        channels: int,
        layers: int,
        cross_attention_dim: int,
        groups: int,
        use_linear_projection: bool,
        dropout: float,
        upcast_attention: bool,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear_projection else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, head_dim, cross_attention_dim, dropout, upcast_attention)
            for _ in range(layers)
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear_projection else nn.Conv2d(inner, channels, 1)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None,
        attention_kwargs: Mapping[str, Any],
    ) -> torch.Tensor:
        batch, _, height, width = x.shape
        h = self.norm(x)
        if not self.use_linear_projection:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(batch, height * width, -1)  # a view under channels_last
        if self.use_linear_projection:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context, context_mask, attention_kwargs)
        if self.use_linear_projection:
            h = self.proj_out(h)
        h = h.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        if not self.use_linear_projection:
            h = self.proj_out(h.contiguous(memory_format=_memory_format(x)))
        return h + x


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


# --- sampling -----------------------------------------------------------------------------------------------------
class Downsample2D(nn.Module):
    def __init__(self, channels: int, padding: int) -> None:
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:  # asymmetric padding of the original LDM code
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# --- blocks -------------------------------------------------------------------------------------------------------
class _Block(nn.Module):
    """Shared by the down, mid and up blocks: run a submodule, recomputing it in backward when checkpointing."""

    gradient_checkpointing: bool

    def _run(self, module: nn.Module, *args: Any) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)


class DownBlock(_Block):
    """CrossAttnDownBlock2D (resnets with transformers) or DownBlock2D (resnets only), then a strided conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layers: int,
        attention: bool,
        downsample: bool,
        downsample_padding: int,
        heads: int,
        transformer_layers: int,
        cross_attention_dim: int,
        temb_channels: int,
        groups: int,
        eps: float,
        dropout: float,
        use_linear_projection: bool,
        upcast_attention: bool,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, temb_channels, groups, eps, dropout)
            for i in range(layers)
        )
        self.attentions = nn.ModuleList(
            Transformer2DModel(
                heads,
                out_channels // heads,
                out_channels,
                transformer_layers,
                cross_attention_dim,
                groups,
                use_linear_projection,
                dropout,
                upcast_attention,
            )
            for _ in range(layers if attention else 0)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, downsample_padding)] if downsample else [])

    def forward(self, x, act_temb, context, context_mask, attention_kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = self._run(resnet, x, act_temb)
            if self.attentions:
                x = self._run(self.attentions[i], x, context, context_mask, attention_kwargs)
            skips.append(x)
        for downsampler in self.downsamplers:
            x = downsampler(x)
            skips.append(x)
        return x, skips


class UNetMidBlock2DCrossAttn(_Block):
    def __init__(
        self,
        channels: int,
        output_scale_factor: float,
        heads: int,
        transformer_layers: int,
        cross_attention_dim: int,
        temb_channels: int,
        groups: int,
        eps: float,
        dropout: float,
        use_linear_projection: bool,
        upcast_attention: bool,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        self.resnets = nn.ModuleList(
            ResnetBlock2D(channels, channels, temb_channels, groups, eps, dropout, output_scale_factor)
            for _ in range(2)
        )
        self.attentions = nn.ModuleList(
            [
                Transformer2DModel(
                    heads,
                    channels // heads,
                    channels,
                    transformer_layers,
                    cross_attention_dim,
                    groups,
                    use_linear_projection,
                    dropout,
                    upcast_attention,
                )
            ]
        )

    def forward(self, x, act_temb, context, context_mask, attention_kwargs) -> torch.Tensor:
        x = self._run(self.resnets[0], x, act_temb)
        x = self._run(self.attentions[0], x, context, context_mask, attention_kwargs)
        return self._run(self.resnets[1], x, act_temb)


class UpBlock(_Block):
    """CrossAttnUpBlock2D or UpBlock2D: resnets over [features, skip] concatenations, then a 2x upsampling."""

    def __init__(
        self,
        in_channels: int,
        prev_channels: int,
        out_channels: int,
        layers: int,
        attention: bool,
        upsample: bool,
        heads: int,
        transformer_layers: int,
        cross_attention_dim: int,
        temb_channels: int,
        groups: int,
        eps: float,
        dropout: float,
        use_linear_projection: bool,
        upcast_attention: bool,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        self.resnets = nn.ModuleList()
        for i in range(layers):
            skip = in_channels if i == layers - 1 else out_channels
            incoming = prev_channels if i == 0 else out_channels
            self.resnets.append(ResnetBlock2D(incoming + skip, out_channels, temb_channels, groups, eps, dropout))
        self.attentions = nn.ModuleList(
            Transformer2DModel(
                heads,
                out_channels // heads,
                out_channels,
                transformer_layers,
                cross_attention_dim,
                groups,
                use_linear_projection,
                dropout,
                upcast_attention,
            )
            for _ in range(layers if attention else 0)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)] if upsample else [])

    def forward(self, x, skips: list[torch.Tensor], act_temb, context, context_mask, attention_kwargs) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            x = self._run(resnet, torch.cat([x, skips.pop()], dim=1), act_temb)
            if self.attentions:
                x = self._run(self.attentions[i], x, context, context_mask, attention_kwargs)
        for upsampler in self.upsamplers:
            x = upsampler(x)
        return x


# --- the UNet -----------------------------------------------------------------------------------------------------
def _per_block(name: str, value: int | tuple[int, ...], blocks: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * blocks
    if len(value) != blocks:
        raise ConfigError(f"sd-unet config: {name} has {len(value)} entries, but there are {blocks} down blocks")
    return tuple(value)


class UNet2DConditionModel(ModelMixin):
    """The Stable Diffusion 1.x / 2.x denoiser: predicts noise (or v) from noisy latents, a timestep and text.

    ``forward`` returns the prediction tensor itself (the reference library wraps it in an output object).
    """

    layout_name = ("diffusers", "UNet2DConditionModel")
    supports_gradient_checkpointing: ClassVar[bool] = True

    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: float = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        upcast_attention: bool = False,
        time_embedding_dim: int | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
    ) -> None:
        super().__init__()
        blocks = len(block_out_channels)
        if len(down_block_types) != blocks or len(up_block_types) != blocks:
            raise ConfigError(
                f"sd-unet config: down_block_types ({len(down_block_types)}), up_block_types ({len(up_block_types)}) "
                f"and block_out_channels ({blocks}) must have the same length"
            )
        for kind, allowed in ((down_block_types, DOWN_BLOCKS), (up_block_types, UP_BLOCKS)):
            wrong = [b for b in kind if b not in allowed]
            if wrong:
                raise ConfigError(f"sd-unet config: block type {wrong[0]!r} is not implemented; use one of {allowed}")
        if act_fn != "silu":
            raise ConfigError(f"sd-unet config: act_fn {act_fn!r} is not implemented (Stable Diffusion uses 'silu')")
        if downsample_padding not in (0, 1):
            raise ConfigError(f"sd-unet config: downsample_padding must be 0 or 1, got {downsample_padding}")
        if conv_in_kernel % 2 == 0 or conv_out_kernel % 2 == 0:
            raise ConfigError("sd-unet config: conv_in_kernel and conv_out_kernel must be odd")
        sizes = {"in_channels": in_channels, "out_channels": out_channels, "layers_per_block": layers_per_block}
        sizes |= {"norm_num_groups": norm_num_groups, "conv_in_kernel": conv_in_kernel}
        sizes |= {"conv_out_kernel": conv_out_kernel}
        sizes |= {f"block_out_channels[{i}]": c for i, c in enumerate(block_out_channels)}
        sizes |= {"time_embedding_dim": time_embedding_dim or 1, "time_cond_proj_dim": time_cond_proj_dim or 1}
        not_positive = [f"{name}={value}" for name, value in sizes.items() if value < 1]
        if not blocks or not_positive:
            raise ConfigError(
                "sd-unet config: channel counts, sizes and layer counts must be positive; got "
                + (", ".join(not_positive) or "an empty block_out_channels")
            )
        heads = _per_block("attention_head_dim", num_attention_heads or attention_head_dim, blocks)
        context_dims = _per_block("cross_attention_dim", cross_attention_dim, blocks)
        transformer_layers = _per_block("transformer_layers_per_block", transformer_layers_per_block, blocks)
        for channels, n_heads in zip(block_out_channels, heads):
            if n_heads < 1 or channels % n_heads:
                raise ConfigError(
                    f"sd-unet config: {n_heads} attention heads (attention_head_dim) do not divide the {channels} "
                    f"channels of a block; use a head count that divides block_out_channels"
                )
            if channels % norm_num_groups:
                raise ConfigError(
                    f"sd-unet config: norm_num_groups {norm_num_groups} does not divide the {channels} channels "
                    "of a block"
                )

        self.num_upsamplers = blocks - 1
        time_dim = time_embedding_dim or block_out_channels[0] * 4
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], conv_in_kernel, padding=conv_in_kernel // 2)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_dim, time_cond_proj_dim)

        common = dict(
            temb_channels=time_dim, groups=norm_num_groups, eps=norm_eps, dropout=dropout,
            use_linear_projection=use_linear_projection, upcast_attention=upcast_attention,
        )  # fmt: skip

        def attention(i: int) -> dict[str, int]:  # per-block attention settings
            return dict(heads=heads[i], transformer_layers=transformer_layers[i], cross_attention_dim=context_dims[i])

        self.down_blocks = nn.ModuleList()
        out = block_out_channels[0]
        for i, kind in enumerate(down_block_types):
            inp, out = out, block_out_channels[i]
            self.down_blocks.append(
                DownBlock(inp, out, layers_per_block, kind == "CrossAttnDownBlock2D", downsample=i < blocks - 1,
                          downsample_padding=downsample_padding, **attention(i), **common)
            )  # fmt: skip
        self.mid_block = UNetMidBlock2DCrossAttn(
            block_out_channels[-1], output_scale_factor=mid_block_scale_factor, **attention(blocks - 1), **common
        )

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        out = reversed_channels[0]
        for i, kind in enumerate(up_block_types):
            prev, out = out, reversed_channels[i]
            inp = reversed_channels[min(i + 1, blocks - 1)]
            self.up_blocks.append(  # settings of the matching down block
                UpBlock(inp, prev, out, layers_per_block + 1, kind == "CrossAttnUpBlock2D", upsample=i < blocks - 1,
                        **attention(blocks - 1 - i), **common)
            )  # fmt: skip
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, conv_out_kernel, padding=conv_out_kernel // 2)

    @classmethod
    def validate_config(cls, config: Mapping[str, Any], *, label: str | None = None) -> dict[str, Any]:
        refused = [f"{k}={config[k]!r}" for k in UNSUPPORTED_UNLESS if k in config and _unsupported(k, config[k])]
        if refused:
            raise ConfigError(
                f"sd-unet does not implement {', '.join(refused)} (SD 1.x / 2.x UNets use "
                + ", ".join(f"{k}={UNSUPPORTED_UNLESS[k]!r}" for k in (r.split("=")[0] for r in refused))
                + "); this checkpoint needs another denoiser plugin"
            )
        return super().validate_config(config, label=label)

    # --- forward ------------------------------------------------------------------------------------------------
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *,
        cross_attention_kwargs: Mapping[str, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Latents (batch, in_channels, h, w), timestep(s), text embeddings (batch, tokens, dim) -> prediction.

        attention_mask: (batch, tokens) of 1 (attend) / 0 (ignore) over the text tokens of the cross-attention.
        cross_attention_kwargs: passed to every attention module's add-on (e.g. IP-Adapter's image embeddings).
        timestep_cond: guidance embedding of LCM-distilled UNets (config time_cond_proj_dim).
        """
        self._check_inputs(sample, encoder_hidden_states)
        config = self.config
        batch = sample.shape[0]
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=sample.device)
        timestep = timestep.to(sample.device).reshape(-1)
        timestep = timestep.expand(batch) if timestep.numel() == 1 else timestep
        if timestep.shape != (batch,):
            raise ValueError(
                f"timestep must be one value or one per sample ({batch}), got shape {tuple(timestep.shape)}"
            )

        t_emb = timestep_embedding(timestep, config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift)
        temb = self.time_embedding(t_emb.to(sample.dtype), timestep_cond)
        act_temb = F.silu(temb)  # every resnet applies SiLU to the embedding first: do it once

        context_mask = None
        if attention_mask is not None:
            # an additive bias over the text tokens, broadcast over heads and queries: (batch, 1, 1, tokens)
            context_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0)[:, None, None, :]
        kwargs = dict(cross_attention_kwargs or {})

        if config.center_input_sample:
            sample = 2 * sample - 1.0
        channels_last = self.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        if channels_last:  # after unet.to(memory_format=torch.channels_last): keep every activation in that layout
            sample = sample.contiguous(memory_format=torch.channels_last)
        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, block_skips = block(x, act_temb, encoder_hidden_states, context_mask, kwargs)
            skips.extend(block_skips)
        x = self.mid_block(x, act_temb, encoder_hidden_states, context_mask, kwargs)
        for block in self.up_blocks:
            x = block(x, skips, act_temb, encoder_hidden_states, context_mask, kwargs)
        out = self.conv_out(F.silu(self.conv_norm_out(x)))
        return out.contiguous() if channels_last else out

    def _check_inputs(self, sample: torch.Tensor, context: torch.Tensor) -> None:
        config = self.config
        if sample.ndim != 4 or sample.shape[1] != config.in_channels:
            raise ValueError(
                f"sd-unet expects latents of shape (batch, {config.in_channels}, height, width) (config "
                f"in_channels={config.in_channels}), got {tuple(sample.shape)}"
            )
        factor = 2**self.num_upsamplers
        if sample.shape[2] % factor or sample.shape[3] % factor:
            raise ValueError(
                f"latent height and width must be multiples of {factor} (the UNet downsamples {self.num_upsamplers} "
                f"times), got {sample.shape[2]}x{sample.shape[3]}; for images that is multiples of {factor * 8} pixels"
            )
        dims = config.cross_attention_dim
        dims = {dims} if isinstance(dims, int) else set(dims)
        if context.ndim != 3 or context.shape[-1] not in dims or context.shape[0] != sample.shape[0]:
            raise ValueError(
                f"encoder_hidden_states must be (batch={sample.shape[0]}, tokens, {'/'.join(map(str, dims))}) "
                f"(config cross_attention_dim), got {tuple(context.shape)}"
            )

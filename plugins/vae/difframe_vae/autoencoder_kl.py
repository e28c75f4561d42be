"""Stable Diffusion's KL autoencoder, in one file.

Image (B, 3, H, W) in [-1, 1] -> Encoder -> quant_conv -> DiagonalGaussian over latents (B, 4, H/8, W/8);
latents -> post_quant_conv -> Decoder -> image. Parameter names and config.json keys are those of the shared
checkpoint layout (diffusers' AutoencoderKL), so the vae/ folder of any Stable Diffusion model loads unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from difframe.attention import Attention
from difframe.errors import ConfigError
from difframe.modeling import ModelMixin
from torch import nn
from torch.utils.checkpoint import checkpoint

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "mish": nn.Mish,
    "relu": nn.ReLU,
}
EPS = 1e-6  # every norm of this autoencoder uses it


def _run(module: nn.Module, x: torch.Tensor, checkpointed: bool) -> torch.Tensor:
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(module, x, use_reentrant=False)
    return module(x)


# --- building blocks ----------------------------------------------------------------------------------------------
class ResnetBlock2D(nn.Module):
    """norm -> act -> conv, twice, plus a (1x1-projected when channels change) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, act_fn: str) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=EPS)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nonlinearity = ACTIVATIONS[act_fn]()
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv after padding one pixel on the right and bottom only (the original VAE's asymmetry)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bfloat16:  # nearest upsampling has no bf16 kernel on some torch builds
            return self.conv(F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(x.dtype))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncoderBlock(nn.Module):  # DownEncoderBlock2D
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, act_fn: str, down: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, act_fn) for i in range(layers)
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels)]) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class DecoderBlock(nn.Module):  # UpDecoderBlock2D
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, act_fn: str, up: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, groups, act_fn) for i in range(layers)
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if up else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class MidBlock(nn.Module):  # UNetMidBlock2D without time embedding: resnet, (single-head self-attention), resnet
    def __init__(self, channels: int, groups: int, act_fn: str, add_attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock2D(channels, channels, groups, act_fn) for _ in range(2))
        attention = Attention(
            channels,
            heads=1,
            dim_head=channels,
            bias=True,
            norm_num_groups=groups,
            eps=EPS,
            residual_connection=True,
        )
        self.attentions = nn.ModuleList([attention]) if add_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        channels: Sequence[int],
        layers: int,
        groups: int,
        act_fn: str,
        mid_attention: bool,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            EncoderBlock(channels[max(i - 1, 0)], out, layers, groups, act_fn, down=i < len(channels) - 1)
            for i, out in enumerate(channels)
        )
        self.mid_block = MidBlock(channels[-1], groups, act_fn, mid_attention)
        self.conv_norm_out = nn.GroupNorm(groups, channels[-1], eps=EPS)
        self.conv_act = ACTIVATIONS[act_fn]()
        self.conv_out = nn.Conv2d(channels[-1], 2 * latent_channels, 3, padding=1)  # mean and log-variance
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in (*self.down_blocks, self.mid_block):
            x = _run(block, x, self.gradient_checkpointing)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        channels: Sequence[int],
        layers: int,
        groups: int,
        act_fn: str,
        mid_attention: bool,
    ) -> None:
        super().__init__()
        reversed_channels = list(reversed(channels))
        self.conv_in = nn.Conv2d(latent_channels, channels[-1], 3, padding=1)
        self.mid_block = MidBlock(channels[-1], groups, act_fn, mid_attention)
        self.up_blocks = nn.ModuleList(
            DecoderBlock(reversed_channels[max(i - 1, 0)], out, layers + 1, groups, act_fn, up=i < len(channels) - 1)
            for i, out in enumerate(reversed_channels)
        )
        self.conv_norm_out = nn.GroupNorm(groups, channels[0], eps=EPS)
        self.conv_act = ACTIVATIONS[act_fn]()
        self.conv_out = nn.Conv2d(channels[0], out_channels, 3, padding=1)
        self.gradient_checkpointing = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)
        for block in (self.mid_block, *self.up_blocks):
            x = _run(block, x, self.gradient_checkpointing)
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


# --- the latent distribution --------------------------------------------------------------------------------------
class DiagonalGaussian:
    """A normal distribution per latent element, from the encoder's (mean, log-variance) channels."""

    def __init__(self, parameters: torch.Tensor) -> None:
        self.parameters = parameters
        self.mean, logvar = parameters.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """mean + std * noise; the noise is drawn on the generator's device, so a CPU generator is reproducible."""
        shape, dtype = self.mean.shape, self.mean.dtype
        if isinstance(generator, list):
            if len(generator) != shape[0]:
                raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
            noise = torch.cat(
                [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
            )
        else:
            device = generator.device if generator is not None else self.mean.device
            noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL divergence to ``other`` (default: the standard normal), summed over (C, H, W): one value per image."""
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = (
                (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar
            )
        return 0.5 * terms.sum(dim=(1, 2, 3))

    def nll(self, sample: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of ``sample``, summed over (C, H, W)."""
        log_two_pi = 1.8378770664093453
        return 0.5 * (log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var).sum(dim=(1, 2, 3))


# --- the model ----------------------------------------------------------------------------------------------------
class AutoencoderKL(ModelMixin):
    """The KL-regularised autoencoder of Stable Diffusion (config keys as in the shared vae/config.json).

    ``scaling_factor`` (and ``shift_factor``, ``latents_mean``/``latents_std`` for models that use them) are stored
    for the pipeline, which applies ``(z - shift) * scaling_factor`` after encoding and the inverse before decoding:
    ``encode``/``decode`` work on unscaled latents, like the reference library.
    """

    layout_name = ("diffusers", "AutoencoderKL")
    supports_gradient_checkpointing = True

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int | tuple[int, int] = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ) -> None:
        super().__init__()
        _check_config(
            in_channels, out_channels, down_block_types, up_block_types, block_out_channels, layers_per_block,
            act_fn, latent_channels, norm_num_groups, sample_size, scaling_factor,
        )  # fmt: skip
        common = {"channels": block_out_channels, "layers": layers_per_block, "groups": norm_num_groups}
        common |= {"act_fn": act_fn, "mid_attention": mid_block_add_attention}
        self.encoder = Encoder(in_channels, latent_channels, **common)
        self.decoder = Decoder(latent_channels, out_channels, **common)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.use_slicing = False
        self.use_tiling = False
        size = sample_size if isinstance(sample_size, int) else sample_size[0]
        self.tile_sample_size = size  # image tiles, in pixels
        self.tile_overlap = 0.25  # fraction of a tile shared with its neighbour

    # --- options ------------------------------------------------------------------------------------------------
    @property
    def scale_factor(self) -> int:
        """Pixels per latent along each side (8 for Stable Diffusion)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def tile_latent_size(self) -> int:
        return int(self.tile_sample_size / self.scale_factor)

    def enable_slicing(self) -> None:
        """Encode and decode a batch one image at a time: peak memory of a single image, same results."""
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, tile_sample_size: int | None = None, tile_overlap: float | None = None) -> None:
        """Encode/decode images larger than a tile in overlapping tiles whose seams are blended linearly.

        tile_sample_size: tile side in pixels (default: the config's sample_size; a multiple of ``scale_factor``).
        tile_overlap: fraction of a tile that overlaps the next one, in [0, 1) (default 0.25).
        """
        size = self.tile_sample_size if tile_sample_size is None else tile_sample_size
        overlap = self.tile_overlap if tile_overlap is None else tile_overlap
        if size < self.scale_factor or size % self.scale_factor:
            raise ValueError(f"tile_sample_size must be a positive multiple of {self.scale_factor}, got {size}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"tile_overlap must be in [0, 1), got {overlap}")
        self.tile_sample_size, self.tile_overlap = size, overlap
        self.use_tiling = True

    def disable_tiling(self) -> None:
        self.use_tiling = False

    # --- encode / decode ----------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images (B, in_channels, H, W), H and W multiples of ``scale_factor`` -> distribution over latents."""
        self._check_input(x, self.config.in_channels, "image", divisible=True)
        with self._maybe_upcast(x) as run:
            moments = self._batched(run(x), self._encode)
        return DiagonalGaussian(moments.to(x.dtype))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latents (B, latent_channels, h, w) -> images (B, out_channels, h * scale_factor, ...)."""
        self._check_input(z, self.config.latent_channels, "latent", divisible=False)
        with self._maybe_upcast(z) as run:
            image = self._batched(run(z), self._decode)
        return image.to(z.dtype)

    def forward(
        self, sample: torch.Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Reconstruct ``sample``: encode, take the mode (or a sample), decode."""
        posterior = self.encode(sample)
        return self.decode(posterior.sample(generator) if sample_posterior else posterior.mode())

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_size:
            return self._tiled(x, self._encode_tile, self.tile_sample_size, self.tile_latent_size)
        return self._encode_tile(x)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_size:
            return self._tiled(z, self._decode_tile, self.tile_latent_size, self.tile_sample_size)
        return self._decode_tile(z)

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return moments if self.quant_conv is None else self.quant_conv(moments)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z if self.post_quant_conv is None else self.post_quant_conv(z))

    def _batched(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.use_slicing and x.shape[0] > 1:
            return torch.cat([fn(part) for part in x.split(1)])
        return fn(x)

    def _tiled(
        self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile_in: int, tile_out: int
    ) -> torch.Tensor:
        """Run ``fn`` on overlapping tiles; blend each tile into its upper and left neighbours, then crop.

        Tiles start every ``tile_in * (1 - overlap)`` input pixels; the ``tile_out * overlap`` output rows/columns a
        tile shares with the previous one fade linearly from the previous tile to this one.
        """
        stride = max(int(tile_in * (1 - self.tile_overlap)), 1)
        blend = int(tile_out * self.tile_overlap)
        keep = tile_out - blend
        rows = [
            [fn(x[:, :, i : i + tile_in, j : j + tile_in]) for j in range(0, x.shape[3], stride)]
            for i in range(0, x.shape[2], stride)
        ]
        out_rows = []
        for i, row in enumerate(rows):
            for j, tile in enumerate(row):
                if i > 0:
                    _blend(rows[i - 1][j], tile, blend, dim=2)
                if j > 0:
                    _blend(row[j - 1], tile, blend, dim=3)
            out_rows.append(torch.cat([tile[:, :, :keep, :keep] for tile in row], dim=3))
        return torch.cat(out_rows, dim=2)

    # --- checks and precision -----------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, channels: int, what: str, divisible: bool) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected {what}s shaped (batch, {channels}, height, width), got shape {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ValueError(
                f"{what} has {x.shape[1]} channels but this autoencoder takes {channels} (shape {tuple(x.shape)})"
            )
        if divisible and (x.shape[2] % self.scale_factor or x.shape[3] % self.scale_factor):
            raise ValueError(
                f"image height and width must be multiples of {self.scale_factor} (the autoencoder's downsampling "
                f"factor), got {x.shape[2]}x{x.shape[3]}; resize or crop the image"
            )

    @contextlib.contextmanager
    def _maybe_upcast(self, x: torch.Tensor) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """With force_upcast, an fp16 model computes in fp32 (its activations overflow fp16), then returns to fp16."""
        dtype = self.dtype
        if not (self.config.force_upcast and dtype == torch.float16):
            yield lambda t: t.to(dtype)
            return
        self.to(torch.float32)  # fp16 -> fp32 -> fp16 is exact, so the weights come back unchanged
        try:
            yield lambda t: t.float()
        finally:
            self.to(dtype)


def _blend(previous: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> None:
    """In place: the first ``extent`` rows (dim=2) or columns (dim=3) of ``tile`` fade in from ``previous``."""
    extent = min(previous.shape[dim], tile.shape[dim], extent)
    if extent <= 0:
        return
    weight = torch.arange(extent, device=tile.device, dtype=tile.dtype) / extent
    weight = weight.view(-1, 1) if dim == 2 else weight
    head = tile.narrow(dim, 0, extent)
    head.copy_(previous.narrow(dim, previous.shape[dim] - extent, extent) * (1 - weight) + head * weight)


def _check_config(
    in_channels: int,
    out_channels: int,
    down_block_types: tuple[str, ...],
    up_block_types: tuple[str, ...],
    block_out_channels: tuple[int, ...],
    layers_per_block: int,
    act_fn: str,
    latent_channels: int,
    norm_num_groups: int,
    sample_size: int | tuple[int, int],
    scaling_factor: float,
) -> None:
    """Reject configs that cannot describe a network this module builds, naming the field and the fix."""
    problems = []
    if not (math.isfinite(scaling_factor) and scaling_factor > 0):
        problems.append(
            f"scaling_factor must be a positive number (0.18215 for Stable Diffusion 1.x/2.x VAEs), got "
            f"{scaling_factor}: latents are divided by it before decoding"
        )
    if any(c < 1 for c in block_out_channels):
        problems.append(f"block_out_channels must be positive, got {block_out_channels}")
    if not block_out_channels:
        problems.append("block_out_channels must list at least one width")
    if len(down_block_types) != len(block_out_channels) or len(up_block_types) != len(block_out_channels):
        problems.append(
            f"down_block_types ({len(down_block_types)}), up_block_types ({len(up_block_types)}) and "
            f"block_out_channels ({len(block_out_channels)}) must have the same length"
        )
    unsupported = {t for t in down_block_types if t != "DownEncoderBlock2D"}
    unsupported |= {t for t in up_block_types if t != "UpDecoderBlock2D"}
    if unsupported:
        problems.append(
            f"block types {sorted(unsupported)} are not implemented (only DownEncoderBlock2D / UpDecoderBlock2D)"
        )
    if norm_num_groups < 1 or any(c % norm_num_groups for c in block_out_channels):
        problems.append(f"every block_out_channels value {block_out_channels} must be a multiple of norm_num_groups "
                        f"({norm_num_groups})")  # fmt: skip
    for name, value in (
        ("in_channels", in_channels),
        ("out_channels", out_channels),
        ("latent_channels", latent_channels),
        ("layers_per_block", layers_per_block),
    ):
        if value < 1:
            problems.append(f"{name} must be at least 1, got {value}")
    if act_fn not in ACTIVATIONS:
        problems.append(f"act_fn {act_fn!r} is not one of {sorted(ACTIVATIONS)}")
    if min([sample_size] if isinstance(sample_size, int) else sample_size) < 1:
        problems.append(f"sample_size must be positive, got {sample_size}")
    if problems:
        raise ConfigError("invalid AutoencoderKL config: " + "; ".join(problems))

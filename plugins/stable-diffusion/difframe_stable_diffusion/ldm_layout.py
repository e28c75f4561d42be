"""Parameter names of the original (CompVis/LDM) single-file layout of Stable Diffusion 1.x / 2.x, and how each maps
to a parameter of the shared folder layout that our models use.

One table per model, built from the model's own parameter names: ``{folder name: Source(file key, part)}``. Loading
reads ``file[key]`` (``part``: one third along dim 0 of OpenCLIP's fused q/k/v projection); saving writes the same
keys back. The same table serves both ways, so a round trip cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # OpenAI CLIP through transformers (SD 1.x)
OPENCLIP_PREFIX = "cond_stage_model.model."  # OpenCLIP (SD 2.x)


class Source(NamedTuple):
    key: str
    part: int | None = None  # which third of a fused q/k/v tensor


class LayoutError(KeyError):
    """A parameter that the original layout has no place for."""

    def __str__(self) -> str:
        return str(self.args[0])


_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _renamed(rest: str, mapping: dict[str, str]) -> str:
    for ours, theirs in mapping.items():
        if rest.startswith(ours + "."):
            return theirs + rest[len(ours) :]
    raise LayoutError(rest)


def unet_key(name: str, layers_per_block: int, up_block_has_attention: Sequence[bool]) -> str:
    """A UNet parameter name -> its LDM name (without the ``model.diffusion_model.`` prefix).

    LDM numbers blocks flat: ``input_blocks`` hold conv_in, then per level ``layers_per_block`` (resnet, attention)
    pairs and a downsampler; ``output_blocks`` hold ``layers_per_block + 1`` pairs per level, the last one followed
    by the upsampler (at index 1 without attention, 2 with).
    """
    per_level = layers_per_block + 1
    try:
        if match := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", name):
            side, level, kind, index, rest = match.groups()
            if side == "down":
                block = f"input_blocks.{1 + int(level) * per_level + int(index)}"
            else:
                block = f"output_blocks.{int(level) * per_level + int(index)}"
            return f"{block}.0.{_renamed(rest, _UNET_RESNET)}" if kind == "resnets" else f"{block}.1.{rest}"
        if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name):
            return f"input_blocks.{(int(match[1]) + 1) * per_level}.0.op.{match[2]}"
        if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name):
            level = int(match[1])
            slot = 2 if up_block_has_attention[level] else 1
            return f"output_blocks.{level * per_level + layers_per_block}.{slot}.conv.{match[2]}"
        if match := re.fullmatch(r"mid_block\.resnets\.([01])\.(.+)", name):
            return f"middle_block.{2 * int(match[1])}.{_renamed(match[2], _UNET_RESNET)}"
        if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
            return f"middle_block.1.{match[1]}"
        return _renamed(name, _UNET_TOP)
    except LayoutError:
        raise LayoutError(f"UNet parameter {name!r} has no place in the original single-file layout") from None


def vae_key(name: str, levels: int) -> str:
    """A VAE parameter name -> its LDM name (without the ``first_stage_model.`` prefix).

    LDM numbers the decoder's levels from the bottom (``up.0`` is the last to run), the folder layout from the top.
    """
    resnet = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
    try:
        if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
            return f"encoder.down.{match[1]}.block.{match[2]}.{_renamed(match[3], resnet)}"
        if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", name):
            return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
        if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
            return f"decoder.up.{levels - 1 - int(match[1])}.block.{match[2]}.{_renamed(match[3], resnet)}"
        if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", name):
            return f"decoder.up.{levels - 1 - int(match[1])}.upsample.conv.{match[2]}"
        if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(.+)", name):
            return f"{match[1]}.mid.block_{int(match[2]) + 1}.{_renamed(match[3], resnet)}"
        if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", name):
            return f"{match[1]}.mid.attn_1.{_renamed(match[2], _VAE_ATTENTION)}"
        if match := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", name):
            return f"{match[1]}.norm_out.{match[2]}"
        if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)|(post_)?quant_conv\.(weight|bias)", name):
            return name
    except LayoutError:
        pass
    raise LayoutError(f"VAE parameter {name!r} has no place in the original single-file layout")


def openclip_source(name: str) -> Source:
    """A CLIPTextModel parameter name (without ``text_model.``) -> its OpenCLIP name (without the prefix)."""
    fixed = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    if name in fixed:
        return Source(fixed[name])
    match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if match:
        block, module, kind = f"transformer.resblocks.{match[1]}", match[2], match[3]
        if qkv := re.fullmatch(r"self_attn\.([qkv])_proj", module):
            return Source(f"{block}.attn.in_proj_{kind}", "qkv".index(qkv[1]))
        renamed = {
            "layer_norm1": "ln_1",
            "layer_norm2": "ln_2",
            "self_attn.out_proj": "attn.out_proj",
            "mlp.fc1": "mlp.c_fc",
            "mlp.fc2": "mlp.c_proj",
        }
        if module in renamed:
            return Source(f"{block}.{renamed[module]}.{kind}")
    raise LayoutError(f"text encoder parameter {name!r} has no place in the OpenCLIP single-file layout")


def strip_text_model(name: str) -> str:
    """transformers < 5 names CLIPTextModel's parameters ``text_model.*``; 5 drops the wrapper."""
    return name.removeprefix("text_model.")


def unet_table(names: Iterable[str], layers_per_block: int, up_block_types: Sequence[str]) -> dict[str, Source]:
    attention = [kind.startswith("CrossAttn") for kind in up_block_types]
    return {name: Source(UNET_PREFIX + unet_key(name, layers_per_block, attention)) for name in names}


def vae_table(names: Iterable[str], levels: int) -> dict[str, Source]:
    return {name: Source(VAE_PREFIX + vae_key(name, levels)) for name in names}


def text_table(names: Iterable[str], layout: str) -> dict[str, Source]:
    """``layout``: "clip" (``cond_stage_model.transformer.text_model.*``) or "openclip" (``...model.*``)."""
    table = {}
    for name in names:
        bare = strip_text_model(name)
        if layout == "openclip":
            source = openclip_source(bare)
            table[name] = Source(OPENCLIP_PREFIX + source.key, source.part)
        else:
            table[name] = Source(f"{CLIP_PREFIX}text_model.{bare}")
    return table

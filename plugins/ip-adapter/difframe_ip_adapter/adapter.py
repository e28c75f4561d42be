"""Published IP-Adapter checkpoints into a difframe UNet: reading, checking against the UNet, attaching, scales.

Checkpoint layout (IP-Adapter's releases): ``image_proj.*`` (the projection model) and
``ip_adapter.<n>.to_k_ip.weight`` / ``ip_adapter.<n>.to_v_ip.weight``, where n = 1, 3, 5, ... numbers the UNet's
cross-attention layers in the order the reference library lists attention processors: down blocks, then up
blocks, then the mid block (its module registration order), each layer's self-attention taking the even number.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from difframe.attention import attention_modules, set_attention
from torch import nn

from .attention import IPAdapterAttention
from .projection import projection_from_state_dict

_LAYER_KEY = re.compile(r"^(\d+)\.(to_k_ip|to_v_ip)\.weight$")
_PART_ORDER = {"down_blocks": 0, "up_blocks": 1, "mid_block": 2}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def read_adapter_file(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> dict[str, dict[str, Any]]:
    """{"image_proj": {...}, "ip_adapter": {...}} from a .safetensors file, or a pickled one (weights only) when
    ``allow_pickle``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat: Mapping[str, Any] = load_file(path)
    elif path.suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ValueError(
                f"{path.name} is a pickle file; pickles can run code when read. Use the .safetensors release, or "
                "pass allow_pickle=True to read it with torch's weights-only loader"
            )
        flat = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{path.name}: an IP-Adapter file is .safetensors (or .bin with allow_pickle=True)")
    if isinstance(flat.get("image_proj"), Mapping) and isinstance(flat.get("ip_adapter"), Mapping):
        return {"image_proj": dict(flat["image_proj"]), "ip_adapter": dict(flat["ip_adapter"])}
    parts: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        prefix, _, rest = key.partition(".")
        if prefix not in parts:
            raise ValueError(
                f"{path.name} has the key {key!r}: not an IP-Adapter file (keys start with image_proj. or ip_adapter.)"
            )
        parts[prefix][rest] = value
    if not parts["image_proj"] or not parts["ip_adapter"]:
        raise ValueError(f"{path.name} is not an IP-Adapter file: it needs both image_proj.* and ip_adapter.* keys")
    return parts


def cross_attention_layers(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    """The UNet's text cross-attention modules in the published numbering's order (layer i has number 2i+1)."""
    layers = [(name, module) for name, module in attention_modules(unet) if module.is_cross_attention]
    return sorted(layers, key=lambda item: _PART_ORDER.get(item[0].split(".")[0], len(_PART_ORDER)))


class IPAdapterWeights(nn.Module):
    """One loaded adapter: its projection model and, per cross-attention layer, to_k_ip and to_v_ip."""

    def __init__(self, name: str, projection: nn.Module, to_k_ip: dict[str, nn.Linear], to_v_ip: dict[str, nn.Linear]):
        super().__init__()
        self.name = name
        self.projection = projection
        self.layer_names = list(to_k_ip)
        self.to_k_ip = nn.ModuleList(to_k_ip.values())
        self.to_v_ip = nn.ModuleList(to_v_ip.values())

    @property
    def kind(self) -> str:
        """ "plain" (pooled image embedding), "plus" (resampler) or "full" (MLP over every token)."""
        return self.projection.kind

    @property
    def uses_hidden_states(self) -> bool:
        """Plus and full-face read the encoder's penultimate-layer tokens; plain reads its projected embedding."""
        return self.kind != "plain"

    def layer(self, name: str) -> tuple[nn.Linear, nn.Linear]:
        index = self.layer_names.index(name)
        return self.to_k_ip[index], self.to_v_ip[index]


def adapter_from_state_dict(state: Mapping[str, Mapping[str, Any]], unet: nn.Module, name: str) -> IPAdapterWeights:
    """Check the published layout ``state`` against ``unet`` (every error names the layer) and build the adapter."""
    layer_weights = state["ip_adapter"]
    wrong = [key for key in layer_weights if not _LAYER_KEY.match(key)]
    if wrong:
        raise ValueError(
            f"{name}: ip_adapter.{wrong[0]} is not a decoupled cross-attention weight (expected "
            "ip_adapter.<n>.to_k_ip.weight / to_v_ip.weight); IP-Adapter LoRA and Face ID files are not implemented"
        )
    projection = projection_from_state_dict(state["image_proj"], name)
    layers = cross_attention_layers(unet)
    numbers = sorted({int(_LAYER_KEY.match(key).group(1)) for key in layer_weights})
    expected = [2 * i + 1 for i in range(len(layers))]
    if numbers != expected:
        extra = sorted(set(numbers) - set(expected))
        missing = [(n, layers[(n - 1) // 2][0]) for n in expected if n not in numbers]
        detail = (
            f"it has no weights for the UNet's layer {missing[0][1]} (ip_adapter.{missing[0][0]}.*)"
            if missing
            else f"it has weights for layers this UNet does not have (ip_adapter.{extra[0]}.*)"
        )
        raise ValueError(
            f"{name} does not fit this UNet: {detail}. The file numbers {len(numbers)} cross-attention layers, the "
            f"UNet has {len(layers)}; use the adapter made for this base model"
        )
    to_k: dict[str, nn.Linear] = {}
    to_v: dict[str, nn.Linear] = {}
    for number, (layer_name, attn) in zip(expected, layers):
        for part, target in (("to_k_ip", to_k), ("to_v_ip", to_v)):
            key = f"{number}.{part}.weight"
            weight = layer_weights.get(key)
            if weight is None:
                raise ValueError(f"{name} has no ip_adapter.{key} for the UNet's layer {layer_name}")
            reference = attn.to_k.weight
            if weight.ndim != 2 or weight.shape[0] != reference.shape[0] or weight.shape[1] != reference.shape[1]:
                raise ValueError(
                    f"{name}: ip_adapter.{key} has shape {tuple(weight.shape)} but the UNet's layer {layer_name} "
                    f"needs {tuple(reference.shape)} (its text key projection); the adapter was made for another UNet"
                )
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            with torch.no_grad():
                linear.weight.copy_(weight)
            target[layer_name] = linear
    width = layers[0][1].to_k.weight.shape[1]
    out_width = _projection_width(projection)
    if out_width != width:
        raise ValueError(
            f"{name}: its image projection makes {out_width}-wide tokens but the UNet's cross-attention takes {width}"
        )
    return IPAdapterWeights(name, projection, to_k, to_v).eval()


def _projection_width(projection: nn.Module) -> int:
    norm = getattr(projection, "norm", None) or getattr(projection, "norm_out", None) or projection.proj[3]
    return int(norm.weight.shape[0])


def attach(unet: nn.Module, adapters: Sequence[IPAdapterWeights]) -> dict[str, IPAdapterAttention]:
    """Set the decoupled cross-attention add-on (all ``adapters``) on each cross-attention layer of ``unet``."""
    parameter = next(unet.parameters())
    addons: dict[str, IPAdapterAttention] = {}
    for adapter in adapters:
        adapter.to(device=parameter.device, dtype=parameter.dtype)
    for name, _ in cross_attention_layers(unet):
        pairs = [adapter.layer(name) for adapter in adapters]
        addons[name] = IPAdapterAttention(name, [k for k, _ in pairs], [v for _, v in pairs])
    set_attention(unet, dict(addons))
    return addons


def detach(unet: nn.Module) -> None:
    """Remove the IP-Adapter add-ons (other add-ons stay)."""
    for _, module in attention_modules(unet):
        if isinstance(module.addon, IPAdapterAttention):
            module.addon = None


ScaleConfig = float | int | Mapping[str, Any]


def expand_scale(config: ScaleConfig, layer_names: Sequence[str]) -> dict[str, float]:
    """One adapter's scale config -> a scale per cross-attention layer.

    A number sets every layer. A dict sets parts of the UNet and leaves the rest at 0: {"mid": s},
    {"down": s} / {"up": s} (all blocks of that side), {"up": {"block_0": s}} (every layer of that block), or
    {"up": {"block_0": [s0, s1, s2]}} (one per attention of the block), as the reference's set_ip_adapter_scale.
    """
    if isinstance(config, bool) or not isinstance(config, (int, float, Mapping)):
        raise TypeError(
            f"an IP-Adapter scale is a number or a dict such as {{'up': {{'block_0': 1.0}}}}, got {config!r}"
        )
    if not isinstance(config, Mapping):
        return {name: float(config) for name in layer_names}
    unknown = sorted(set(config) - {"down", "mid", "up"})
    if unknown:
        raise ValueError(f"IP-Adapter scale keys are 'down', 'mid' and 'up'; got {unknown}")
    blocks: dict[str, dict[int, list[int]]] = {"down": {}, "up": {}}  # side -> block -> attention indices
    for name in layer_names:
        parts = name.split(".")
        if parts[0] in ("down_blocks", "up_blocks"):
            attentions = blocks[parts[0].removesuffix("_blocks")].setdefault(int(parts[1]), [])
            if int(parts[3]) not in attentions:
                attentions.append(int(parts[3]))
    scales = dict.fromkeys(layer_names, 0.0)

    def assign(prefix: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"IP-Adapter scale for {prefix} must be a number, got {value!r}")
        for name in layer_names:
            if name.startswith(prefix + "."):
                scales[name] = float(value)

    if "mid" in config:
        value = config["mid"]
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError(f"the mid block has one attention: give one scale, got {len(value)}")
            value = value[0]
        assign("mid_block", value)
    for side in ("down", "up"):
        if side not in config:
            continue
        value = config[side]
        per_block = value if isinstance(value, Mapping) else {f"block_{b}": value for b in blocks[side]}
        for block_key, block_value in per_block.items():
            match = re.fullmatch(r"block_(\d+)", str(block_key))
            if match is None or int(match.group(1)) not in blocks[side]:
                valid = ", ".join(f"block_{b}" for b in sorted(blocks[side])) or "none"
                raise ValueError(
                    f"IP-Adapter scale names {side}.{block_key}, which has no cross-attention in this UNet; the "
                    f"{side} blocks with attention are: {valid}"
                )
            block = int(match.group(1))
            attentions = blocks[side][block]
            values = block_value if isinstance(block_value, list) else [block_value] * len(attentions)
            if len(values) == 1:
                values = values * len(attentions)
            if len(values) != len(attentions):
                raise ValueError(
                    f"IP-Adapter scale {side}.{block_key} has {len(values)} values; that block has "
                    f"{len(attentions)} attentions: give one number, or one per attention"
                )
            for attention, scale in zip(attentions, values):
                assign(f"{side}_blocks.{block}.attentions.{attention}", scale)
    return scales


def set_scales(addons: Mapping[str, IPAdapterAttention], scale: ScaleConfig | Sequence[ScaleConfig]) -> None:
    """``scale``: one config for every adapter, or a list with one per adapter."""
    adapters = len(next(iter(addons.values())).scales) if addons else 0
    configs = list(scale) if isinstance(scale, (list, tuple)) else [scale]
    if len(configs) == 1:
        configs = configs * adapters
    if len(configs) != adapters:
        raise ValueError(f"{len(configs)} IP-Adapter scales for {adapters} loaded adapters: give one, or one each")
    expanded = [expand_scale(config, list(addons)) for config in configs]
    for name, addon in addons.items():
        addon.scales = [per_layer[name] for per_layer in expanded]

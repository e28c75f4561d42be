"""LoRA: low-rank updates of the UNet's and the text encoder's linear and convolution layers.

Two file layouts are read:
- kohya / the web UIs: ``lora_unet_<module_with_underscores>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``
  (``lora_te_`` for the text encoder); LoCon files add the same keys for convolutions.
- diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``.lora_B.weight`` (also the older ``.lora.down`` /
  ``.lora.up`` and attention-processor spellings); alphas from the file's ``lora_adapter_metadata``, else rank.

The low-rank layers themselves are peft's (``inject_adapter_in_model``), as in the reference library: several
adapters per layer, one weight each, merging. Everything is checked before the first layer is touched, so a file
that does not fit leaves the pipeline as it was.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from difframe.errors import ModelLoadError
from torch import nn

from .prompt_networks import lora_hash

COMPONENTS = ("unet", "text_encoder")
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder"}
UNSUPPORTED_KOHYA = {"lora_te1_": "SDXL", "lora_te2_": "SDXL", "lora_te3_": "SD3", "lora_transformer_": "a DiT"}
PEFT_SUFFIXES = {  # key suffix -> (down or up)
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".lora_linear_layer.down.weight": "down",
    ".lora_linear_layer.up.weight": "up",
}
KOHYA_SUFFIXES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}
UNSUPPORTED_PARTS = {
    ".lora_mid.": "LoCon/LyCORIS Tucker decomposition (lora_mid)",
    ".hada_": "LoHa",
    ".lokr_": "LoKr",
    ".dora_scale": "DoRA",
    ".oft_": "OFT",
}


@dataclass
class LowRankUpdate:
    """One layer's update: ``W + scale * up @ down`` with scale ``alpha / rank``."""

    component: str
    module: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    key: str  # the file's name for the layer, for messages

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class LoadedLora:
    name: str
    source: str
    short_hash: str | None
    layers: dict[str, list[str]] = field(default_factory=dict)  # component -> module names


# --- files ------------------------------------------------------------------------------------------------------
def read_lora_file(
    path: str | os.PathLike[str], *, allow_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata of a LoRA file (a pickle only with ``allow_pickle``, weights only)."""
    from difframe.weights import read_state_dict

    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors")) or (sorted(path.glob("*.bin")) if allow_pickle else [])
        if len(candidates) != 1:
            raise ModelLoadError(f"{path} is a folder: name the LoRA file inside it (found {len(candidates)} files)")
        path = candidates[0]
    if not path.is_file():
        raise ModelLoadError(f"LoRA file {path} does not exist")
    if path.suffix != ".safetensors" and not allow_pickle:
        raise ModelLoadError(
            f"{path} is a pickle ({path.suffix}): loading a pickle can run code. Convert it to safetensors, or pass "
            "allow_pickle=True (it is then read weights-only)."
        )
    metadata: dict[str, str] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(f"cannot read LoRA file {path}: {error}; it is not a safetensors file") from None
    state = read_state_dict([path])
    if isinstance(state.get("state_dict"), dict):  # some trainers nest the tensors
        state = state["state_dict"]
    return state, metadata


# --- keys -> layers ---------------------------------------------------------------------------------------------
def adaptable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The linear and convolution layers a LoRA may target, by name (a layer already wrapped by peft counts once,
    under its own name, as its base layer)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found: dict[str, nn.Module] = {}
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in skip):
            continue
        if isinstance(module, BaseTunerLayer):
            found[name] = module.get_base_layer()
            skip.append(name + ".")
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            found[name] = module
    return found


def _alias(component: str, name: str, separator: str = ".") -> list[str]:
    """Spellings of a text-encoder module across transformers versions (with or without ``text_model.``)."""
    prefix = f"text_model{separator}"
    if component != "text_encoder":
        return [name]
    if name.startswith(prefix):
        return [name, name.removeprefix(prefix)]
    return [name, prefix + name]


def parse_lora(
    state: dict[str, torch.Tensor], metadata: dict[str, str], models: dict[str, nn.Module], source: str
) -> list[LowRankUpdate]:
    """Map a LoRA state dict onto the models' layers; raise before anything changes if it does not fit."""
    for key in state:
        for part, kind in UNSUPPORTED_PARTS.items():
            if part in key:
                raise ModelLoadError(f"{source}: {kind} weights ({key}) are not supported; only plain LoRA / LoCon")
        for prefix, family in UNSUPPORTED_KOHYA.items():
            if key.startswith(prefix):
                raise ModelLoadError(f"{source} is a LoRA for {family} ({key}); this pipeline is Stable Diffusion 1/2")
    groups: dict[tuple[str, str, bool], dict[str, Any]] = {}
    unknown: list[str] = []
    for key, tensor in state.items():
        parsed = _parse_key(key)
        if parsed is None:
            unknown.append(key)
            continue
        component, raw, role, kohya = parsed
        groups.setdefault((component, raw, kohya), {})[role] = (key, tensor)
    if unknown and not groups:
        raise ModelLoadError(
            f"{source} holds no LoRA weights this pipeline knows (neither kohya lora_unet_/lora_te_ keys nor "
            f"diffusers/PEFT unet./text_encoder. keys with lora_A/lora_B); first keys: {', '.join(sorted(unknown)[:5])}"
        )
    modules = {c: adaptable_modules(m) for c, m in models.items()}
    flat = {c: {name.replace(".", "_"): name for name in found} for c, found in modules.items()}
    alphas = _metadata_alphas(metadata)
    updates: list[LowRankUpdate] = []
    unmatched: list[str] = []
    for (component, raw, kohya), parts in sorted(groups.items()):
        if "down" not in parts or "up" not in parts:
            missing = "up" if "down" in parts else "down"
            some_key = next(iter(parts.values()))[0]
            raise ModelLoadError(f"{source}: layer {raw} has no {missing} weight (next to {some_key})")
        if component not in modules:
            unmatched.append(parts["down"][0])
            continue
        if kohya:
            spellings = _alias(component, raw, "_")
            if component == "unet":
                spellings.append(original_layout_name(raw, models["unet"]))
            candidates = [flat[component][a] for a in spellings if a in flat[component]]
        else:
            candidates = [a for a in _alias(component, raw) if a in modules[component]]
        if not candidates:
            unmatched.append(parts["down"][0])
            continue
        module_name = candidates[0]
        down, up = parts["down"][1], parts["up"][1]
        rank = down.shape[0]
        if "alpha" in parts:
            alpha = float(parts["alpha"][1].float().item())
        else:
            alpha = alphas.get((component, module_name), alphas.get((component, ""), float(rank)))
        update = LowRankUpdate(component, module_name, down, up, alpha, parts["down"][0].rsplit(".", 2)[0])
        _check_shapes(update, modules[component][module_name], source)
        updates.append(update)
    if unmatched:
        total = len(unmatched) + len(updates)
        raise ModelLoadError(
            f"{source}: {len(unmatched)} of {total} LoRA layers match no layer of this pipeline's "
            f"{' / '.join(models)}; first: {', '.join(unmatched[:5])}. Is it a LoRA for another model family "
            "(SD 1/2 UNet layers are named down_blocks_... or input_blocks_...)?"
        )
    return updates


_RESNET_PARTS = {"in_layers_2": "conv1", "out_layers_3": "conv2", "emb_layers_1": "time_emb_proj",
                 "skip_connection": "conv_shortcut"}  # fmt: skip
_TOP_LEVEL = {"input_blocks_0_0": "conv_in", "time_embed_0": "time_embedding_linear_1",
              "time_embed_2": "time_embedding_linear_2", "out_2": "conv_out"}  # fmt: skip


def original_layout_name(flat: str, unet: nn.Module) -> str:
    """A kohya name in the original (LDM) UNet layout -> the same layer's name here, underscored:
    ``input_blocks_4_1_proj_in`` -> ``down_blocks_1_attentions_0_proj_in``. Other names come back unchanged."""
    for old, new in _TOP_LEVEL.items():
        if flat == old or flat.startswith(old + "_"):
            return new + flat[len(old) :]
    per_block = int(getattr(getattr(unet, "config", None), "layers_per_block", 2) or 2) + 1
    middle = re.fullmatch(r"middle_block_(\d)_(.+)", flat)
    if middle:
        part = {"0": "resnets_0", "1": "attentions_0", "2": "resnets_1"}.get(middle.group(1))
        rest = _RESNET_PARTS.get(middle.group(2), middle.group(2))
        return f"mid_block_{part}_{rest}" if part else flat
    match = re.fullmatch(r"(input_blocks|output_blocks)_(\d+)_(\d+)_(.+)", flat)
    if not match:
        return flat
    kind, index, inner, rest = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    rest = _RESNET_PARTS.get(rest, rest)
    if kind == "input_blocks":
        block, layer = (index - 1) // per_block, (index - 1) % per_block
        if rest == "op":
            return f"down_blocks_{block}_downsamplers_0_conv"
        return f"down_blocks_{block}_{('resnets', 'attentions')[min(inner, 1)]}_{layer}_{rest}"
    block, layer = index // per_block, index % per_block
    if inner == 0:
        return f"up_blocks_{block}_resnets_{layer}_{rest}"
    names = {n for n, _ in unet.named_modules()}
    if inner == 1 and f"up_blocks.{block}.attentions.{layer}" in names:
        return f"up_blocks_{block}_attentions_{layer}_{rest}"
    return f"up_blocks_{block}_upsamplers_0_{rest}"


def _parse_key(key: str) -> tuple[str, str, str, bool] | None:
    """key -> (component, module name as the file spells it, role, kohya?)."""
    for prefix, component in KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            for suffix, role in KOHYA_SUFFIXES.items():
                if key.endswith(suffix):
                    return component, key[len(prefix) : -len(suffix)], role, True
            return None
    for suffix, role in PEFT_SUFFIXES.items():
        if key.endswith(suffix):
            name = key[: -len(suffix)]
            component = "unet"
            for candidate in COMPONENTS:
                if name.startswith(candidate + "."):
                    component, name = candidate, name[len(candidate) + 1 :]
                    break
            # the attention-processor spelling: attn1.processor.to_q_lora -> attn1.to_q
            name = re.sub(r"\.processor\.(to_[qkv])_lora$", r".\1", name)
            name = re.sub(r"\.processor\.to_out_lora$", ".to_out.0", name)
            return component, name, role, False
    if key.endswith(".alpha"):  # a diffusers file that kept kohya's alphas
        name = key[: -len(".alpha")]
        for candidate in COMPONENTS:
            if name.startswith(candidate + "."):
                return candidate, name[len(candidate) + 1 :], "alpha", False
    return None


def _metadata_alphas(metadata: dict[str, str]) -> dict[tuple[str, str], float]:
    """(component, module) -> alpha from diffusers' ``lora_adapter_metadata`` (component-wide under module '')."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise ModelLoadError("the LoRA file's lora_adapter_metadata is not valid JSON") from None
    alphas: dict[tuple[str, str], float] = {}
    for component in COMPONENTS:
        if f"{component}.lora_alpha" in data:
            alphas[(component, "")] = float(data[f"{component}.lora_alpha"])
        for module, alpha in (data.get(f"{component}.alpha_pattern") or {}).items():
            alphas[(component, module)] = float(alpha)
    return alphas


def _check_shapes(update: LowRankUpdate, layer: nn.Module, source: str) -> None:
    where = f"{source}: layer {update.key} ({update.component}.{update.module})"
    down, up = update.down, update.up
    if isinstance(layer, nn.Linear):
        expected_down, expected_up = (update.rank, layer.in_features), (layer.out_features, update.rank)
        ok = down.ndim == 2 and up.ndim == 2 and tuple(down.shape) == expected_down and tuple(up.shape) == expected_up
    else:
        expected_down = (update.rank, layer.in_channels // layer.groups, *layer.kernel_size)
        expected_up = (layer.out_channels, update.rank, 1, 1)
        ok = tuple(down.shape) == expected_down and tuple(up.shape) == expected_up
    if not ok:
        raise ModelLoadError(
            f"{where}: LoRA shapes down {tuple(down.shape)}, up {tuple(up.shape)} do not fit the layer "
            f"(expects down {expected_down}, up {expected_up}). The LoRA was made for another base model."
        )
    if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
        raise ModelLoadError(f"{where}: the LoRA weights hold NaN or infinite values")


# --- peft layers --------------------------------------------------------------------------------------------------
def tuner_layers(model: nn.Module) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def inject(model: nn.Module, adapter: str, updates: list[LowRankUpdate]) -> None:
    """Add ``adapter``'s low-rank layers to ``model`` (peft) and copy the weights in."""
    from peft import LoraConfig, inject_adapter_in_model

    names = [u.module for u in updates]
    first = updates[0]
    config = LoraConfig(
        r=first.rank,
        lora_alpha=first.alpha,
        target_modules=names,
        rank_pattern={u.module: u.rank for u in updates},
        alpha_pattern={u.module: u.alpha for u in updates},
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    inject_adapter_in_model(config, model, adapter_name=adapter)
    layers = dict(model.named_modules())
    with torch.no_grad():
        for update in updates:
            layer = layers[update.module]
            a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
            a.copy_(update.down.reshape(a.shape).to(a.dtype))
            b.copy_(update.up.reshape(b.shape).to(b.dtype))
            a.requires_grad_(False)
            b.requires_grad_(False)


def remove_adapter(model: nn.Module, adapter: str) -> None:
    """Delete ``adapter`` from every layer; a layer left with no adapter becomes its plain base layer again."""
    for name, module in list(model.named_modules()):
        if not _is_lora_layer(module) or adapter not in module.lora_A:
            continue
        module.delete_adapter(adapter)
        if not module.lora_A:
            _replace(model, name, module.get_base_layer())
    if hasattr(model, "peft_config"):
        model.peft_config.pop(adapter, None)
        if not model.peft_config:
            del model.peft_config


def _mark_changed(weight: torch.Tensor) -> None:
    """peft merges through ``weight.data``, which leaves the parameter's version counter as it was; bump it, so that
    whatever caches a form of the weight keyed on it (prepacked convolutions) rebuilds."""
    increment = getattr(torch.autograd.graph, "increment_version", None)
    if increment is not None:
        increment(weight)
    else:
        with torch.no_grad():
            weight.add_(0)


def _is_lora_layer(module: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _exclusive(method: Any) -> Any:
    """Run a method that changes the shared layers while no call of the pipeline is in progress."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._changing(method.__name__):
            return method(self, *args, **kwargs)

    return wrapper


# --- the pipeline API ---------------------------------------------------------------------------------------------
class LoraMixin:
    """``load_lora_weights``, ``set_adapters``, ``fuse_lora`` / ``unfuse_lora``, ``unload_lora_weights``, as in the
    reference library's pipelines."""

    def _changing(self, what: str) -> Any:
        """Changes to the shared layers wait for the calls in progress (the pipeline's call gate, if it has one)."""
        gate = self.__dict__.get("_gate")
        return gate.exclusive(what) if gate is not None else contextlib.nullcontext()

    def _lora_state(self) -> dict[str, Any]:
        state = self.__dict__.get("_lora")
        if state is None:
            state = {"loaded": {}, "weights": {}, "last_weights": {}, "fused": {}, "fused_with": {}}
            self.__dict__["_lora"] = state
        return state

    def _lora_models(self) -> dict[str, nn.Module]:
        return {c: getattr(self, c) for c in COMPONENTS if isinstance(getattr(self, c, None), nn.Module)}

    @_exclusive
    def load_lora_weights(
        self,
        path: str | os.PathLike[str] | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        *,
        weight: float = 1.0,
        allow_pickle: bool = False,
    ) -> str:
        """Load a LoRA file (kohya / web-UI or diffusers / PEFT layout) as adapter ``adapter_name`` (default: the
        file's name) and make it active with ``weight``, next to the adapters already active. Returns the name."""
        state = self._lora_state()
        if state["fused"]:
            raise ValueError("LoRA weights are fused into the model: call unfuse_lora() before loading another")
        if isinstance(path, dict):
            tensors, metadata, source, short_hash = path, {}, "the given state dict", None
            name = adapter_name or f"adapter_{len(state['loaded'])}"
        else:
            tensors, metadata = read_lora_file(path, allow_pickle=allow_pickle)
            source = os.fspath(path)
            file = Path(path)
            short_hash = lora_hash(file)[:12] if file.is_file() else None
            name = adapter_name or file.stem
        if not isinstance(name, str) or not re.fullmatch(r"[\w\-. ]+", name):
            raise ValueError(f"adapter_name must be letters, digits, '_', '-', '.' or spaces, got {name!r}")
        if name in state["loaded"]:
            raise ValueError(f"an adapter named {name!r} is loaded already: pick another adapter_name")
        models = self._lora_models()
        updates = parse_lora(tensors, metadata, models, source)
        by_component: dict[str, list[LowRankUpdate]] = {}
        for update in updates:
            by_component.setdefault(update.component, []).append(update)
        try:
            for component, component_updates in by_component.items():
                inject(models[component], name, component_updates)
        except Exception:
            for model in models.values():
                remove_adapter(model, name)
            raise
        state["loaded"][name] = LoadedLora(
            name, source, short_hash, {c: [u.module for u in us] for c, us in by_component.items()}
        )
        state["weights"][name] = state["last_weights"][name] = float(weight)
        self._apply_adapter_weights()
        return name

    def get_list_adapters(self) -> dict[str, list[str]]:
        """Component -> names of the adapters loaded into it."""
        loaded = self._lora_state()["loaded"].values()
        return {c: [a.name for a in loaded if c in a.layers] for c in COMPONENTS if any(c in a.layers for a in loaded)}

    def get_active_adapters(self) -> list[str]:
        return list(self._lora_state()["weights"])

    @property
    def lora_weights(self) -> dict[str, float]:
        """The active adapters and their weights."""
        return dict(self._lora_state()["weights"])

    @_exclusive
    def set_adapters(
        self, adapter_names: str | list[str], adapter_weights: float | list[float | None] | None = None
    ) -> None:
        """Make exactly these adapters active, each with its weight (default 1.0); the others stay loaded."""
        state = self._lora_state()
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if adapter_weights is None or isinstance(adapter_weights, (int, float)):
            weights = [1.0 if adapter_weights is None else adapter_weights] * len(names)
        else:
            weights = [1.0 if w is None else w for w in adapter_weights]
        if len(weights) != len(names):
            raise ValueError(f"got {len(weights)} adapter weights for {len(names)} adapters: pass one per adapter")
        for name, value in zip(names, weights):
            if name not in state["loaded"]:
                raise ValueError(f"no adapter {name!r} loaded; loaded: {', '.join(state['loaded']) or 'none'}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ValueError(f"the weight of adapter {name!r} must be a number, got {value!r}")
        if state["fused"]:
            raise ValueError("LoRA weights are fused into the model: call unfuse_lora() before changing adapters")
        state["weights"] = {n: float(w) for n, w in zip(names, weights)}
        state["last_weights"].update(state["weights"])
        self._apply_adapter_weights()

    def disable_lora(self) -> None:
        """No adapter active (all stay loaded); ``set_adapters`` turns them on again."""
        self.set_adapters([])

    def _apply_adapter_weights(self) -> None:
        weights = self._lora_state()["weights"]
        for model in self._lora_models().values():
            for layer in tuner_layers(model):
                active = [n for n in weights if n in layer.lora_A]
                layer.set_adapter(active)
                for name in active:
                    layer.set_scale(name, weights[name])
                for parameter in layer.parameters():
                    parameter.requires_grad_(False)

    @_exclusive
    def fuse_lora(
        self,
        components: list[str] | tuple[str, ...] = COMPONENTS,
        lora_scale: float = 1.0,
        adapter_names: list[str] | None = None,
    ) -> None:
        """Add the active adapters' updates (or those of ``adapter_names``), each times the weight it was last
        given (as in the reference library) and ``lora_scale``, into the layers' own weights: no extra cost per
        step. ``unfuse_lora`` restores the original weights bit for bit (their copies are kept meanwhile: memory of
        the layers the adapters touch)."""
        state = self._lora_state()
        if state["fused"]:
            raise ValueError("LoRA weights are fused already: unfuse_lora() first")
        names = list(state["weights"]) if adapter_names is None else list(adapter_names)
        for name in names:
            if name not in state["loaded"]:
                raise ValueError(f"no adapter {name!r} loaded; loaded: {', '.join(state['loaded']) or 'none'}")
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown:
            raise ValueError(f"components must be among {', '.join(COMPONENTS)}, got {', '.join(unknown)}")
        models = self._lora_models()
        for component in components:
            if component not in models:
                continue
            for layer in tuner_layers(models[component]):
                present = [n for n in names if n in layer.lora_A]
                if not present:
                    continue
                base = layer.get_base_layer()
                state["fused"][id(layer)] = (layer, base.weight.detach().clone())
                scales = {n: layer.scaling[n] for n in present}
                for name in present:
                    weight = state["last_weights"].get(name, 1.0)
                    layer.set_scale(name, weight * lora_scale)
                layer.merge(adapter_names=present)
                layer.scaling.update(scales)
                _mark_changed(base.weight)
        state["fused_with"] = {"adapters": names, "lora_scale": lora_scale}

    @_exclusive
    def unfuse_lora(self) -> None:
        """Put back the weights the layers had before ``fuse_lora``, exactly."""
        state = self._lora_state()
        with torch.no_grad():
            for layer, original in state["fused"].values():
                layer.unmerge()
                layer.get_base_layer().weight.copy_(original)
        state["fused"] = {}
        state["fused_with"] = {}

    @_exclusive
    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        """Remove these adapters from the model (their layers are freed)."""
        state = self._lora_state()
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for name in names:
            if name not in state["loaded"]:
                raise ValueError(f"no adapter {name!r} loaded; loaded: {', '.join(state['loaded']) or 'none'}")
        if state["fused"]:
            raise ValueError("LoRA weights are fused into the model: call unfuse_lora() before deleting adapters")
        for name in names:
            for model in self._lora_models().values():
                remove_adapter(model, name)
            state["loaded"].pop(name)
            state["weights"].pop(name, None)
            state["last_weights"].pop(name, None)
        self._apply_adapter_weights()

    @_exclusive
    def unload_lora_weights(self) -> None:
        """Remove every adapter. Fused updates stay in the weights (as in the reference library): call
        ``unfuse_lora()`` first to get the original weights back."""
        state = self._lora_state()
        fused = state["fused"]
        state["fused"] = {}
        if fused:
            for layer, _ in fused.values():
                layer.merged_adapters.clear()  # keep the merged weights; the adapters go
        for name in list(state["loaded"]):
            for model in self._lora_models().values():
                remove_adapter(model, name)
        state["loaded"].clear()
        state["weights"].clear()
        state["last_weights"].clear()
        state["fused_with"] = {}

    def loaded_loras(self) -> dict[str, LoadedLora]:
        return dict(self._lora_state()["loaded"])

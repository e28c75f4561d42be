"""The OpenVINO backend: a pipeline's UNet, VAE decoder and text encoder run as compiled OpenVINO models.

Each model keeps its torch module (config, dtype, device, the pipeline's code around it); only its forward is
replaced by the compiled graph, with the same contract (docs/architecture.md). Samplers, guidance, seeds, chunking,
tiling and PNG metadata are the pipeline's own Python and work unchanged.

The UNet is one graph, or (``granularity="layers"``) one graph per layer: conv_in, the time embedding, every
resnet, transformer, down- and upsampler, and the output head, with the UNet's and its blocks' own Python between
them, so inference hooks on blocks and layers (the step caches) run around compiled layers as on eager models.
What a graph cannot contain (attention add-ons, hooks inside a compiled graph, ``cross_attention_kwargs``) is
refused by name before any denoising, never skipped.
"""

from __future__ import annotations

import functools
import threading
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import openvino as ov
import torch
from difframe.errors import ConfigError, UnavailableError
from difframe.inference_hooks import hooks_on, replace_forward
from torch import nn

from .convert import Graph, Startup, compile_module, default_cache_dir

Precision = Literal["auto", "f32", "bf16"]
Granularity = Literal["auto", "whole", "layers"]
GRANULARITIES = ("auto", "whole", "layers")
COMPONENTS = ("unet", "vae", "text_encoder")


@functools.cache
def cpu_capabilities() -> frozenset[str]:
    return frozenset(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVINOBackend:
    """``build(..., backend="openvino", backend_options={...})``.

    precision: "f32" (images within 1e-3 of eager float32), "bf16" (about 2-4x faster where the CPU computes bf16 in
    hardware: AMX or AVX-512 bf16), or "auto" (bf16 where the CPU has it, else f32).
    cache_dir: where converted and compiled models are kept (default ~/.cache/difframe/openvino, or
    $DIFFRAME_CACHE/openvino); ``False`` converts every time and writes nothing.
    components: which of "unet", "vae" (its decoder), "text_encoder" to convert; the others stay eager.
    num_threads: CPU threads OpenVINO uses (default: its own choice, all cores).
    granularity: how the UNet is compiled. "whole": one graph, which runs no inference hook inside the UNet. "layers":
    one graph per layer, with the UNet's and its blocks' Python between them, so hooks on blocks and layers run
    (DeepCache, first-block cache); hooks inside a layer (token merging, perturbed attention) are refused by name.
    "auto" (default): "layers" when the UNet has inference hooks, else "whole"; a hook added after the build makes
    the next call convert the layers (from the disk cache when they were converted before) and keep them.
    """

    def __init__(
        self,
        precision: Precision = "auto",
        cache_dir: str | Path | bool | None = None,
        components: tuple[str, ...] | list[str] = COMPONENTS,
        num_threads: int | None = None,
        granularity: Granularity = "auto",
    ) -> None:
        if granularity not in GRANULARITIES:
            raise ConfigError(f"openvino granularity must be 'auto', 'whole' or 'layers', got {granularity!r}")
        if precision not in ("auto", "f32", "bf16"):
            raise ConfigError(f"openvino precision must be 'auto', 'f32' or 'bf16', got {precision!r}")
        has_bf16 = "BF16" in cpu_capabilities()
        if precision == "bf16" and not has_bf16:
            raise UnavailableError(
                "openvino precision 'bf16' needs a CPU that computes bfloat16 in hardware (AMX or AVX-512 bf16); this "
                f"CPU offers {', '.join(sorted(cpu_capabilities()))}. Use precision='f32' (or 'auto')."
            )
        if isinstance(components, str):  # "unet,vae" from the command line
            components = tuple(part.strip() for part in components.split(",") if part.strip())
        unknown = set(components) - set(COMPONENTS)
        if unknown or not components:
            raise ConfigError(f"openvino components must be a non-empty subset of {COMPONENTS}, got {components!r}")
        self.precision = ("bf16" if has_bf16 else "f32") if precision == "auto" else precision
        self.cache_dir = None if cache_dir is False else Path(cache_dir) if cache_dir not in (None, True) else None
        if cache_dir in (None, True):
            self.cache_dir = default_cache_dir()
        self.components = tuple(components)
        self.config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if num_threads is not None:
            self.config["INFERENCE_NUM_THREADS"] = str(int(num_threads))
        self.granularity = granularity
        self.unet_granularity: Literal["whole", "layers"] | None = None  # what the UNet runs as, once applied
        self.startup: list[Startup] = []
        self._switching = threading.Lock()

    # --- applying ---------------------------------------------------------------------------------------------------
    def apply(self, pipeline: Any) -> None:
        core = ov.Core()
        models = {name: getattr(pipeline, name, None) for name in self.components}
        for name, module in models.items():
            if module is not None and not isinstance(module, nn.Module):
                raise ConfigError(f"the openvino backend converts torch models; {name} is a {type(module).__name__}")
            if isinstance(module, nn.Module) and name == "vae":
                _check_runnable(module, name)
        unet = models.get("unet")
        if isinstance(unet, nn.Module):  # decided and checked before anything is converted
            self.unet_granularity = self._unet_granularity(unet)
            _check_runnable(unet, "unet", _layer_names(unet) if self.unet_granularity == "layers" else None)
        for name, module in models.items():
            if isinstance(module, nn.Module) and name != "text_encoder":
                _unpack_convolutions(module)
        if isinstance(unet, nn.Module):
            if self.unet_granularity == "layers":
                self._apply_unet_layers(core, unet)
            else:
                self._apply_unet(core, unet)
        if isinstance(models.get("vae"), nn.Module) and isinstance(getattr(models["vae"], "decoder", None), nn.Module):
            self._apply_vae_decoder(core, models["vae"].decoder)
        encoder = models.get("text_encoder")
        if isinstance(encoder, nn.Module) and not getattr(encoder.config, "use_attention_mask", False):
            self._apply_text_encoder(core, encoder)

    def _unet_granularity(self, unet: nn.Module) -> Literal["whole", "layers"]:
        hooked = _hooked_modules(unet)
        if self.granularity == "layers" or (self.granularity == "auto" and hooked):
            _check_layered_layout(unet)
            return "layers"
        if hooked:
            raise ConfigError(_whole_refusal(hooked))
        return "whole"

    def _compile(
        self, core: ov.Core, module: nn.Module, label: str, example: tuple, dynamic: tuple, extra: dict | None = None
    ) -> Graph:
        compiled, startup = compile_module(
            core,
            module,
            label=label,
            example=example,
            dynamic=dynamic,
            config=self.config,
            cache_dir=self.cache_dir,
            extra=extra,
        )
        self.startup.append(startup)
        graph = Graph(compiled, startup)
        graph.weights = weights_fingerprint(module)
        return graph

    def _apply_unet(self, core: ov.Core, unet: nn.Module) -> None:
        config = unet.config
        context_dim = config.cross_attention_dim
        context_dim = context_dim if isinstance(context_dim, int) else context_dim[0]
        factor = 2 ** int(getattr(unet, "num_upsamplers", 3))
        example = (
            torch.randn(2, config.in_channels, factor * 2, factor * 3),
            torch.tensor([999.0, 999.0]),
            torch.randn(2, 77, context_dim),
        )
        batch = (0, "batch", 1)
        dynamic = (
            (batch, (2, "latent_height", factor), (3, "latent_width", factor)),
            (batch,),
            (batch, (1, "tokens", 1)),
        )
        graph = self._compile(core, _UNetGraph(unet).eval(), "unet", example, dynamic)
        unet.forward = types.MethodType(_unet_forward(graph, self), unet)

    def _apply_unet_layers(self, core: ov.Core, unet: nn.Module) -> None:
        """One graph per layer (see ``_layer_names``), each under the inference hooks already wrapping it."""
        for name, module in unet.named_modules():
            kind = _LAYER_KINDS.get(_layer_kind(name, module))
            if kind is None:
                continue
            example, dynamic, forward = kind(module)
            call = (_LayerGraph if len(example) == 1 else _TwoInputLayerGraph)(module).eval()
            extra = {"layer": f"{type(module).__module__}.{type(module).__qualname__}"}
            graph = self._compile(core, call, f"unet.{name}", example, dynamic, extra)
            replace_forward(module, forward(graph, f"unet.{name}"))
        weights = weights_fingerprint(unet)
        unet.forward = types.MethodType(_layered_unet_forward(weights), unet)
        self.unet_granularity = "layers"

    def switch_to_layers(self, unet: nn.Module) -> None:
        """granularity="auto", hooks added after the build: convert the layers now (the first call that sees them)."""
        with self._switching:
            if self.unet_granularity == "layers":
                return
            _check_layered_layout(unet)
            _check_runnable(unet, "unet", _layer_names(unet))
            self._apply_unet_layers(ov.Core(), unet)  # then the UNet's own Python runs, around the layers

    def _apply_vae_decoder(self, core: ov.Core, decoder: nn.Module) -> None:
        channels = _input_channels(decoder)
        dynamic = (((0, "batch", 1), (2, "latent_height", 1), (3, "latent_width", 1)),)
        graph = self._compile(core, decoder.eval(), "vae.decoder", (torch.randn(2, channels, 8, 12),), dynamic)

        def forward(self: nn.Module, z: torch.Tensor) -> torch.Tensor:
            _check_current(self, graph.weights, "vae.decoder")
            return graph(z.float())[0].to(z.dtype)

        decoder.forward = types.MethodType(forward, decoder)

    def _apply_text_encoder(self, core: ov.Core, encoder: nn.Module) -> None:
        length = int(getattr(encoder.config, "max_position_embeddings", 77))
        example = (torch.zeros(2, length, dtype=torch.long),)  # CLIP reads its prompts 77 tokens at a time
        graph = self._compile(core, _TextGraph(encoder).eval(), "text_encoder", example, (((0, "batch", 1),),))
        encoder.forward = types.MethodType(_text_forward(graph), encoder)


# --- the wrappers that are converted ---------------------------------------------------------------------------------
class _UNetGraph(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, context)


class _LayerGraph(nn.Module):
    """One layer of one tensor input converted on its own: its class's forward, never the instance's (a hook's
    wrapper or a compiled graph)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self.layer).forward(self.layer, x)


class _TwoInputLayerGraph(_LayerGraph):
    """A resnet (features, SiLU of the time embedding) or a transformer (features, text embeddings; no mask)."""

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        layer = self.layer
        if type(layer).__name__ == "Transformer2DModel":
            return type(layer).forward(layer, x, other, None, {})
        return type(layer).forward(layer, x, other)


class _TextGraph(nn.Module):
    """Every hidden state comes out (stacked), so clip skip works on the compiled encoder too."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.encoder(input_ids, output_hidden_states=True, return_dict=True)
        return out.last_hidden_state, out.pooler_output, torch.stack(out.hidden_states)


# --- the forwards that replace the modules' own ---------------------------------------------------------------------
def _refuse_unet_inputs(
    cross_attention_kwargs: Mapping[str, Any] | None, attention_mask: torch.Tensor | None, timestep_cond: Any
) -> None:
    refused = [
        name
        for name, value in (
            ("cross_attention_kwargs", cross_attention_kwargs),
            ("attention_mask", attention_mask),
            ("timestep_cond", timestep_cond),
        )
        if value is not None and not (isinstance(value, Mapping) and not value)
    ]
    if refused:
        raise ConfigError(
            f"the openvino backend's compiled UNet takes no {', '.join(refused)}; build without "
            "backend='openvino' to use them"
        )


def _unet_entry(run: Callable[[nn.Module, torch.Tensor, Any, torch.Tensor], torch.Tensor]) -> Any:
    """A forward with the UNet's signature: refuses what no compiled UNet takes, then ``run``s."""

    def forward(
        self: nn.Module,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        *,
        cross_attention_kwargs: Mapping[str, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _refuse_unet_inputs(cross_attention_kwargs, attention_mask, timestep_cond)
        return run(self, sample, timestep, encoder_hidden_states)

    return forward


def _unet_forward(graph: Graph, backend: OpenVINOBackend) -> Any:
    def run(self: nn.Module, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        hooked = _hooked_modules(self)
        if hooked:  # added after the build (pipe.add_hook)
            if backend.granularity != "auto":
                raise ConfigError(_whole_refusal(hooked))
            backend.switch_to_layers(self)
            return self.forward(sample, timestep, encoder_hidden_states)
        _check_current(self, graph.weights, "unet")
        batch = sample.shape[0]
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep])
        t = t.reshape(-1).float()
        t = t.expand(batch) if t.numel() == 1 else t
        if t.shape != (batch,):
            raise ValueError(f"timestep must be one value or one per sample ({batch}), got shape {tuple(t.shape)}")
        out = graph(sample.float(), t, encoder_hidden_states.float())[0]
        return out.to(device=sample.device, dtype=sample.dtype)

    return _unet_entry(run)


def _layered_unet_forward(weights: int) -> Any:
    """The UNet's own forward (and its blocks'), whose layers are compiled graphs, after the whole-UNet checks."""

    def run(self: nn.Module, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        _check_current(self, weights, "unet", layers=_layer_names(self))
        smallest = DOWNSAMPLER_MIN * 2 ** max(int(self.num_upsamplers) - 1, 0)  # the last downsampler's input
        if self.num_upsamplers and min(sample.shape[2:]) < smallest:
            raise ConfigError(
                f"the openvino backend's per-layer UNet (granularity 'layers', which inference hooks need) takes "
                f"latents of at least {smallest}x{smallest} (its last downsampler compiles for inputs of "
                f"{DOWNSAMPLER_MIN} and more), got {tuple(sample.shape[2:])}; use a larger image, or no hooks and "
                "granularity='whole'"
            )
        return type(self).forward(self, sample, timestep, encoder_hidden_states)

    return _unet_entry(run)


def _layer_forward(graph: Graph, label: str, tensors: int) -> Any:
    """A layer's forward: its first ``tensors`` arguments go to the graph; the others must be empty (None, {})."""

    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        rest = [*args[tensors:], *kwargs.values()]
        if any(value is not None and not (isinstance(value, Mapping) and not value) for value in rest):
            raise ConfigError(
                f"the openvino backend's compiled layer {label} takes only its {tensors} tensor input(s), not a mask, "
                "a condition or attention options; build without backend='openvino' to use them"
            )
        inputs = args[:tensors]
        return graph(*(t.float() for t in inputs))[0].to(inputs[0].dtype)

    return forward


# --- the layers of granularity="layers" -----------------------------------------------------------------------------
# An example input (batch 2, 4x6 latents, 77 tokens) and the free axes of each kind of layer; the graphs take any.
_BATCH = (0, "batch", 1)
_IMAGE = (_BATCH, (2, "height", 1), (3, "width", 1))
# a strided convolution's output of size 1 is specialised by torch.export: its graph takes inputs of 3 and more
DOWNSAMPLER_MIN = 3
_DOWNSAMPLER_IMAGE = (_BATCH, (2, "height", 1, DOWNSAMPLER_MIN), (3, "width", 1, DOWNSAMPLER_MIN))
LayerKind = Any  # module -> (example inputs, dynamic axes, forward factory)


def _image(channels: int) -> torch.Tensor:
    return torch.randn(2, channels, 4, 6)


def _one_image(module: nn.Module, channels: int, dynamic: tuple = _IMAGE) -> tuple:
    return (_image(channels),), (dynamic,), lambda graph, label: _layer_forward(graph, label, 1)


_LAYER_KINDS: dict[str, LayerKind] = {
    "conv": lambda m: _one_image(m, m.in_channels),
    "norm": lambda m: _one_image(m, m.num_channels),
    "Downsample2D": lambda m: _one_image(m, m.conv.in_channels, _DOWNSAMPLER_IMAGE),
    "Upsample2D": lambda m: _one_image(m, m.conv.in_channels),
    "time": lambda m: (
        (torch.randn(2, m.linear_1.in_features),),
        ((_BATCH,),),
        lambda graph, label: _layer_forward(graph, label, 1),
    ),
    "ResnetBlock2D": lambda m: (
        (_image(m.norm1.num_channels), torch.randn(2, m.time_emb_proj.in_features)),
        (_IMAGE, (_BATCH,)),
        lambda graph, label: _layer_forward(graph, label, 2),
    ),
    "Transformer2DModel": lambda m: (
        (_image(m.norm.num_channels), torch.randn(2, 77, m.transformer_blocks[0].attn2.to_k.in_features)),
        (_IMAGE, (_BATCH, (1, "tokens", 1))),
        lambda graph, label: _layer_forward(graph, label, 2),
    ),
}
_NAMED_KINDS = {"conv_in": "conv", "conv_out": "conv", "conv_norm_out": "norm", "time_embedding": "time"}


def _layer_kind(name: str, module: nn.Module) -> str | None:
    """Which compiled layer ``name`` is (a key of _LAYER_KINDS), or None when it runs as Python or inside a layer."""
    if "." not in name:
        return _NAMED_KINDS.get(name)
    kind = type(module).__name__
    return kind if kind in ("ResnetBlock2D", "Transformer2DModel", "Downsample2D", "Upsample2D") else None


def _layer_names(unet: nn.Module) -> set[str]:
    return {name for name, module in unet.named_modules() if name and _layer_kind(name, module) is not None}


def _check_layered_layout(unet: nn.Module) -> None:
    from difframe_sd_unet.unet import UNet2DConditionModel

    if not isinstance(unet, UNet2DConditionModel):
        raise ConfigError(
            f"the openvino backend compiles layer by layer (granularity 'layers', which inference hooks need) only "
            f"difframe's sd-unet UNet, not {type(unet).__module__}.{type(unet).__qualname__}; remove the hooks and "
            "use granularity='whole', or build without backend='openvino'"
        )


def _text_forward(graph: Graph) -> Any:
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    def forward(
        self: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        if attention_mask is not None and not bool((attention_mask == 1).all()):
            raise ConfigError("the openvino backend's compiled text encoder takes no padding attention mask")
        unexpected = sorted(k for k, v in kwargs.items() if v is not None)
        if unexpected:
            raise ConfigError(f"the openvino backend's compiled text encoder takes no {', '.join(unexpected)}")
        _check_current(self, graph.weights, "text_encoder", inner_hooks=False)
        last, pooled, states = graph(input_ids.long())
        dtype = self.dtype
        return BaseModelOutputWithPooling(
            last_hidden_state=last.to(dtype),
            pooler_output=pooled.to(dtype),
            hidden_states=tuple(states.to(dtype).unbind(0)) if output_hidden_states else None,
        )

    return forward


# --- checks ----------------------------------------------------------------------------------------------------------
def _check_runnable(module: nn.Module, label: str, layers: set[str] | None = None) -> None:
    """Refuse, by name, what a compiled graph would silently leave out: attention add-ons, and forward hooks and
    inference hooks inside a graph: anywhere below ``module`` (one graph), or inside one of ``layers`` (a graph each;
    hooks on the layers themselves and on the Python around them run)."""
    found = []
    for name, sub in module.named_modules():
        if getattr(sub, "addon", None) is not None:
            found.append(f"the attention add-on {type(sub.addon).__name__} on {label}.{name}")
        if sub is module:
            continue
        if layers is not None:
            parts = name.split(".")
            inside = next((p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in layers), None)
            if inside is None:
                continue
            where = f"{label}.{name} (inside the compiled layer {label}.{inside})"
        else:
            where = f"{label}.{name}"
        if sub._forward_hooks or sub._forward_pre_hooks:
            found.append(f"a forward hook on {where}")
        found += [f"the inference hook {_hook_label(hook)!r} on {where}" for hook in hooks_on(sub)]
    if found:
        what = "a compiled graph" if layers is None else "compiled graphs, one per layer (granularity 'layers')"
        raise ConfigError(
            f"the openvino backend runs {label} as {what}, which would skip {'; '.join(found[:3])}"
            + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")
            + ". Remove them (pipe.remove_hook(name) for an inference hook), or build without backend='openvino' "
            "(the eager backend runs every hook)."
        )


def _hook_label(hook: Any) -> str:
    return hook.name or type(hook).__name__


def _hooked_modules(unet: nn.Module) -> list[tuple[str, list[Any]]]:
    """(module name, its inference hooks) for every module of ``unet`` that inference hooks wrap."""
    return [(name, hooks) for name, sub in unet.named_modules() if (hooks := hooks_on(sub))]


def _whole_refusal(hooked: list[tuple[str, list[Any]]]) -> str:
    names = sorted({_hook_label(hook) for _, hooks in hooked for hook in hooks})
    where = ", ".join(f"unet.{name}" for name, _ in hooked[:3]) + (" ..." if len(hooked) > 3 else "")
    return (
        f"the openvino backend was built with granularity='whole' (the UNet as one compiled graph), which would skip "
        f"the inference hook(s) {', '.join(map(repr, names))} on {where}. Build with "
        "backend_options={'granularity': 'layers'} (or 'auto', the default) to run them around compiled layers, or "
        "remove them."
    )


def weights_fingerprint(module: nn.Module) -> int:
    """Changes when a parameter is replaced or changed in place (a LoRA merged in, load_state_dict)."""
    return hash(tuple((p.data_ptr(), p._version) for p in module.parameters()))


def _check_current(
    module: nn.Module, weights: int, label: str, inner_hooks: bool = True, layers: set[str] | None = None
) -> None:
    """The compiled graph holds the weights of conversion time: refuse to run once the module's have changed.

    ``inner_hooks=False`` for transformers' models, whose layers carry transformers' own hooks (they record the
    hidden states that the compiled text encoder returns anyway)."""
    if inner_hooks:
        _check_runnable(module, label, layers)
    if weights_fingerprint(module) != weights:
        raise ConfigError(
            f"the weights of {label} changed after the openvino backend converted it (a LoRA, load_state_dict, a "
            "new module); its compiled graph would ignore them. Build the pipeline again with the changed weights "
            "(the disk cache keys on the weights, so the new ones are converted)."
        )


def _unpack_convolutions(module: nn.Module) -> None:
    """Prepacked (oneDNN) convolutions are a torch-only speedup; the graph converts plain convolutions."""
    from difframe.prepacking import prepack_convolutions, uses_prepacked_convolutions

    if uses_prepacked_convolutions(module):
        prepack_convolutions(module, False)


def _input_channels(module: nn.Module) -> int:
    first = next(m for m in module.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels

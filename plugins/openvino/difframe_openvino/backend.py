"""The OpenVINO backend: a pipeline's UNet, VAE decoder and text encoder run as compiled OpenVINO models.

Each model keeps its torch module (config, dtype, device, the pipeline's code around it); only its forward is
replaced by the compiled graph, with the same contract (docs/architecture.md). Samplers, guidance, seeds, chunking,
tiling and PNG metadata are the pipeline's own Python and work unchanged. What the graph cannot contain (attention
add-ons, forward hooks inside the model, ``cross_attention_kwargs``) is refused at call time by name, never skipped.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import openvino as ov
import torch
from difframe.errors import ConfigError, UnavailableError
from torch import nn

from .convert import Graph, Startup, compile_module, default_cache_dir

Precision = Literal["auto", "f32", "bf16"]
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
    """

    def __init__(
        self,
        precision: Precision = "auto",
        cache_dir: str | Path | bool | None = None,
        components: tuple[str, ...] | list[str] = COMPONENTS,
        num_threads: int | None = None,
    ) -> None:
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
        self.startup: list[Startup] = []

    # --- applying ---------------------------------------------------------------------------------------------------
    def apply(self, pipeline: Any) -> None:
        core = ov.Core()
        models = {name: getattr(pipeline, name, None) for name in self.components}
        for name, module in models.items():
            if module is not None and not isinstance(module, nn.Module):
                raise ConfigError(f"the openvino backend converts torch models; {name} is a {type(module).__name__}")
            if isinstance(module, nn.Module) and name != "text_encoder":
                _check_runnable(module, name)
                _unpack_convolutions(module)
        if isinstance(models.get("unet"), nn.Module):
            self._apply_unet(core, models["unet"])
        if isinstance(models.get("vae"), nn.Module) and isinstance(getattr(models["vae"], "decoder", None), nn.Module):
            self._apply_vae_decoder(core, models["vae"].decoder)
        encoder = models.get("text_encoder")
        if isinstance(encoder, nn.Module) and not getattr(encoder.config, "use_attention_mask", False):
            self._apply_text_encoder(core, encoder)

    def _compile(self, core: ov.Core, module: nn.Module, label: str, example: tuple, dynamic: tuple) -> Graph:
        compiled, startup = compile_module(
            core, module, label=label, example=example, dynamic=dynamic, config=self.config, cache_dir=self.cache_dir
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
        unet.forward = types.MethodType(_unet_forward(graph), unet)

    def _apply_vae_decoder(self, core: ov.Core, decoder: nn.Module) -> None:
        channels = _input_channels(decoder)
        dynamic = (((0, "batch", 1), (2, "latent_height", 1), (3, "latent_width", 1)),)
        graph = self._compile(core, decoder.eval(), "vae.decoder", (torch.randn(2, channels, 8, 12),), dynamic)

        def forward(self: nn.Module, z: torch.Tensor) -> torch.Tensor:
            _check_current(self, graph, "vae.decoder")
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


class _TextGraph(nn.Module):
    """Every hidden state comes out (stacked), so clip skip works on the compiled encoder too."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.encoder(input_ids, output_hidden_states=True, return_dict=True)
        return out.last_hidden_state, out.pooler_output, torch.stack(out.hidden_states)


# --- the forwards that replace the modules' own ---------------------------------------------------------------------
def _unet_forward(graph: Graph) -> Any:
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
        _check_current(self, graph, "unet")
        batch = sample.shape[0]
        t = timestep if torch.is_tensor(timestep) else torch.tensor([timestep])
        t = t.reshape(-1).float()
        t = t.expand(batch) if t.numel() == 1 else t
        if t.shape != (batch,):
            raise ValueError(f"timestep must be one value or one per sample ({batch}), got shape {tuple(t.shape)}")
        out = graph(sample.float(), t, encoder_hidden_states.float())[0]
        return out.to(device=sample.device, dtype=sample.dtype)

    return forward


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
        _check_current(self, graph, "text_encoder", inner_hooks=False)
        last, pooled, states = graph(input_ids.long())
        dtype = self.dtype
        return BaseModelOutputWithPooling(
            last_hidden_state=last.to(dtype),
            pooler_output=pooled.to(dtype),
            hidden_states=tuple(states.to(dtype).unbind(0)) if output_hidden_states else None,
        )

    return forward


# --- checks ----------------------------------------------------------------------------------------------------------
def _check_runnable(module: nn.Module, label: str) -> None:
    """Refuse, by name, what a compiled graph would silently leave out: attention add-ons and inner forward hooks."""
    found = []
    for name, sub in module.named_modules():
        if getattr(sub, "addon", None) is not None:
            found.append(f"the attention add-on {type(sub.addon).__name__} on {label}.{name}")
        if sub is not module and (sub._forward_hooks or sub._forward_pre_hooks):
            found.append(f"a forward hook on {label}.{name}")
    if found:
        raise ConfigError(
            f"the openvino backend runs {label} as a compiled graph, which would skip {'; '.join(found[:3])}"
            + (f" (and {len(found) - 3} more)" if len(found) > 3 else "")
            + ". Remove them, or build without backend='openvino'."
        )


def weights_fingerprint(module: nn.Module) -> int:
    """Changes when a parameter is replaced or changed in place (a LoRA merged in, load_state_dict)."""
    return hash(tuple((p.data_ptr(), p._version) for p in module.parameters()))


def _check_current(module: nn.Module, graph: Graph, label: str, inner_hooks: bool = True) -> None:
    """The compiled graph holds the weights of conversion time: refuse to run once the module's have changed.

    ``inner_hooks=False`` for transformers' models, whose layers carry transformers' own hooks (they record the
    hidden states that the compiled text encoder returns anyway)."""
    if inner_hooks:
        _check_runnable(module, label)
    if weights_fingerprint(module) != graph.weights:
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

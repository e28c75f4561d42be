"""Single-file checkpoints: the original (CompVis/LDM) layout of Stable Diffusion 1.x / 2.x and their inpainting
variants, as the web UIs and model sites share them (one .safetensors; .ckpt only with ``allow_pickle``).

Loading reads the file's header first, decides the architecture from the keys and shapes (or from ``config``: a
model folder or a family name), checks every key and shape, and only then takes the tensors: memory-mapped, renamed
without copying (the OpenCLIP text encoder's fused q/k/v is split into three views of the same tensor). Nothing the
models do not use is read; it is kept, memory-mapped, so ``save_single_file`` writes it back.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from difframe.errors import ModelLoadError
from difframe.modeling import parameters_on_meta

from .ldm_layout import (
    CLIP_PREFIX,
    OPENCLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    LayoutError,
    Source,
    text_table,
    unet_table,
    vae_table,
)
from .safetensors_writer import write_safetensors

logger = logging.getLogger("difframe.single_file")

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
V_PREDICTION_MARKER = "v_pred"  # an empty tensor some tools (ComfyUI) add to v-prediction checkpoints
SD_SCHEDULE = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "timestep_spacing": "leading",  # as the SD 1.x / 2.x releases' scheduler configs (via the PNDM/DDIM default)
}
PART_PREFIXES = {"unet": (UNET_PREFIX,), "vae": (VAE_PREFIX,), "text_encoder": (CLIP_PREFIX, OPENCLIP_PREFIX)}
BUILT_IN_TOKENIZER = "difframe_shapes_model:difframe-shapes/tokenizer"  # the full CLIP vocabulary, shipped offline


@dataclass(frozen=True)
class Family:
    title: str
    context_dim: int  # the text encoder's width: 768 (OpenAI CLIP ViT-L) or 1024 (OpenCLIP ViT-H)
    in_channels: int  # 4, or 9 for inpainting (latents, mask, masked-image latents)
    prediction_type: str
    sample_size: int  # latent side: 64 (512 px) or 96 (768 px)
    scheduler: str  # the sampler the family's original release ships with


FAMILIES = {
    "sd1": Family("Stable Diffusion 1.x", 768, 4, "epsilon", 64, "pndm"),
    "sd1-inpainting": Family("Stable Diffusion 1.x inpainting", 768, 9, "epsilon", 64, "pndm"),
    "sd2-base": Family("Stable Diffusion 2.x base (512 px, epsilon)", 1024, 4, "epsilon", 64, "ddim"),
    "sd2-v": Family("Stable Diffusion 2.x (768 px, v-prediction)", 1024, 4, "v_prediction", 96, "ddim"),
    "sd2-inpainting": Family("Stable Diffusion 2.x inpainting", 1024, 9, "epsilon", 64, "ddim"),
}
ONLY_SD12 = "this version runs Stable Diffusion 1.x and 2.x (and their inpainting models) only"
UNSUPPORTED = (  # (key pattern, what the file is, what to do instead)
    (r"conditioner\.embedders\.", "an SDXL checkpoint", ONLY_SD12),
    (r"(model\.diffusion_model\.)?joint_blocks\.|text_encoders\.", "a Stable Diffusion 3 checkpoint", ONLY_SD12),
    (r"(model\.diffusion_model\.)?double_blocks\.", "a FLUX checkpoint", ONLY_SD12),
    (r"lora_(unet|te)_|.*\.lora_(down|up|A|B)\.", "a LoRA", "load it onto a pipeline as a LoRA, not as a model"),
    (r"(emb_params|string_to_param|clip_[lg])$", "a textual inversion embedding", "load it as an embedding"),
    (r"control_model\.|input_hint_block\.", "a ControlNet", "ControlNets are not supported yet"),
    (r"model\.diffusion_model\.label_emb\.", "an SD 2.x upscaler or unCLIP checkpoint", ONLY_SD12),
)


@dataclass
class SingleFileInfo:
    """What a pipeline loaded from a single file knows about it: ``pipe.single_file``."""

    path: Path
    architecture: str  # a family name, or "config:<folder>"
    description: str
    inferred: bool  # decided from the keys and shapes (not named by the caller)
    text_layout: str | None  # "clip" (transformers names), "clip-flat" (no text_model.), "openclip"; None: not in file
    assumptions: list[str] = field(default_factory=list)
    unused: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # written back by save_single_file


# --- reading ----------------------------------------------------------------------------------------------------
class CheckpointFile:
    """The tensors of a single-file checkpoint: names and shapes from the header, tensors memory-mapped on demand."""

    def __init__(self, path: Path, allow_pickle: bool) -> None:
        self.path = path
        self.extra: dict[str, Any] = {}  # non-tensor entries of a .ckpt (global_step)
        if path.suffix == ".safetensors":
            self.tensors = _open_safetensors(path)
        elif path.suffix in PICKLE_SUFFIXES:
            if not allow_pickle:
                raise ModelLoadError(
                    f"{path} is a pickle ({path.suffix}). Pickles can run code when loaded: use the .safetensors "
                    "version of this model, or pass allow_pickle=True (CLI: --allow-pickle) to read it with torch's "
                    "weights-only loader, which refuses anything but tensors."
                )
            self.tensors, self.extra = _open_pickle(path)
        else:
            raise ModelLoadError(
                f"{path}: unknown checkpoint type {path.suffix!r}; single-file checkpoints are .safetensors (or "
                ".ckpt with allow_pickle=True)"
            )
        self.shapes = {key: tuple(tensor.shape) for key, tensor in self.tensors.items()}

    def has(self, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self.shapes)


def _open_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")  # memory-mapped: no byte is read until a tensor is used
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(
            f"{path} is not a readable .safetensors file ({error}); it may be damaged or truncated, or another kind "
            "of file under that name: download it again"
        ) from None


def _open_pickle(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import pickle

    try:
        try:
            content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # the legacy (pre-zip) format cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelLoadError(
            f"refused to load {path}: the pickle holds objects other than tensors, which could run code "
            f"({str(error).splitlines()[-1].strip()}). Convert it to safetensors where you trust it."
        ) from None
    except (RuntimeError, OSError, EOFError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}. The file is damaged or not a checkpoint.") from None
    if not isinstance(content, dict):
        raise ModelLoadError(f"{path} holds a {type(content).__name__}, not a checkpoint (a dict of tensors)")
    state = content.get("state_dict", content)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    extra = {k: v for k, v in content.items() if k != "state_dict" and not isinstance(v, (torch.Tensor, dict))}
    return tensors, extra


# --- what the file is -------------------------------------------------------------------------------------------
def check_supported(file: CheckpointFile) -> None:
    """Refuse, by name, what is not a Stable Diffusion 1.x / 2.x checkpoint, before any tensor is read."""
    keys = list(file.shapes)
    for pattern, what, advice in UNSUPPORTED:
        if any(re.match(pattern, key) for key in keys):
            raise ModelLoadError(f"{file.path} is {what}, not a Stable Diffusion 1.x / 2.x checkpoint: {advice}")
    if file.has(UNET_PREFIX):
        return
    first = ", ".join(keys[:5]) or "no tensors at all"
    if 0 < len(keys) <= 2 and all(shape and shape[-1] in (768, 1024) for shape in file.shapes.values()):
        raise ModelLoadError(
            f"{file.path} looks like a textual inversion embedding (keys {first}), not a checkpoint: load it as an "
            "embedding"
        )
    if any(key.startswith(("down_blocks.", "encoder.down_blocks.", "text_model.", "encoder.layers.")) for key in keys):
        raise ModelLoadError(
            f"{file.path} holds one model in the folder layout (keys {first}), not a whole checkpoint: put it in a "
            "model folder with its config.json, or pass the model to the pipeline as a component"
        )
    raise ModelLoadError(
        f"{file.path} is not a Stable Diffusion checkpoint: it has no {UNET_PREFIX}* keys (its first keys: {first})"
    )


def _unet_shape(file: CheckpointFile, name: str) -> tuple[int, ...] | None:
    return file.shapes.get(UNET_PREFIX + name)


def detect_family(file: CheckpointFile) -> tuple[str, list[str]]:
    """The family the keys and shapes show, and the assumptions made where they cannot tell."""
    context = next(
        (
            shape[1]
            for key, shape in file.shapes.items()
            if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")
        ),
        None,
    )
    conv_in = _unet_shape(file, "input_blocks.0.0.weight")
    in_channels = conv_in[1] if conv_in else None
    if context not in (768, 1024) or in_channels not in (4, 9):
        raise ModelLoadError(
            f"{file.path}: the architecture is not one this version can infer (text context width {context}, "
            f"{in_channels} input channels; known: 768 = SD 1.x, 1024 = SD 2.x, with 4 or 9 input channels). Name "
            "it: config='<model folder with the same architecture>' or a family (" + ", ".join(FAMILIES) + ")"
        )
    version = "sd1" if context == 768 else "sd2"
    if in_channels == 9:
        return f"{version}-inpainting", []
    if version == "sd1":
        return "sd1", []
    if V_PREDICTION_MARKER in file.shapes:
        return "sd2-v", []
    yaml = _parameterization_from_yaml(file.path)
    if yaml is not None:
        return ("sd2-v" if yaml == "v" else "sd2-base"), []
    if file.extra.get("global_step") == 875000:  # the SD 2.0 / 2.1 base release (epsilon)
        return "sd2-base", []
    return "sd2-v", [
        "the keys cannot tell SD 2.x v-prediction (768 px) from epsilon (512 px 'base'); assumed v-prediction, as "
        "most SD 2.x checkpoints are: pass config='sd2-base' if this one is a base model"
    ]


def _parameterization_from_yaml(path: Path) -> str | None:
    """The web UIs' convention: a <name>.yaml beside the checkpoint holds its original config."""
    yaml = path.with_suffix(".yaml")
    if not yaml.is_file():
        return None
    match = re.search(r"^\s*parameterization:\s*[\"']?(\w+)", yaml.read_text(errors="replace"), re.MULTILINE)
    return match[1] if match else "eps"


def text_layout(file: CheckpointFile) -> str | None:
    if f"{OPENCLIP_PREFIX}token_embedding.weight" in file.shapes:
        return "openclip"
    if f"{CLIP_PREFIX}text_model.embeddings.token_embedding.weight" in file.shapes:
        return "clip"
    if f"{CLIP_PREFIX}embeddings.token_embedding.weight" in file.shapes:
        return "clip-flat"
    return None


# --- configs inferred from shapes -------------------------------------------------------------------------------
def _count(file: CheckpointFile, pattern: str) -> int:
    found = {m[1] for key in file.shapes if (m := re.match(pattern, key))}
    return len(found)


def infer_unet_config(file: CheckpointFile, family: Family) -> dict[str, Any]:
    shape = file.shapes
    layers = 0
    while f"{UNET_PREFIX}input_blocks.{1 + layers}.0.in_layers.0.weight" in shape:
        layers += 1
    levels = _count(file, rf"{re.escape(UNET_PREFIX)}input_blocks\.(\d+)\.0\.out_layers\.3\.weight") // max(layers, 1)
    channels, down, up = [], [], []
    for level in range(levels):
        first = 1 + level * (layers + 1)
        channels.append(shape[f"{UNET_PREFIX}input_blocks.{first}.0.out_layers.3.weight"][0])
        attention = f"{UNET_PREFIX}input_blocks.{first}.1.proj_in.weight" in shape
        down.append("CrossAttnDownBlock2D" if attention else "DownBlock2D")
        up_attention = f"{UNET_PREFIX}output_blocks.{level * (layers + 1)}.1.proj_in.weight" in shape
        up.append("CrossAttnUpBlock2D" if up_attention else "UpBlock2D")
    proj_in = shape[f"{UNET_PREFIX}middle_block.1.proj_in.weight"]
    heads: int | list[int] = 8 if family.context_dim == 768 else [c // 64 for c in channels]  # SD 2: 64-wide heads
    return {
        "sample_size": family.sample_size,
        "in_channels": shape[f"{UNET_PREFIX}input_blocks.0.0.weight"][1],
        "out_channels": shape[f"{UNET_PREFIX}out.2.weight"][0],
        "down_block_types": down,
        "up_block_types": up,
        "block_out_channels": channels,
        "layers_per_block": layers,
        "cross_attention_dim": family.context_dim,
        "attention_head_dim": heads,
        "use_linear_projection": len(proj_in) == 2,
        "upcast_attention": family.prediction_type == "v_prediction",  # fp16 attention overflows in SD 2.x 768-v
    }


def infer_vae_config(file: CheckpointFile, family: Family) -> dict[str, Any]:
    shape = file.shapes
    levels = _count(file, rf"{re.escape(VAE_PREFIX)}encoder\.down\.(\d+)\.")
    layers = _count(file, rf"{re.escape(VAE_PREFIX)}encoder\.down\.0\.block\.(\d+)\.")
    return {
        "in_channels": shape[f"{VAE_PREFIX}encoder.conv_in.weight"][1],
        "out_channels": shape[f"{VAE_PREFIX}decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [shape[f"{VAE_PREFIX}encoder.down.{i}.block.0.conv1.weight"][0] for i in range(levels)],
        "layers_per_block": layers,
        "latent_channels": shape[f"{VAE_PREFIX}post_quant_conv.weight"][1],
        "norm_num_groups": 32,
        "sample_size": family.sample_size * 8,
        "scaling_factor": 0.18215,
    }


def infer_text_config(file: CheckpointFile, layout: str, family: Family) -> dict[str, Any]:
    shape = file.shapes
    if layout == "openclip":
        vocab, hidden = shape[f"{OPENCLIP_PREFIX}token_embedding.weight"]
        blocks = _count(file, rf"{re.escape(OPENCLIP_PREFIX)}transformer\.resblocks\.(\d+)\.")
        layers = min(blocks, 23)  # SD 2.x conditions on the penultimate of OpenCLIP ViT-H's 24 layers
        intermediate = shape[f"{OPENCLIP_PREFIX}transformer.resblocks.0.mlp.c_fc.weight"][0]
        positions = shape[f"{OPENCLIP_PREFIX}positional_embedding"][0]
        act, projection = "gelu", 512
    else:
        base = CLIP_PREFIX + ("text_model." if layout == "clip" else "")
        vocab, hidden = shape[f"{base}embeddings.token_embedding.weight"]
        layers = _count(file, rf"{re.escape(base)}encoder\.layers\.(\d+)\.")
        intermediate = shape[f"{base}encoder.layers.0.mlp.fc1.weight"][0]
        positions = shape[f"{base}embeddings.position_embedding.weight"][0]
        act, projection = "quick_gelu", hidden
    if hidden != family.context_dim:
        raise ModelLoadError(
            f"{file.path}: the text encoder is {hidden} wide, but {family.title} reads {family.context_dim}-wide "
            "text: the file is not of that family (or mixes models of different families)"
        )
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
        "max_position_embeddings": positions,
        "hidden_act": act,
        "projection_dim": projection,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }


# --- the plan: configs for every part, checked against the file before a tensor is read ---------------------------
@dataclass
class Plan:
    architecture: str
    description: str
    inferred: bool
    assumptions: list[str]
    unet: dict[str, Any] | None
    vae: dict[str, Any] | None
    text: dict[str, Any] | None
    scheduler: tuple[str, dict[str, Any]] | None  # (registered sampler, config) when no folder gives one
    config_folder: Path | None
    sd2_tokenizer: bool


def make_plan(file: CheckpointFile, config: str | os.PathLike[str] | None, layout: str | None) -> Plan:
    if config is not None and not (isinstance(config, str) and config in FAMILIES):
        folder = Path(os.path.expanduser(os.fspath(config)))
        if not folder.is_dir():
            raise ModelLoadError(
                f"config={os.fspath(config)!r} is neither a model folder nor a known family; families: "
                + ", ".join(FAMILIES)
            )
        notes = []
        scheduler_config = folder / "scheduler" / "scheduler_config.json"
        prediction = (
            _read_json(scheduler_config).get("prediction_type", "epsilon") if scheduler_config.is_file() else None
        )
        if V_PREDICTION_MARKER in file.shapes and prediction not in (None, "v_prediction"):
            notes.append(f"the file is marked v-prediction, but {folder} predicts {prediction}; the folder's is used")
        return Plan(
            architecture=f"config:{folder}",
            description=f"architecture from the model folder {folder}",
            inferred=False,
            assumptions=notes,
            unet=_read_json(folder / "unet" / "config.json"),
            vae=_read_json(folder / "vae" / "config.json"),
            text=_read_json(folder / "text_encoder" / "config.json"),
            scheduler=None,
            config_folder=folder,
            sd2_tokenizer=False,
        )
    name, assumptions = (config, []) if config is not None else detect_family(file)
    family = FAMILIES[name]
    try:
        text = infer_text_config(file, layout, family) if layout else None
        unet = infer_unet_config(file, family)
        vae = infer_vae_config(file, family) if file.has(VAE_PREFIX) else None
    except KeyError as error:
        raise ModelLoadError(
            f"{file.path} lacks {error}, which every {family.title} checkpoint has: the file is damaged or incomplete"
        ) from None
    scheduler_config = {**SD_SCHEDULE, "prediction_type": family.prediction_type}
    description = family.title + (" (inferred from the file's keys and shapes)" if config is None else " (named)")
    return Plan(
        architecture=name,
        description=description,
        inferred=config is None,
        assumptions=assumptions,
        unet=unet,
        vae=vae,
        text=text,
        scheduler=(family.scheduler, scheduler_config),
        config_folder=None,
        sd2_tokenizer=family.context_dim == 1024,
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelLoadError(
            f"the config folder has no {path.parent.name}/{path.name}; it needs unet, vae, text_encoder"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None


def check_table(
    file: CheckpointFile, table: Mapping[str, Source], expected: Mapping[str, torch.Size], part: str
) -> None:
    """Every source key present with a shape that fits its parameter; else name the first ones that do not."""
    missing, misshapen = [], []
    for name, source in table.items():
        shape = file.shapes.get(source.key)
        if shape is None:
            missing.append(source.key)
            continue
        if source.part is not None:
            shape = (shape[0] // 3, *shape[1:])
        want = tuple(expected[name])
        if shape != want and not (_squeezed(shape) == _squeezed(want) and part == "VAE"):
            misshapen.append(f"{source.key}: file {shape} vs model {want}")
    if missing or misshapen:
        text = f"{file.path}: the {part} in the file does not match the architecture"
        if missing:
            text += f"\n  missing ({len(missing)}): " + ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        if misshapen:
            text += f"\n  wrong shape ({len(misshapen)}): " + "; ".join(misshapen[:6])
        raise ModelLoadError(text + "\nIf the architecture was inferred wrongly, name it with config=...")


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)  # the VAE's attention: 1x1 convolutions in LDM, linear layers here


def take(file: CheckpointFile, table: Mapping[str, Source], expected: Mapping[str, torch.Size]) -> dict[str, Any]:
    """The model's state dict as views of the file's tensors: no copy."""
    state = {}
    for name, source in table.items():
        tensor = file.tensors[source.key]
        if source.part is not None:
            tensor = tensor.chunk(3, dim=0)[source.part]
        state[name] = tensor.view(expected[name]) if tensor.shape != expected[name] else tensor
    return state


# --- building the pipeline ----------------------------------------------------------------------------------------
def load_pipeline(
    cls: Any,
    path: str | os.PathLike[str],
    *,
    framework: Any,
    config: str | os.PathLike[str] | None = None,
    torch_dtype: torch.dtype | None = None,
    device: Any = None,
    allow_pickle: bool = False,
    progress: bool = True,
    **options: Any,
) -> Any:
    """What ``from_pretrained`` does with a single file: see the module docstring."""
    path = Path(os.path.expanduser(os.fspath(path)))
    overrides = {name: options.pop(name) for name in list(options) if name in cls.declared}
    file = CheckpointFile(path, allow_pickle)
    check_supported(file)
    layout = text_layout(file)
    plan = make_plan(file, config, layout)
    _check_parts_present(file, plan, layout, overrides)
    if plan.unet and plan.unet.get("in_channels") == 9 and not hasattr(cls, "check_unet_channels"):
        raise ModelLoadError(
            f"{path} is an inpainting checkpoint (its UNet takes 9 channels: latents, mask, masked image); build the "
            "'stable-diffusion-inpaint' pipeline with it (CLI: --image and --mask)"
        )

    # every model built on the meta device and checked against the file before a tensor is read
    models: dict[str, tuple[torch.nn.Module, dict[str, Source]]] = {}
    if "unet" not in overrides:
        unet = _build(framework, ("diffusers", "UNet2DConditionModel"), plan.unet)
        table = unet_table(unet.state_dict(), unet.config["layers_per_block"], unet.config["up_block_types"])
        models["unet"] = (unet, table)
    if "vae" not in overrides:
        vae = _build(framework, ("diffusers", "AutoencoderKL"), plan.vae)
        models["vae"] = (vae, vae_table(vae.state_dict(), len(vae.config["block_out_channels"])))
    if "text_encoder" not in overrides:
        encoder = _build_text_encoder(plan.text)
        models["text_encoder"] = (
            encoder,
            text_table(encoder.state_dict(), "openclip" if layout == "openclip" else "clip"),
        )
        if layout == "clip-flat":
            models["text_encoder"] = (encoder, _flat_clip(models["text_encoder"][1]))
    for part, (model, table) in models.items():
        check_table(file, table, _shapes(model), {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder"}[part])
    components = dict(overrides)
    if "tokenizer" not in overrides:
        components["tokenizer"] = _tokenizer(plan)
    if isinstance(overrides.get("scheduler"), (type(None), str)):  # else an instance, used as it is
        components["scheduler"] = _scheduler(framework, plan, overrides.get("scheduler"))

    used: set[str] = set()
    for part, (model, table) in models.items():
        state = take(file, table, _shapes(model))
        if part == "text_encoder":
            _load_text_weights(model, state, torch_dtype)
        else:
            model.load_weights(state, source=path, dtype=torch_dtype)
        components[part] = model.eval()
        used.update(source.key for source in table.values())
    replaced = tuple(prefix for part in overrides for prefix in PART_PREFIXES.get(part, ()))
    unused = {k: v for k, v in file.tensors.items() if k not in used and not k.startswith(replaced)}

    pipeline = cls(**components)
    pipeline.framework = framework
    pipeline.single_file = SingleFileInfo(
        path=path,
        architecture=plan.architecture,
        description=plan.description,
        inferred=plan.inferred,
        text_layout=layout,
        assumptions=plan.assumptions,
        unused=unused,
    )
    logger.info("%s: %s", path.name, plan.description)
    for note in plan.assumptions:
        logger.warning("%s: %s", path.name, note)
    if not progress:
        pipeline.set_progress_bar_config(disable=True)
    if device is not None:
        pipeline.to(device)
    pipeline.apply_options(**options)
    return pipeline


def _check_parts_present(file: CheckpointFile, plan: Plan, layout: str | None, overrides: dict[str, Any]) -> None:
    absent = []
    if "vae" not in overrides and not file.has(VAE_PREFIX):
        absent.append(f"the VAE ({VAE_PREFIX}*): pass vae=<an AutoencoderKL>")
    if "text_encoder" not in overrides and layout is None:
        absent.append(f"the text encoder ({CLIP_PREFIX}* or {OPENCLIP_PREFIX}*): pass text_encoder=<a CLIPTextModel>")
    if absent:
        raise ModelLoadError(f"{file.path} lacks " + "; and ".join(absent))


def _flat_clip(table: dict[str, Source]) -> dict[str, Source]:
    """Checkpoints saved with transformers before 4.x's ``text_model`` wrapper (or after 5 dropped it)."""
    return {name: Source(s.key.replace(f"{CLIP_PREFIX}text_model.", CLIP_PREFIX), s.part) for name, s in table.items()}


def _shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def _build(framework: Any, layout_name: tuple[str, str], config: dict[str, Any] | None) -> Any:
    registration = framework.registry.for_layout(*layout_name)
    if registration is None:
        raise ModelLoadError(f"no installed plugin loads {list(layout_name)}; install difframe-sd-unet / difframe-vae")
    model_class = framework.load_factory(registration)
    label = f"{layout_name[1]} ({registration.plugin})"
    with parameters_on_meta():
        return model_class.from_config(model_class.validate_config(dict(config or {}), label=label))


def _build_text_encoder(config: dict[str, Any] | None) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(**{k: v for k, v in (config or {}).items() if not k.startswith("_")})
    with parameters_on_meta():
        return CLIPTextModel(text_config)


def _load_text_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> None:
    target = dtype or torch.float32
    state = {k: v if v.dtype == target or not v.is_floating_point() else v.to(target) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)


def _tokenizer(plan: Plan) -> Any:
    from transformers import CLIPTokenizer

    if plan.config_folder is not None:
        folder = plan.config_folder / "tokenizer"
        if not folder.is_dir():
            raise ModelLoadError(f"the config folder {plan.config_folder} has no tokenizer/ folder")
        return CLIPTokenizer.from_pretrained(folder)
    from difframe.framework import packaged_folder

    try:
        folder = Path(packaged_folder(BUILT_IN_TOKENIZER))
    except ModelLoadError:
        folder = None
    if folder is None or not folder.is_dir():
        raise ModelLoadError(
            "a single-file checkpoint holds no tokenizer, and the built-in one (from difframe-shapes-model) is not "
            "installed: install it, or pass config=<a model folder with a tokenizer/> or tokenizer=<a CLIPTokenizer>"
        )
    # SD 2.x's OpenCLIP pads with '!' (id 0), SD 1.x with <|endoftext|>: the padding positions reach the UNet
    return CLIPTokenizer.from_pretrained(folder, **({"pad_token": "!"} if plan.sd2_tokenizer else {}))


def _scheduler(framework: Any, plan: Plan, name: str | None) -> Any:
    if plan.config_folder is not None:
        config = _read_json(plan.config_folder / "scheduler" / "scheduler_config.json")
        if name is None:
            registration = framework.registry.for_layout("diffusers", config.get("_class_name", ""))
            if registration is None:
                raise ModelLoadError(f"no installed sampler loads {config.get('_class_name')!r}; pass scheduler=NAME")
            name = registration.name
    else:
        default, config = plan.scheduler
        name = name or default
    return framework.scheduler(name, {k: v for k, v in config.items() if not k.startswith("_")})


# --- saving ---------------------------------------------------------------------------------------------------------
def single_file_state(pipeline: Any, *, keep_unused: bool = True) -> dict[str, torch.Tensor]:
    """The pipeline's weights under their original single-file names (views; q/k/v fused for OpenCLIP)."""
    unet, vae, encoder = pipeline.unet, pipeline.vae, pipeline.text_encoder
    try:
        tables = [
            (unet, unet_table(unet.state_dict(), unet.config["layers_per_block"], unet.config["up_block_types"])),
            (vae, vae_table(vae.state_dict(), len(vae.config["block_out_channels"]))),
            (encoder, text_table(encoder.state_dict(), _text_layout_of(pipeline))),
        ]
    except (LayoutError, KeyError, TypeError) as error:
        raise ValueError(f"this pipeline cannot be written in the original single-file layout: {error}") from None
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list[torch.Tensor | None]] = {}
    for model, table in tables:
        state = model.state_dict()
        for name, source in table.items():
            tensor = state[name].detach()
            if source.part is not None:
                fused.setdefault(source.key, [None, None, None])[source.part] = tensor
            elif source.key.startswith(VAE_PREFIX) and ".mid.attn_1." in source.key and tensor.ndim == 2:
                out[source.key] = tensor.view(*tensor.shape, 1, 1)  # LDM's attention: 1x1 convolutions
            else:
                out[source.key] = tensor
    for key, parts in fused.items():
        out[key] = torch.cat(parts)  # type: ignore[arg-type]  # the one copy: OpenCLIP stores q, k, v fused
    info = getattr(pipeline, "single_file", None)
    if keep_unused and info is not None:
        out.update({k: v for k, v in info.unused.items() if k not in out})
    prediction = pipeline.scheduler.config.get("prediction_type")
    if prediction == "v_prediction" and V_PREDICTION_MARKER not in out:
        out[V_PREDICTION_MARKER] = torch.tensor([])  # so that this file loads as v-prediction here and in ComfyUI
    return out


def _text_layout_of(pipeline: Any) -> str:
    info = getattr(pipeline, "single_file", None)
    if info is not None and info.text_layout == "openclip":
        return "openclip"
    return "openclip" if pipeline.text_encoder.config.hidden_act == "gelu" else "clip"  # OpenCLIP uses exact GELU


def save_single_file(
    pipeline: Any,
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    keep_unused: bool = True,
) -> Path:
    """Write one .safetensors in the original layout; replaces ``path`` only once the file is complete."""
    path = Path(os.path.expanduser(os.fspath(path)))
    if path.suffix != ".safetensors":
        raise ValueError(f"save_single_file writes .safetensors files; got {path.name!r}")
    state = single_file_state(pipeline, keep_unused=keep_unused)
    write_safetensors(state, path, metadata={"format": "pt"}, dtype=dtype)
    return path


class SingleFileMixin:
    """Single-file loading and saving for the Stable Diffusion pipelines."""

    single_file: SingleFileInfo | None = None  # set when loaded from a single file

    @classmethod
    def load_single_file(cls, path: str | os.PathLike[str], *, framework: Any, **options: Any) -> Any:
        """Called by ``from_pretrained`` / ``from_single_file`` / ``Framework.build`` for a file. ``config``: a model
        folder or a family name (``sd1``, ``sd1-inpainting``, ``sd2-base``, ``sd2-v``, ``sd2-inpainting``) where the
        keys cannot tell; otherwise the architecture is inferred and ``pipe.single_file`` says which."""
        return load_pipeline(cls, path, framework=framework, **options)

    def save_single_file(
        self, path: str | os.PathLike[str], *, dtype: torch.dtype | None = None, keep_unused: bool = True
    ) -> Path:
        """Write the UNet, VAE and text encoder as one .safetensors in the original layout the web UIs load.

        Tensors of a loaded single file that the models do not use (EMA weights, SD 2.x's last OpenCLIP layer) are
        written back unless ``keep_unused=False``; ``dtype`` converts floating tensors (e.g. torch.float16).
        """
        return save_single_file(self, path, dtype=dtype, keep_unused=keep_unused)

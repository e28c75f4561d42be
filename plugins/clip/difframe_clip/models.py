"""Loaders of transformers' CLIP classes with difframe's loader interface.

Each loader's ``from_pretrained`` takes the keywords a difframe pipeline passes to every component (subfolder,
torch_dtype, variant, allow_pickle) and returns the transformers object itself, whose class name is the one in
model_index.json, so a pipeline saves it back under the same entry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import transformers
from difframe.errors import ConfigError, ModelLoadError
from difframe.hub import resolve, weight_patterns
from difframe.paths import check_folder, check_subfolder, check_variant, contained
from difframe.weights import with_variant

try:  # transformers >= 5 has a torchvision backend and a PIL one; torchvision is not a dependency of ours
    from transformers import CLIPImageProcessorPil as _ImageProcessorBase
except ImportError:  # transformers 4
    from transformers import CLIPImageProcessor as _ImageProcessorBase


def _folder(reference: str | os.PathLike[str], subfolder: str | None, hub: dict[str, Any], **patterns: Any) -> Path:
    hub_options = {k: hub.pop(k) for k in ("revision", "cache_dir", "local_files_only", "token") if k in hub}
    check_subfolder(subfolder)
    check_variant(patterns.get("variant"))
    prefix = f"{subfolder}/" if subfolder else ""
    root = resolve(reference, **weight_patterns(prefix, **patterns), **hub_options)
    folder = contained(root, subfolder, named_by="subfolder") if subfolder else root
    if not folder.is_dir():
        raise ModelLoadError(f"{root} has no folder {subfolder!r}")
    check_folder(root, folder)  # transformers reads what the folder holds: every entry stays inside the model
    return folder


def _use_safetensors(folder: Path, variant: str | None, allow_pickle: bool) -> bool:
    """True for safetensors weights; False for a pickle that the caller allowed; else a ModelLoadError."""
    safetensors_name = with_variant("model.safetensors", variant)
    if (folder / safetensors_name).is_file() or (folder / f"{safetensors_name}.index.json").is_file():
        return True
    pickle_name = with_variant("pytorch_model.bin", variant)
    if (folder / pickle_name).is_file() or (folder / f"{pickle_name}.index.json").is_file():
        if allow_pickle:
            return False
        raise ModelLoadError(
            f"{folder} has only pickle weights ({pickle_name}). Pickles can run code when loaded; convert them to "
            "safetensors, or pass allow_pickle=True to load them."
        )
    present = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    raise ModelLoadError(
        f"{folder} has no weights file {safetensors_name}"
        + (f" (files there: {', '.join(present)})" if present else "")
    )


def _check_loading_info(name: str, folder: Path, info: dict[str, Any]) -> None:
    """transformers re-initializes missing or misshapen weights and drops unexpected ones (a checkpoint with more
    layers than config.json says, say) with a warning; for us each is an error."""
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    misshapen = [f"{key}: checkpoint {tuple(a)} vs model {tuple(b)}" for key, a, b in info.get("mismatched_keys") or []]
    if not (missing or unexpected or misshapen):
        return
    text = f"the weights in {folder} do not match {name}:"
    titled = (("missing from the checkpoint", missing), ("unexpected in the checkpoint", unexpected))
    for title, keys in (*titled, ("wrong shape", sorted(misshapen))):
        if keys:
            text += f"\n  {title} ({len(keys)}): " + ", ".join(keys[:8]) + (" and more" if len(keys) > 8 else "")
    raise ModelLoadError(text + "\nCheck that config.json describes the architecture these weights were trained with.")


class _ModelLoader:
    """Loads a transformers model with difframe's keywords; returns the transformers model itself.

    (Not a subclass: transformers treats subclasses defined elsewhere as custom code and then skips the key
    conversions that let it read checkpoints saved by older versions, such as the ``text_model.`` prefix of every
    Stable Diffusion text encoder.)
    """

    model_class: ClassVar[str]

    @classmethod
    def from_pretrained(
        cls,
        reference: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | None = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> Any:
        """Load weights (safetensors only, unless ``allow_pickle``); ``torch_dtype`` defaults to float32."""
        folder = _folder(reference, subfolder, kwargs, variant=variant, allow_pickle=allow_pickle)
        safetensors = _use_safetensors(folder, variant, allow_pickle)
        dtype = kwargs.pop("dtype", None) or torch_dtype or torch.float32
        kwargs.setdefault("ignore_mismatched_sizes", True)  # reported below, by name and shapes, as an error
        model_class = getattr(transformers, cls.model_class)
        try:
            model, info = model_class.from_pretrained(
                folder, dtype=dtype, variant=variant, use_safetensors=safetensors, output_loading_info=True, **kwargs
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelLoadError(f"cannot load {cls.model_class} from {folder}: {error}") from error
        _check_loading_info(cls.model_class, folder, info)
        if device is not None:
            model.to(device)
        return model.eval()

    @classmethod
    def check_pretrained(
        cls,
        reference: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        weights: bool = True,
        **_: Any,
    ) -> None:
        """What from_pretrained checks before reading a weight: paths, a config of positive sizes, and (``weights``)
        the weights files."""
        folder = _folder(reference, subfolder, {}, variant=variant, allow_pickle=allow_pickle)
        if weights:
            _use_safetensors(folder, variant, allow_pickle)
        config_class = getattr(
            transformers, f"{cls.model_class.removesuffix('WithProjection').removesuffix('Model')}Config"
        )
        try:
            config = config_class.from_pretrained(folder)
        except Exception as error:  # transformers' own validation raises its own error types
            raise ConfigError(
                f"invalid {cls.model_class} config in {folder / 'config.json'}: {str(error).strip().splitlines()[-1]}"
            ) from None
        sizes = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        sizes += ("max_position_embeddings", "vocab_size", "projection_dim", "image_size", "patch_size")
        wrong = [
            f"{name}={getattr(config, name)!r}"
            for name in sizes
            if hasattr(config, name)
            and (not isinstance(getattr(config, name), int) or isinstance(getattr(config, name), bool)
                 or getattr(config, name) < 1)
        ]  # fmt: skip
        if not wrong and config.hidden_size % config.num_attention_heads:
            wrong.append(f"hidden_size={config.hidden_size} is not a multiple of num_attention_heads")
        if wrong:
            raise ConfigError(
                f"invalid {cls.model_class} config in {folder / 'config.json'}: {', '.join(wrong)}; sizes and counts "
                "must be positive integers"
            )


class CLIPTextModelLoader(_ModelLoader):
    """The CLIP text transformer (Stable Diffusion's text_encoder/): a ``transformers.CLIPTextModel``."""

    model_class = "CLIPTextModel"


class CLIPVisionModelLoader(_ModelLoader):
    """The CLIP image transformer and projection (IP-Adapter's image_encoder/): ``image_embeds``."""

    model_class = "CLIPVisionModelWithProjection"


class CLIPTokenizerLoader:
    """CLIP's byte-level BPE tokenizer (a model's tokenizer/): a ``transformers.CLIPTokenizer``."""

    @classmethod
    def from_pretrained(
        cls,
        reference: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        torch_dtype: Any = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        **kwargs: Any,
    ) -> transformers.CLIPTokenizer:
        """Weight keywords are accepted and ignored."""
        folder = _folder(reference, subfolder, kwargs)
        _check_tokenizer_files(folder)
        try:
            return transformers.CLIPTokenizer.from_pretrained(folder, **kwargs)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load a CLIP tokenizer from {folder}: {error}") from error

    @classmethod
    def check_pretrained(cls, reference: str | os.PathLike[str], *, subfolder: str | None = None, **_: Any) -> None:
        _check_tokenizer_files(_folder(reference, subfolder, {}))


def _check_tokenizer_files(folder: Path) -> None:
    """transformers builds a tokenizer of its special tokens alone from a folder without its vocabulary, and every
    prompt then encodes to nothing; refuse that instead."""
    has_bpe = all((folder / name).is_file() and (folder / name).stat().st_size for name in ("vocab.json", "merges.txt"))
    if not (has_bpe or (folder / "tokenizer.json").is_file()):
        present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise ModelLoadError(
            f"{folder} has no tokenizer vocabulary: a CLIP tokenizer needs vocab.json and merges.txt (or "
            f"tokenizer.json), and the folder holds {present}. Copy them from the model's original tokenizer/ folder."
        )


class CLIPImageProcessor(_ImageProcessorBase):
    """Resize, center-crop and normalize images for the CLIP vision encoder (a model's feature_extractor/).

    transformers' PIL backend (no torchvision needed) under the layout's class name, so that saves and
    model_index.json say CLIPImageProcessor.
    """

    layout_name: ClassVar[tuple[str, str]] = ("transformers", "CLIPImageProcessor")

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        reference: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        torch_dtype: Any = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        **kwargs: Any,
    ) -> CLIPImageProcessor:
        folder = _folder(reference, subfolder, kwargs)
        try:
            return super().from_pretrained(folder, **kwargs)
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot load a CLIP image processor from {folder}: {error}") from error

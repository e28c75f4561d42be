"""Weights files in the shared layout: find, read (memory-mapped) and write (sharded, atomic)."""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import ModelLoadError

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


def with_variant(filename: str, variant: str | None) -> str:
    """'model.safetensors' + 'fp16' -> 'model.fp16.safetensors'."""
    if not variant:
        return filename
    stem, _, suffix = filename.partition(".")
    return f"{stem}.{variant}.{suffix}"


def find_weights(folder: Path, weights_name: str, variant: str | None, allow_pickle: bool) -> list[Path]:
    """The weights files of one model folder, shards in order; raise ModelLoadError with what to do."""
    safetensors_name = with_variant(weights_name, variant)
    index = folder / f"{safetensors_name}.index.json"
    if index.is_file():
        return _shards(index)
    if (folder / safetensors_name).is_file():
        return [folder / safetensors_name]
    present = sorted(p.name for p in folder.glob("*") if p.suffix in (".safetensors", *PICKLE_SUFFIXES))
    stem = weights_name.split(".")[0]
    pickles = [folder / name for name in present if name.endswith(PICKLE_SUFFIXES) and name.startswith(stem)]
    pickles = [p for p in pickles if (variant in p.name.split(".")) == bool(variant)]
    if pickles and allow_pickle:
        return pickles[:1]
    if pickles:
        raise ModelLoadError(
            f"{folder} has only pickle weights ({pickles[0].name}). Pickles can run code when loaded; convert them "
            "to safetensors, or pass allow_pickle=True to load them with torch's weights-only loader."
        )
    if variant and (folder / weights_name).is_file():
        raise ModelLoadError(
            f"{folder} has no {variant!r} variant ({safetensors_name}); it has {weights_name}. "
            "Pass variant=None to load it, and torch_dtype to convert."
        )
    raise ModelLoadError(
        f"{folder} has no weights file {safetensors_name}"
        + (f" (files there: {', '.join(present)})" if present else "")
        + ". Save the model with save_pretrained, or point at the folder that holds its weights."
    )


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelLoadError(f"{index} is not a valid sharded-weights index ({error})") from None
    files = sorted(set(weight_map.values()))
    missing = [name for name in files if not (index.parent / name).is_file()]
    if missing:
        raise ModelLoadError(f"{index} names shards that are missing: {', '.join(missing)}")
    return [index.parent / name for name in files]


def read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    """Tensors from safetensors files, memory-mapped (no copy until a dtype or device change)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                state.update(load_file(path, device="cpu"))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        except pickle.UnpicklingError as error:
            raise ModelLoadError(
                f"refused to load {path}: the pickle holds objects other than tensors, which could run code "
                f"({str(error).splitlines()[-1].strip()}). Convert the checkpoint to safetensors where you trust it."
            ) from None
        except (SafetensorError, RuntimeError, OSError, EOFError) as error:
            raise ModelLoadError(
                f"cannot read weights file {path}: {error}. The file is damaged or truncated; download or save it "
                "again."
            ) from None
    return state


def write_state_dict(
    state: Mapping[str, torch.Tensor],
    folder: Path,
    weights_name: str,
    variant: str | None,
    max_shard_bytes: int,
) -> None:
    """Write one safetensors file, or shards plus an index when the weights exceed ``max_shard_bytes``."""
    from safetensors.torch import save_file

    name = with_variant(weights_name, variant)
    tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(tensors, folder / name, metadata={"format": "pt"})
        return
    stem, suffix = name.removesuffix(".safetensors"), ".safetensors"
    weight_map: dict[str, str] = {}
    for number, shard in enumerate(shards, start=1):
        shard_name = f"{stem}-{number:05d}-of-{len(shards):05d}{suffix}"
        save_file(shard, folder / shard_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, shard_name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / f"{name}.index.json").write_text(json.dumps(index, indent=2) + "\n")

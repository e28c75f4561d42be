"""Weights files in the shared layout: find, read (memory-mapped) and write (sharded, atomic)."""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import ModelLoadError
from .paths import allowed_roots, check_variant, contained, is_inside

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth")


def with_variant(filename: str, variant: str | None) -> str:
    """'model.safetensors' + 'fp16' -> 'model.fp16.safetensors'."""
    if not variant:
        return filename
    stem, _, suffix = filename.partition(".")
    return f"{stem}.{variant}.{suffix}"


def find_weights(folder: Path, weights_name: str, variant: str | None, allow_pickle: bool) -> list[Path]:
    """The weights files of one model folder, shards in order; raise ModelLoadError with what to do.

    Every file, including the shards an index names, must resolve inside ``folder`` (see difframe.paths).
    """
    check_variant(variant)
    files = _find(folder, weights_name, variant, allow_pickle)
    roots = allowed_roots(folder)
    for path in files:
        if not is_inside(path, roots):
            raise ModelLoadError(
                f"{path} is a symlink that leads outside the model folder {folder} (to {path.resolve()}): refused, "
                "since loading it would read files the model does not own. Copy the weights into the model folder."
            )
    return files


def _find(folder: Path, weights_name: str, variant: str | None, allow_pickle: bool) -> list[Path]:
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
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ModelLoadError(f"{index}: weight_map must map tensor names to shard file names")
    files = sorted(set(weight_map.values()))
    paths = [contained(index.parent, name, named_by=f"sharded-weights index {index}") for name in files]
    missing = [name for name, path in zip(files, paths) if not path.is_file()]
    if missing:
        raise ModelLoadError(f"{index} names shards that are missing: {', '.join(missing)}")
    return paths


def read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    """Tensors from safetensors files, memory-mapped (no copy until a dtype or device change)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in files:
        try:
            if path.suffix == ".safetensors":
                state.update(load_file(path, device="cpu"))
            else:  # torch maps only its zip format into memory; the legacy format (torch < 1.6) is read whole
                mmap = zipfile.is_zipfile(path)
                state.update(torch.load(path, map_location="cpu", weights_only=True, mmap=mmap))
        except pickle.UnpicklingError as error:
            raise ModelLoadError(
                f"refused to load {path}: it is not a plain weights checkpoint ({_refusal_reason(path, error)}). "
                "Unpickling it could run code, so the weights-only loader stops. Convert the checkpoint to "
                "safetensors where you trust its source, or ask its author for a safetensors file."
            ) from None
        except (SafetensorError, RuntimeError, OSError, EOFError) as error:
            raise ModelLoadError(
                f"cannot read weights file {path}: {error}. The file is damaged or truncated; download or save it "
                "again."
            ) from None
    return state


def _refusal_reason(path: Path, error: Exception) -> str:
    """What the weights-only loader objected to: the code a pickle would call, or torch's own detail."""
    called = _pickle_globals(path)
    if called:
        return "it would call " + ", ".join(called[:5])
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "Re-running")
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith(boilerplate)]
    detail = (lines[-1] if lines else "").removeprefix("WeightsUnpickler error:").strip()
    return detail or "the weights-only loader refused it"


def _pickle_globals(path: Path, limit: int = 1 << 20) -> list[str]:
    """Callables named by the first pickle of a legacy-format (non-zip) file, read without running it."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            data = archive.read(name)[:limit] if name else b""
    else:
        data = path.read_bytes()[:limit]
    found: list[str] = []
    strings: list[str] = []
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):
            for opcode, argument, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    found.append(str(argument).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(argument, str):
                    strings.append(argument)
    except Exception:  # a truncated or non-pickle tail: report what was read
        pass
    harmless = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set", "numpy.")
    return sorted({name for name in found if not name.startswith(harmless)})


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

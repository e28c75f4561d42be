"""The web UIs' ``<lora:NAME:WEIGHT>`` prompt syntax: parsing, finding NAME in a LoRA folder, and the hashes the web UIs
record ("Lora hashes"). No torch here: the CLI checks names and hashes before any model loads."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from pathlib import Path

LORA_DIR_ENV = "DIFFRAME_LORA_DIR"
LORA_TAG = re.compile(r"<lora:([^:>]*)(?::([^>]*))?>")
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")


def parse_lora_tags(prompt: str) -> tuple[str, dict[str, float]]:
    """'a cat <lora:ink:0.8>' -> ('a cat ', {'ink': 0.8}); the tags are removed from the text, as the web UIs do."""
    tags: dict[str, float] = {}
    for match in LORA_TAG.finditer(prompt):
        name, rest = match.group(1).strip(), (match.group(2) or "").strip()
        if not name:
            raise ValueError(f"{match.group(0)!r}: a LoRA tag needs a name, as in <lora:NAME:0.8>")
        if ":" in rest or "=" in rest:
            raise ValueError(
                f"{match.group(0)!r}: separate text-encoder / UNet weights are not supported; use one weight, as in "
                f"<lora:{name}:0.8>"
            )
        try:
            weight = float(rest) if rest else 1.0
        except ValueError:
            raise ValueError(f"{match.group(0)!r}: the weight must be a number, as in <lora:{name}:0.8>") from None
        if weight != weight or abs(weight) == float("inf"):
            raise ValueError(f"{match.group(0)!r}: the weight must be a finite number")
        if name in tags and tags[name] != weight:
            raise ValueError(f"the prompt names LoRA {name!r} twice with different weights ({tags[name]} and {weight})")
        tags[name] = weight
    return LORA_TAG.sub("", prompt), tags


def lora_folder(option: str | os.PathLike[str] | None) -> Path | None:
    """The LoRA folder: the ``lora_dir`` option, else $DIFFRAME_LORA_DIR; None when neither is set."""
    value = option if option is not None else os.environ.get(LORA_DIR_ENV) or None
    if value is None:
        return None
    folder = Path(os.path.expanduser(os.fspath(value)))
    if not folder.is_dir():
        where = "lora_dir" if option is not None else f"${LORA_DIR_ENV}"
        raise ValueError(f"{where} {folder} is not a folder")
    return folder


def available_loras(folder: Path) -> dict[str, Path]:
    """NAME -> file for every LoRA file in ``folder`` and its subfolders (that stay inside it)."""
    root = folder.resolve()
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix in LORA_SUFFIXES and path.is_file() and path.resolve().is_relative_to(root):
            found.setdefault(path.stem, path)
    return found


def find_lora(name: str, folder: Path | None) -> Path:
    """The file of ``<lora:name:...>``: ``name.safetensors`` (or a pickle suffix) anywhere in the LoRA folder."""
    if folder is None:
        raise ValueError(
            f"the prompt names LoRA {name!r} but no LoRA folder is set: pass lora_dir=... (CLI --lora-dir) or set "
            f"${LORA_DIR_ENV}"
        )
    if any(part in name for part in ("/", "\\")) or name in (".", ".."):
        raise ValueError(f"LoRA name {name!r} must be a file name without folders")
    files = available_loras(folder)
    if name in files:
        return files[name]
    close = difflib.get_close_matches(name, list(files), n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(close)}" if close else f"; {len(files)} LoRA files there"
    raise ValueError(f"no LoRA named {name!r} in {folder}{hint}")


def lora_hash(path: str | os.PathLike[str]) -> str:
    """The web UIs' LoRA hash ("Lora hashes" records its first 12 hex digits): sha256 of a safetensors file's tensor
    data, the bytes after its header; of the whole file for other formats."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if os.fspath(path).endswith(".safetensors"):
            header = int.from_bytes(handle.read(8), "little")
            handle.seek(8 + header)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_recorded_hashes(recorded: dict[str, str], folder: Path | None) -> None:
    """Reproducing an image: every LoRA its parameters name must be found, with the hash they record."""
    for name, short in recorded.items():
        path = find_lora(name, folder)
        actual = lora_hash(path)[: len(short)] if short else ""
        if short and actual != short.lower():
            raise ValueError(
                f"LoRA {name!r} in {path} has hash {actual}, but the image was made with {short}: another file of "
                "the same name (the image would not be reproduced)"
            )


def parse_embedding_option(text: str) -> tuple[str | None, Path]:
    """CLI ``--embedding [TOKEN=]FILE`` -> (token or None for the file's own name, file)."""
    token, sep, path = text.partition("=")
    if not sep:
        token, path = "", text
    file = Path(os.path.expanduser(path))
    if not file.is_file():
        raise ValueError(f"--embedding {text}: {file} is not a file")
    return token or None, file


def check_networks(params: object, lora_dir: str | None, embeddings: list[str], *, from_png: bool) -> None:
    """Before any model loads: the prompt's LoRAs are in the LoRA folder (with the recorded hashes, when reproducing
    a PNG), the embeddings it records are given with their hashes, and nothing it records is unsupported."""
    folder = lora_folder(lora_dir)
    texts = [getattr(params, "prompt", ""), getattr(params, "negative_prompt", "")]
    names: dict[str, float] = {}
    for text in texts:
        names.update(parse_lora_tags(text)[1])
    recorded: dict[str, str] = getattr(params, "lora_hashes", {}) if from_png else {}
    for name in names:
        find_lora(name, folder)
    check_recorded_hashes({n: recorded.get(n, "") for n in names}, folder)
    if not from_png:
        return
    unsupported = params.unsupported_fields()  # type: ignore[attr-defined]
    if unsupported:
        raise ValueError(
            "the PNG's parameters use what difframe does not reproduce: " + "; ".join(unsupported) + ". The image "
            "would differ; generate without --from-png and set the parameters you want."
        )
    given = {}
    for option in embeddings:
        token, file = parse_embedding_option(option)
        given[token or file.stem] = hashlib.sha256(file.read_bytes()).hexdigest()
    for name, short in getattr(params, "ti_hashes", {}).items():
        if name not in given:
            raise ValueError(
                f"the image was made with embedding {name!r} (TI hashes: {short}): pass it with --embedding {name}=FILE"
            )
        if short and not given[name].startswith(short.lower()):
            raise ValueError(f"--embedding {name}: the file's hash {given[name][:12]} is not the recorded {short}")

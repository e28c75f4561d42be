"""Paths that model files name must stay inside the model folder, symlinks included.

A Hugging Face cache snapshot links every file to ``../../blobs/<hash>`` of the same repository; those links are the
cache's own layout and are allowed. Any other path that resolves outside the model folder stops loading.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ModelLoadError

_VARIANT = re.compile(r"[A-Za-z0-9_-]+")


def allowed_roots(root: Path) -> list[Path]:
    """The real folders a model rooted at ``root`` may read from: itself and, in a hub cache, its blobs."""
    real = root.resolve()
    roots = [real]
    for folder in (real, *real.parents):  # the snapshot may be the root or hold it (root = snapshot/subfolder)
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            roots.append(folder.parent.parent / "blobs")
            break
    return roots


def is_inside(path: Path, roots: list[Path]) -> bool:
    real = path.resolve()
    return any(real == root or root in real.parents for root in roots)


def contained(root: Path, relative: str | os.PathLike[str], *, named_by: object) -> Path:
    """``root / relative``, checked to resolve inside ``root``; ``named_by`` is the file or option that names it."""
    text = os.fspath(relative)
    path = root / text
    escapes = Path(text).is_absolute() or ".." in Path(text).parts
    if escapes or not is_inside(path, allowed_roots(root)):
        how = "leads" if escapes else "is a symlink that leads"
        raise ModelLoadError(
            f"{named_by} names {text!r}, which {how} outside the model folder {root}: refused, since loading it "
            "would read files the model does not own. Put the file inside the model folder (a real file, not a "
            "link out of it)."
        )
    return path


def check_folder(root: Path, folder: Path) -> None:
    """``folder`` and every entry directly in it resolve inside ``root`` (what a loader such as transformers reads)."""
    relative = folder.relative_to(root) if folder != root else Path(".")
    contained(root, relative, named_by=f"model folder {root}")
    if not folder.is_dir():
        return
    roots = allowed_roots(root)
    for entry in sorted(folder.iterdir()):
        if not is_inside(entry, roots):
            raise ModelLoadError(
                f"{entry} is a symlink that leads outside the model folder {root} (to {entry.resolve()}): refused, "
                "since loading it would read files the model does not own. Copy the file into the model folder."
            )


def check_variant(variant: str | None) -> None:
    if variant is not None and not _VARIANT.fullmatch(variant):
        raise ModelLoadError(
            f"variant {variant!r} is not a plain name (letters, digits, '_' or '-', such as 'fp16'): weights files are "
            "named <name>.<variant>.safetensors inside the model folder"
        )


def check_subfolder(subfolder: str | None) -> None:
    if subfolder is not None and (
        Path(subfolder).is_absolute() or ".." in Path(subfolder).parts or subfolder.strip() in ("", ".")
    ):
        raise ModelLoadError(
            f"subfolder {subfolder!r} must be a folder name inside the model folder (such as 'unet'), not a path "
            "that leaves it"
        )

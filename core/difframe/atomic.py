"""Writes that never leave a half-written file or folder behind."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

_RENAME_EXCHANGE = 2  # linux/fs.h


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _normal_permissions(root: Path) -> None:
    """mkstemp/mkdtemp create owner-only entries; give what was written the permissions of a plain write."""
    mask = _umask()
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step where the OS can (Linux renameat2); False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".safetensors.index.json", ".bin.index.json")


def _weights_stem(name: str) -> str | None:
    """'model-00001-of-00002.fp16.safetensors' -> 'model.fp16': files of one save share it."""
    suffix = next((s for s in sorted(_WEIGHT_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)
    if suffix is None:
        return None
    return re.sub(r"-\d{5}-of-\d{5}", "", name[: -len(suffix)])


def _carry_over(target: Path, staging: Path) -> None:
    """Keep files of ``target`` that this save does not write (a README, other folders), by hard link.

    Weights files named like the ones just written (an older sharding or variant) are stale and not kept.
    """
    for source in sorted(target.rglob("*")):
        relative = source.relative_to(target)
        destination = staging / relative
        if destination.exists() or source.is_dir():
            continue
        written_stems = (
            {_weights_stem(p.name) for p in destination.parent.glob("*") if p.is_file()}
            if destination.parent.exists()
            else set()
        )
        stem = _weights_stem(source.name)
        if stem is not None and stem in written_stems:
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, destination)
        except OSError:
            shutil.copy2(source, destination)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``target`` whole, on error it is discarded.

    Whatever happens inside the block, ``target`` is either the previous folder, untouched, or the new one.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".saving", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _normal_permissions(staging)
    if not target.exists():
        os.rename(staging, target)
        return
    _carry_over(target, staging)
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous contents
        return
    previous = target.with_name(f".{target.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    os.rename(target, previous)
    os.rename(staging, target)
    shutil.rmtree(previous, ignore_errors=True)

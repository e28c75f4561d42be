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
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .errors import SaveTargetError

_RENAME_EXCHANGE = 2  # linux/fs.h
STALE_AFTER_S = 1.0  # a staging folder younger than this may belong to a save that has not locked it yet


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


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a handle on a temporary file in ``path``'s folder ("wb" or "w", UTF-8); on success it is flushed to disk
    and renamed over ``path``, on error removed. Readers see the old file or the whole new one, never a part."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes whole files: mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """As atomic_write_text, for bytes: readers see the old file or the whole new one, never a part."""
    with atomic_file(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a text file through a temporary file in the same folder, then rename it into place."""
    with atomic_file(path, "w") as handle:
        handle.write(text)


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


def _is_stale_weights(name: str, written: set[str | None]) -> bool:
    stem = _weights_stem(name)
    return stem is not None and stem in written


def _carry_over(target: Path, staging: Path) -> None:
    """Keep what ``target`` holds that this save does not write: other files (by hard link), folders (empty ones
    too) and symlinks (as symlinks, never followed). Weights files named like the ones just written (an older
    sharding or variant) are stale and not kept.
    """
    written = {_weights_stem(p.name) for p in staging.iterdir() if p.is_file() and not p.is_symlink()}
    for source in sorted(target.iterdir()):
        destination = staging / source.name
        if source.is_symlink():
            if not os.path.lexists(destination):
                os.symlink(os.readlink(source), destination)
        elif source.is_dir():
            if destination.is_dir() and not destination.is_symlink():
                _carry_over(source, destination)
            elif not os.path.lexists(destination):
                destination.mkdir()
                _carry_over(source, destination)
                shutil.copystat(source, destination)  # last: a read-only folder still takes its entries first
        elif not os.path.lexists(destination) and not _is_stale_weights(source.name, written):
            try:
                os.link(source, destination)
            except OSError:
                shutil.copy2(source, destination)


def _real_target(target: Path) -> Path:
    """Where to save: ``target`` itself, or the folder a symlink at ``target`` points to (with a warning)."""
    if target.is_symlink():
        real = target.resolve()
        if not real.is_dir():
            what = "a missing path" if not real.exists() else "a file"
            raise SaveTargetError(
                f"{target} is a symlink to {what} ({real}), not to a folder: refused to save there. Remove the link "
                "or save to a folder."
            )
        warnings.warn(f"{target} is a symlink: saving into the folder it points to, {real}", stacklevel=3)
        return real
    if target.exists() and not target.is_dir():
        raise SaveTargetError(
            f"{target} is a file, not a folder: refused to replace it with a saved model. Move the file away or "
            "choose another folder."
        )
    return target


def _staging_name(target: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target.name)}\.[^/]+\.saving")


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks on folders; treat every staging folder as in use
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _previous(target: Path) -> Path:
    return target.with_name(f".{target.name}.previous")


def clean_stale_saves(target: str | os.PathLike[str], min_age_s: float | None = None) -> list[Path]:
    """Remove what killed saves of ``target`` left beside it, and bring back a previous copy that a kill between
    the two renames of the fallback swap left hidden. A staging folder is stale when no process holds its lock
    (the lock dies with its process) and it is older than ``min_age_s``. Returns the removed folders.
    """
    target = Path(target).absolute()
    min_age_s = STALE_AFTER_S if min_age_s is None else min_age_s
    previous = _previous(target)
    if previous.is_dir() and not os.path.lexists(target):
        os.rename(previous, target)
    removed = []
    if not target.parent.is_dir():
        return removed
    pattern = _staging_name(target)
    now = time.time()
    candidates = [p for p in target.parent.iterdir() if pattern.fullmatch(p.name)]
    if previous.is_dir():
        candidates.append(previous)
    for folder in candidates:
        if folder.is_symlink() or not folder.is_dir() or now - folder.stat().st_mtime < min_age_s:
            continue
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:  # folders cannot be opened on Windows: no lock to test, so leave it
            continue
        try:
            if _try_lock(fd):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        finally:
            os.close(fd)
    return removed


def _swap(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target``; the previous ``target`` ends up at ``staging``."""
    if _exchange(staging, target):
        return
    # No atomic exchange here: two renames. A kill between them leaves the previous copy at .<name>.previous,
    # which the next save of this target (clean_stale_saves) puts back.
    previous = _previous(target)
    shutil.rmtree(previous, ignore_errors=True)
    os.rename(target, previous)
    os.rename(staging, target)
    os.rename(previous, staging)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``target`` whole, on error it is discarded.

    Whatever happens inside the block, ``target`` is either the previous folder, untouched, or the new one. Files
    and folders of the previous folder that the save does not write are kept. A symlink to a folder is followed
    (with a warning); a file or any other symlink at ``target`` is refused. Staging folders left by killed saves are
    removed by the next save of the same target.
    """
    target = _real_target(Path(target).absolute())
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_saves(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".saving", dir=target.parent))
    try:
        lock: int | None = os.open(staging, os.O_RDONLY)
    except OSError:  # Windows
        lock = None
    try:
        if lock is not None:
            _try_lock(lock)
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _normal_permissions(staging)
        if not os.path.lexists(target):
            os.rename(staging, target)
            return
        _carry_over(target, staging)
        _swap(staging, target)
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous contents
    finally:
        if lock is not None:
            os.close(lock)

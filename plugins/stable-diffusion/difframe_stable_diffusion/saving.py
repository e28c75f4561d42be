"""Writing output PNGs so that a final name only ever holds a complete image.

Each image is written to a hidden temporary file in the target folder, flushed to disk, then given its final name
with a hard link, which fails rather than replace an existing file, so two writers (threads or processes) never
take one name. A full disk, Ctrl-C or a crash leaves at most a temporary file that is removed on the way out.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any


def write_png(image: Any, folder: Path, stem: str, pnginfo: Any) -> Path:
    """Save ``image`` as ``folder/<stem>.png`` (``<stem>_1.png``, ... if taken) and return the path."""
    temporary = _write_temporary(image, folder, stem, pnginfo)
    try:
        return _claim_name(temporary, folder, stem)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def replace_png(image: Any, path: Path, pnginfo: Any) -> Path:
    """Save ``image`` as exactly ``path``, replacing a file there in one rename: the name holds the old file or the
    complete new one, never a part. ``path`` must not be a folder."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the PNG file's path")
    temporary = _write_temporary(image, path.parent, path.stem, pnginfo)
    try:
        os.replace(temporary, path)
        return path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _write_temporary(image: Any, folder: Path, stem: str, pnginfo: Any) -> str:
    """A hidden, complete, flushed PNG of ``image`` in ``folder`` (removed again if writing fails)."""
    fd, temporary = tempfile.mkstemp(prefix=f".{stem}.", suffix=".png.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", pnginfo=pnginfo)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes it owner-only
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return temporary


def _claim_name(temporary: str, folder: Path, stem: str) -> Path:
    n = 0
    while True:
        path = folder / (f"{stem}.png" if n == 0 else f"{stem}_{n}.png")
        try:
            os.link(temporary, path)
            return path
        except FileExistsError:
            n += 1
        except OSError:  # a file system without hard links: rename, having checked the name is free
            if path.exists():
                n += 1
                continue
            os.replace(temporary, path)
            return path


def _read_umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_UMASK = _read_umask()  # read once: os.umask is process-wide, and setting it from a worker thread races

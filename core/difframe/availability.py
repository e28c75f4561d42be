"""Whether a registered component can run on this machine, decided without importing torch."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path

from .specs import Requirements


@functools.cache
def _package_present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """None when an NVIDIA GPU and a CUDA build of torch are both present, else why not."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return "needs CUDA: torch is not installed"
    version_file = Path(spec.origin).parent / "version.py"
    text = version_file.read_text() if version_file.exists() else ""
    match = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*(.+)$", text, re.MULTILINE)
    if match is None or match.group(1).strip() in ("None", "''", '""'):
        return "needs CUDA: this torch is a CPU build"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "needs CUDA: CUDA_VISIBLE_DEVICES hides every GPU"
    if not (Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()):
        return "needs CUDA: no NVIDIA GPU found"
    return None


def unavailable_reason(requires: Requirements) -> str | None:
    """None when the requirements are met, else a short reason a user can act on."""
    missing = [package for package in requires.packages if not _package_present(package)]
    if missing:
        return f"package {', '.join(missing)} not installed" + (f" ({requires.install})" if requires.install else "")
    if requires.cuda:
        return cuda_unavailable_reason()
    return None

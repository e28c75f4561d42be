"""From a torch module to a compiled OpenVINO model: OpenVINO's own conversion (``openvino.convert_model`` with
example inputs and dynamic dimensions), the converted IR kept on disk under a hash of the weights and options, and
OpenVINO's compiled-blob cache (``CACHE_DIR``) beside it, so a second start skips both conversion and compilation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch
from torch import nn

from . import __version__

FORMAT_VERSION = 1  # bump when the wrappers' inputs or outputs change: old cache entries are then ignored


def default_cache_dir() -> Path:
    base = os.environ.get("DIFFRAME_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "difframe"
    )
    return Path(base) / "openvino"


def weights_key(module: nn.Module, label: str, extra: dict[str, Any]) -> str:
    """A hash of everything the converted graph depends on: weights, buffers, config, versions, options."""
    digest = hashlib.blake2b(digest_size=20)
    config = getattr(getattr(module, "config", None), "to_dict", None)
    described = {
        "label": label,
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "config": config() if callable(config) else dict(getattr(module, "config", None) or {}),
        "versions": [FORMAT_VERSION, __version__, ov.__version__, torch.__version__],
        **extra,
    }
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class Startup:
    """How one model got ready: seconds spent, and whether the disk cache had it."""

    label: str
    from_cache: bool
    convert_s: float
    compile_s: float


# One dynamic dimension of an input: (axis, name, multiple) or (axis, name, multiple, minimum): the size is any
# multiple of ``multiple`` (of at least ``minimum`` multiples; default 1).
Dynamic = tuple[tuple[Any, ...], ...]


def compile_module(
    core: ov.Core,
    module: nn.Module,
    *,
    label: str,
    example: tuple[torch.Tensor, ...],
    dynamic: tuple[Dynamic, ...],
    config: dict[str, str],
    cache_dir: Path | None,
    extra: dict[str, Any] | None = None,
) -> tuple[ov.CompiledModel, Startup]:
    """Convert ``module`` (or read its cached IR) and compile it for the CPU with ``config``.

    ``dynamic`` gives, per input, the axes left free (batch, latent size, prompt length), so one compiled model
    serves every size and batch; OpenVINO keeps what it specialises per shape in memory. ``extra``: more that the
    disk cache's key depends on (a converted layer's class).
    """
    begin = time.perf_counter()
    if cache_dir is None:
        model = _convert(module, example, dynamic)
        converted = time.perf_counter()
        compiled = core.compile_model(model, "CPU", config)
        return compiled, Startup(label, False, converted - begin, time.perf_counter() - converted)

    described = {"dynamic": dynamic, "example": [tuple(t.shape) for t in example], **(extra or {})}
    key = weights_key(module, label, described)
    xml = cache_dir / "ir" / key / "model.xml"
    from_cache = xml.is_file()
    if not from_cache:
        _save_atomically(_convert(module, example, dynamic), xml)
    converted = time.perf_counter()
    # compiling from the file lets OpenVINO find its own compiled blob in CACHE_DIR without reading the model
    compiled = core.compile_model(str(xml), "CPU", {**config, "CACHE_DIR": str(cache_dir / "compiled")})
    return compiled, Startup(label, from_cache, converted - begin, time.perf_counter() - converted)


def _convert(module: nn.Module, example: tuple[torch.Tensor, ...], dynamic: tuple[Dynamic, ...]) -> ov.Model:
    """torch.export with the dynamic axes, then OpenVINO's converter of the exported program."""
    dims: dict[str, Any] = {}
    shapes = []
    for axes in dynamic:
        spec = {}
        for axis, name, multiple, *minimum in axes:
            dim = dims.setdefault(name, torch.export.Dim(name, min=minimum[0] if minimum else 1, max=2**16))
            spec[axis] = dim * multiple if multiple > 1 else dim
        shapes.append(spec)
    with torch.no_grad():
        exported = torch.export.export(module, example, dynamic_shapes=tuple(shapes))
        return ov.convert_model(exported)


def _save_atomically(model: ov.Model, xml: Path) -> None:
    """Write the IR into a fresh folder, then rename it into place: a crash never leaves half an entry."""
    xml.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{xml.parent.name}.", dir=xml.parent.parent))
    try:
        ov.save_model(model, staging / xml.name, compress_to_fp16=False)  # keep float32 weights: parity
        try:
            os.rename(staging, xml.parent)
        except OSError:  # another process wrote the same entry first; its copy is as good as ours
            if not xml.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class Graph:
    """A compiled model called with torch tensors; one infer request per thread, so threads never share one."""

    def __init__(self, compiled: ov.CompiledModel, startup: Startup) -> None:
        self.compiled = compiled
        self.startup = startup
        self.weights = 0  # the converted module's weights_fingerprint, set by the backend
        self._local = threading.local()

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        arrays = [np.ascontiguousarray(t.detach().cpu().numpy()) for t in inputs]
        results = request.infer(arrays, share_inputs=True, share_outputs=False)
        return [torch.from_numpy(np.asarray(results[port])) for port in self.compiled.outputs]

"""Checks of the ``device`` and ``torch_dtype`` options, before anything is loaded."""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, UnavailableError

WEIGHT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def check_dtype(dtype: Any, option: str = "torch_dtype") -> Any:
    """The torch dtype meant by ``dtype`` (a dtype or its name), or ConfigError: weights need a float type of 16 bits
    or more (integer and 8-bit float types hold no model's weights as such; quantization is a backend's job)."""
    if dtype is None:
        return None
    import torch

    value = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else dtype
    if not isinstance(value, torch.dtype) or not value.is_floating_point or value.itemsize < 2:
        raise ConfigError(
            f"{option}={dtype!r} cannot hold model weights; use one of {', '.join(WEIGHT_DTYPES)} "
            "(torch.float16 or the name 'float16')"
        )
    return value


def _available_devices() -> list[str]:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    return found


def check_device(device: Any, option: str = "device") -> Any:
    """``device`` as a torch.device that exists on this machine, or a clear error listing the ones that do."""
    if device is None:
        return None
    import torch

    try:
        value = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"{option}={device!r} is not a device name; use 'cpu', 'cuda', 'cuda:1' or 'mps'. Devices here: "
            f"{', '.join(_available_devices())}."
        ) from None
    if value.type in ("cpu", "meta"):
        return value
    module = torch.backends.mps if value.type == "mps" else getattr(torch, value.type, None)
    available = bool(module is not None and getattr(module, "is_available", lambda: False)())
    count = getattr(module, "device_count", lambda: 1)() if available else 0
    if not available or (value.index is not None and value.index >= count):
        why = "is not available" if not available else f"has only {count} device(s)"
        hint = (
            " (this torch build has no CUDA support)"
            if value.type == "cuda" and not torch.backends.cuda.is_built()
            else ""
        )
        raise UnavailableError(
            f"{option}={device!r}: {value.type} {why} on this machine{hint}. Devices here: "
            f"{', '.join(_available_devices())}; pass one of them, or leave {option} unset for the CPU."
        )
    return value

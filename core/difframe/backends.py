"""Backends: where a pipeline's models run. Eager PyTorch is the default; torch.compile and plugins' compiled
graphs (OpenVINO) replace the models' forward, keeping each model's contract (docs/architecture.md).

A backend is an object with ``apply(pipeline)``, built from its registration with the user's ``backend_options``.
Its spec states what a compiled graph leaves out (``cannot_run``) and which devices and dtypes it takes, so
``Framework.build`` refuses an impossible combination by name before any weight is read or converted. This module
imports torch only inside the backends that need it.
"""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigError
from .specs import BackendSpec

DEFAULT_BACKEND = "eager"
# the attention names that leave the choice to the backend (a compiled graph keeps the model's sdpa)
NEUTRAL_ATTENTION = (None, "auto", "sdpa", "default", "torch")


@runtime_checkable
class Backend(Protocol):
    def apply(self, pipeline: Any) -> None:
        """Make the pipeline's models run on this backend (called once, after loading)."""


# --- checks before loading -----------------------------------------------------------------------------------------
def refused_options(spec: BackendSpec, options: Mapping[str, Any]) -> list[str]:
    """The build options that ask for something this backend cannot run, each as 'option=value (why)'."""
    refused = []
    if "attention_backends" in spec.cannot_run:
        attention = options.get("attention")
        if attention not in NEUTRAL_ATTENTION or options.get("attention_slicing"):
            shown = attention if attention not in NEUTRAL_ATTENTION else "sliced"
            refused.append(f"attention={shown!r} (the compiled graph has its own attention)")
    if "attention_addons" in spec.cannot_run:
        for option in ("ip_adapter", "attention_addons", "token_merging"):
            if options.get(option):
                refused.append(f"{option}=... (a Python attention add-on; the compiled graph would skip it)")
    if "inference_hooks" in spec.cannot_run and options.get("hooks"):
        refused.append("hooks=... (inference hooks run Python inside the model; the compiled graph would skip them)")
    return refused


def check_build_options(spec: BackendSpec, options: Mapping[str, Any], device: str) -> None:
    """Raise ConfigError, naming the options, when the backend cannot run what ``options`` ask for."""
    problems = refused_options(spec, options)
    if spec.supports.devices and device not in spec.supports.devices:
        problems.append(f"device={device!r} (it runs on {', '.join(spec.supports.devices)})")
    dtype = options.get("torch_dtype")
    dtype_name = None if dtype is None else str(dtype).removeprefix("torch.")
    if dtype_name is not None and spec.supports.dtypes and dtype_name not in spec.supports.dtypes:
        problems.append(f"dtype={dtype_name!r} (it takes {', '.join(spec.supports.dtypes)} models)")
    if problems:
        raise ConfigError(
            f"backend {spec.name!r} cannot run with {'; '.join(problems)}. Drop those options, or use the default "
            f"backend ({DEFAULT_BACKEND!r}), which runs everything."
        )


# --- dtype="auto" ----------------------------------------------------------------------------------------------------
@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_fast_bfloat16() -> bool:
    """AMX or AVX-512 bf16: bfloat16 matrix products in hardware, where bf16 inference is about twice as fast."""
    flags = cpu_flags()
    if flags:
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    import torch

    return "AMX" in torch.backends.cpu.get_cpu_capability()


def auto_dtype(device: str, supported: tuple[str, ...] = ()) -> str:
    """dtype="auto": float16 on GPUs, bfloat16 on CPUs with AMX / AVX-512 bf16, float32 elsewhere (or when the
    backend takes only float32)."""
    if device.startswith("cuda"):
        choice = "float16"
    elif device == "cpu" and cpu_has_fast_bfloat16():
        choice = "bfloat16"
    else:
        choice = "float32"
    return choice if not supported or choice in supported else "float32"


# --- the core's backends ---------------------------------------------------------------------------------------------
class EagerBackend:
    """PyTorch as it is: every model's own forward, every hook and add-on. The default."""

    def apply(self, pipeline: Any) -> None:
        return None


class TorchCompileBackend:
    """``torch.compile`` on the denoiser (and the VAE decoder): the first calls at each new shape compile.

    Inductor's graph cache (on by default, in TORCHINDUCTOR_CACHE_DIR) makes later processes compile faster.
    ``compiler`` is torch.compile's own ``backend`` ("inductor"; "eager" traces without generating code).
    ``compile_time`` holds the seconds the first call of each compiled model took, once it ran.
    """

    def __init__(
        self,
        mode: str | None = None,
        dynamic: bool | None = None,
        fullgraph: bool = False,
        vae: bool = True,
        compiler: str = "inductor",
    ) -> None:
        modes = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if mode not in modes:
            raise ConfigError(f"torch-compile mode must be one of {modes}, got {mode!r}")
        self.options = {"mode": mode, "dynamic": dynamic, "fullgraph": fullgraph, "backend": compiler}
        self.vae = vae
        self.compile_time: dict[str, float] = {}

    def apply(self, pipeline: Any) -> None:
        import torch

        targets = {"unet": getattr(pipeline, "unet", None)}
        if self.vae and getattr(pipeline, "vae", None) is not None:
            targets["vae.decoder"] = getattr(pipeline.vae, "decoder", None)
        from .prepacking import prepack_convolutions, uses_prepacked_convolutions

        for label, module in targets.items():
            if isinstance(module, torch.nn.Module):
                if uses_prepacked_convolutions(module):  # opaque oneDNN calls break the graph; inductor packs its own
                    prepack_convolutions(module, False)
                module.forward = self._timed(label, torch.compile(module.forward, **self.options))

    def _timed(self, label: str, compiled: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if label in self.compile_time:
                return compiled(*args, **kwargs)
            begin = time.perf_counter()
            result = compiled(*args, **kwargs)
            self.compile_time[label] = time.perf_counter() - begin
            return result

        return forward


__all__ = [
    "Backend",
    "EagerBackend",
    "TorchCompileBackend",
    "auto_dtype",
    "check_build_options",
    "cpu_has_fast_bfloat16",
    "refused_options",
]

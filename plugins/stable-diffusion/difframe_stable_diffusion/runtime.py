"""Runtime options of a Stable Diffusion pipeline: attention (backends, add-ons by name), memory (slicing, tiling,
budget), CPU offload, prepacked convolutions, placement, the sampler in use, and running a model (offload and timing
in one place)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from difframe.attention import AttentionBackend, attention_modules, build_processor, resolve_backend_name
from difframe.attention import set_attention as set_module_attention
from difframe.prepacking import prepack_convolutions, prepacking_available

from .batching import parse_bytes
from .concurrency import ActiveCalls, CallGate
from .guided_steps import create_checked
from .metadata import ATTENTION_KEY, format_attention_record
from .request import check_device

ADDON_TARGETS = ("unet",)  # where an add-on goes unless it declares ``applies_to``
MODELS_WITH_ATTENTION = ("unet", "vae")
# an attention add-on by name: "NAME", ("NAME", {options}) or {"name": "NAME", **options}; or {NAME: options, ...}
AddonRequest = str | tuple[str, Mapping[str, Any]] | Mapping[str, Any]


class RuntimeMixin:
    """Build options ``attention``, ``attention_options``, ``memory_budget``, ``attention_slicing``,
    ``vae_slicing``, ``vae_tiling``, ``cpu_offload``, ``prepacked_convolutions``, ``reproducible``, and the methods
    that change them."""

    reproducible: bool = True  # image i of a batch equals the same image made alone, bit for bit (docs/pipelines.md)

    @classmethod
    def from_pretrained(cls, reference: Any, **options: Any) -> Any:
        """Attention options and add-ons are checked (names, options, where they go) before any weight loads."""
        framework = options.get("framework")
        if framework is None:
            from difframe.framework import Framework

            framework = options["framework"] = Framework()
        check_attention_build_options(framework, options)
        return super().from_pretrained(reference, **options)  # type: ignore[misc]

    def __init__(self, **components: Any) -> None:
        super().__init__(**components)
        self.memory_budget: int | None = None  # None: automatic, from free memory
        self._offload_device: torch.device | None = None
        self._active_module: torch.nn.Module | None = None
        self.timings: dict[str, float] | None = None  # set to {} to measure time inside the model calls
        self._gate = CallGate()  # calls shared, changes to the models exclusive (see concurrency.py)
        self._calls = ActiveCalls()
        self._offload_lock = threading.RLock()  # offloading moves shared modules between devices: one call at a time
        self._timings_lock = threading.Lock()

    def apply_options(
        self,
        attention: Any = None,
        attention_options: dict[str, Any] | None = None,
        memory_budget: int | str | None = None,
        attention_slicing: bool | int | str = False,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        cpu_offload: bool | str | torch.device = False,
        prepacked_convolutions: bool | Literal["auto"] = False,
        reproducible: bool = True,
        attention_addons: Sequence[AddonRequest] | Mapping[str, Mapping[str, Any]] | None = None,
        **rest: Any,
    ) -> None:
        """Build options: ``attention`` ("auto", "sdpa", "sliced", a plugin's backend) with ``attention_options``
        (the backend's settings, e.g. ``{"slice_size": "max"}``), ``attention_addons`` (registered attention
        add-ons: ``["NAME", ("NAME", {options})]`` or ``{"NAME": {options}}``), ``memory_budget`` (bytes or "8GB";
        default automatic), ``attention_slicing``, ``vae_slicing``, ``vae_tiling``, ``cpu_offload``,
        ``prepacked_convolutions`` (True, False, or "auto": when this torch build supports them), ``reproducible``
        (default True: every image of a batch runs the models as it would alone; False batches them, faster and
        up to a few 1e-6 different)."""
        super().apply_options(**rest)
        if attention_options is not None and attention is None:
            raise ValueError("attention_options needs attention= (the backend they configure)")
        if attention is not None:
            self.set_attention(attention, **(attention_options or {}))
        for name, options in addon_requests(attention_addons):
            self.add_attention_addon(name, **options)
        if attention_slicing:
            self.enable_attention_slicing("auto" if attention_slicing is True else attention_slicing)
        if vae_slicing:
            self.enable_vae_slicing()
        if vae_tiling:
            self.enable_vae_tiling()
        if cpu_offload:
            self.enable_model_cpu_offload(None if cpu_offload is True else cpu_offload)
        if prepacked_convolutions not in (True, False, "auto"):
            raise ValueError(f"prepacked_convolutions must be True, False or 'auto', got {prepacked_convolutions!r}")
        if prepacked_convolutions is True or (prepacked_convolutions == "auto" and prepacking_available()):
            self.enable_prepacked_convolutions()
        self.set_reproducible(reproducible)
        self.set_memory_budget(memory_budget)

    # --- attention ----------------------------------------------------------------------------------------------
    def set_attention(self, name: Any = "auto", **options: Any) -> None:
        """A backend (a registered name, "auto" for the best available, or an object with ``attend``) for the UNet's
        and the VAE's attention; an add-on (a callable) where it declares in ``applies_to`` (default: the UNet's
        attention only); None removes the add-ons. Waits for the calls in progress; later calls use the change."""
        framework = self._framework()
        if isinstance(name, str):
            check_attention_name(framework, name)
            processor = build_processor(name, framework=framework, device=self.execution_device.type, **options)
        elif options:
            raise TypeError("options go with a backend's name, not with an attention object")
        else:
            processor = name
        addon = processor is not None and not isinstance(processor, AttentionBackend)
        if addon and not callable(processor):
            raise TypeError(f"{type(processor).__name__} is neither an attention backend (attend) nor an add-on")
        targets = getattr(processor, "applies_to", ADDON_TARGETS) if addon else ("unet", "vae")
        unknown = sorted(set(targets) - {"unet", "vae"})
        if unknown:
            raise ValueError(f"an add-on's applies_to names {unknown}; it may name 'unet' and 'vae'")
        with self._gate.exclusive("set_attention"):
            for model in (getattr(self, target) for target in targets):
                if isinstance(model, torch.nn.Module):
                    with contextlib.suppress(ValueError):  # a model without attention modules
                        set_module_attention(model, processor)

    def add_attention_addon(self, name: str, /, **options: Any) -> Any:
        """Add the attention add-on registered as ``name`` (built with ``options``) where it declares
        (``applies_to``, default the UNet's attention). An attention module holds one add-on: one already there is
        refused, not replaced. Returns the add-on. Waits for the calls in progress; later calls use it."""
        addon = build_addon(self._framework(), name, options)
        with self._gate.exclusive("add_attention_addon"):
            models = [(target, getattr(self, target, None)) for target in addon_targets(addon)]
            for target, model in models:
                held = {id(m.addon): m.addon for _, m in _attention_of(model) if m.addon is not None}
                if held:
                    names = ", ".join(sorted({_addon_name(a) for a in held.values()}))
                    raise ValueError(
                        f"the {target}'s attention already has the add-on {names} (an attention module holds one): "
                        "remove it first with pipe.remove_attention_addon(NAME) (added by name), "
                        "pipe.unload_ip_adapter() (IP-Adapter's) or pipe.set_attention(None) (any)"
                    )
            for _, model in models:
                if _attention_of(model):
                    set_module_attention(model, addon)
            self.__dict__["_named_addons"] = [*self.attention_addons, addon]  # those removed otherwise dropped
        return addon

    def remove_attention_addon(self, addon: Any) -> None:
        """Remove an add-on added by name (its name, or the object ``add_attention_addon`` returned)."""
        added = self.attention_addons
        found = [a for a in added if a is addon or (isinstance(addon, str) and a.name == addon)]
        if not found:
            raise ValueError(
                f"no attention add-on {addon!r} was added by name to this pipeline; it has "
                f"{[a.name for a in added] or 'none'}"
            )
        with self._gate.exclusive("remove_attention_addon"):
            for target in MODELS_WITH_ATTENTION:
                for _, module in _attention_of(getattr(self, target, None)):
                    if module.addon is found[0]:
                        module.addon = None
            self.__dict__["_named_addons"].remove(found[0])

    @property
    def attention_addons(self) -> list[Any]:
        """The add-ons added by name (build's ``attention_addons``, ``add_attention_addon``) that are still set."""
        live = {id(m.addon) for t in MODELS_WITH_ATTENTION for _, m in _attention_of(getattr(self, t, None))}
        return [a for a in self.__dict__.get("_named_addons", []) if id(a) in live]

    def attention_record(self) -> dict[str, str]:
        """The PNG's record of the attention: the UNet's backends' registered names, then the add-ons of the UNet
        and VAE (one added by name with its options, which change the image); nothing where it is the default
        ("auto"'s choice on this device, no add-on). Backend options are not written: they change memory, not
        the image."""
        if not isinstance(self.unet, torch.nn.Module):
            return {}
        backends: list[str] = []
        for _, module in attention_modules(self.unet):
            backend = self._processor_name(module.backend)
            if backend not in backends:
                backends.append(backend)
        named = {id(a) for a in self.attention_addons}
        addons: list[tuple[str, dict[str, Any]]] = []
        for target in MODELS_WITH_ATTENTION:
            for _, module in _attention_of(getattr(self, target, None)):
                if module.addon is None:
                    continue
                options = dict(module.addon.options) if id(module.addon) in named else {}
                entry = (_addon_name(module.addon), options)
                if entry not in addons:
                    addons.append(entry)
        automatic = resolve_backend_name(self._framework(), "auto", device=self.execution_device.type)
        if not backends or (backends == [automatic] and not addons):  # the default is not written, as the web UIs do
            return {}
        return {ATTENTION_KEY: format_attention_record(backends, addons)}

    def _processor_name(self, processor: Any) -> str:
        kind = type(processor)
        for registration in self._framework().registry.all("attention_processor"):
            if registration.spec.factory == f"{kind.__module__}:{kind.__qualname__}":
                return registration.name
        return kind.__name__

    def enable_attention_slicing(self, slice_size: int | str = "auto") -> None:
        """Attention a few heads at a time: the score matrices of one slice in memory instead of all heads."""
        self.set_attention("sliced", slice_size=slice_size)

    def disable_attention_slicing(self) -> None:
        self.set_attention("auto")

    # --- memory and speed ---------------------------------------------------------------------------------------
    def enable_vae_slicing(self) -> None:
        """Decode a batch one image at a time: the VAE's peak memory of one image, same results."""
        with self._gate.exclusive("enable_vae_slicing"):
            self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        with self._gate.exclusive("disable_vae_slicing"):
            self.vae.disable_slicing()

    def enable_vae_tiling(self, **options: Any) -> None:
        """Decode and encode large images in overlapping tiles: memory bounded by the tile size."""
        with self._gate.exclusive("enable_vae_tiling"):
            self.vae.enable_tiling(**options)

    def disable_vae_tiling(self) -> None:
        with self._gate.exclusive("disable_vae_tiling"):
            self.vae.disable_tiling()

    def enable_prepacked_convolutions(self) -> None:
        """CPU inference in float32 reuses the UNet's and VAE's convolution weights reordered once for oneDNN: a
        faster step where latents are small (the built-in model's are 8x8), one more copy of those weights in memory.
        """
        with self._gate.exclusive("enable_prepacked_convolutions"):
            for model in (self.unet, self.vae):  # any torch module: a plugin's model need not be a ModelMixin
                prepack_convolutions(model, True)

    def disable_prepacked_convolutions(self) -> None:
        with self._gate.exclusive("disable_prepacked_convolutions"):
            for model in (self.unet, self.vae):
                prepack_convolutions(model, False)

    def set_reproducible(self, reproducible: bool = True) -> None:
        """True (the default): each image runs the text encoder, UNet and VAE in a batch of its own (its guidance
        pair), so image i is the same bit for bit alone or in any batch; False: images run together (faster;
        matrix kernels then block by batch size and results differ by a few 1e-6). docs/pipelines.md."""
        if not isinstance(reproducible, bool):
            raise TypeError(f"reproducible must be True or False, got {reproducible!r}")
        self.reproducible = reproducible

    def set_memory_budget(self, budget: int | str | None) -> None:
        """Bytes that one chunk of a batch may use ("8GB"); None: automatic, from the device's free memory;
        "unlimited": never split a batch."""
        self.memory_budget = budget_bytes(budget)

    def enable_model_cpu_offload(self, device: str | torch.device | None = None) -> None:
        """Keep every model in CPU memory and move each to ``device`` only while it runs (text encoder, then UNet,
        then VAE). Accelerator memory then holds the largest model (the UNet) rather than all of them, at the
        cost of one transfer per model per call. Default device: CUDA if available, else the current device."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else self.device
        device = check_device(device)
        with self._gate.exclusive("enable_model_cpu_offload"):
            self._offload_device = device
            self._active_module = None
            for module in self._modules():
                module.to("cpu")

    def disable_model_cpu_offload(self) -> None:
        with self._gate.exclusive("disable_model_cpu_offload"):
            device = self._offload_device
            self._offload_device = None
            self._active_module = None
            if device is not None:
                self.to(device)

    def to(self, device: Any = None, dtype: Any = None) -> Any:
        """Move or cast every model; waits for the calls in progress."""
        if isinstance(device, (str, torch.device)):
            device = check_device(device)
        with self._gate.exclusive("to"):
            return super().to(device, dtype)

    @property
    def execution_device(self) -> torch.device:
        return self._offload_device if self._offload_device is not None else self.device

    def _framework(self) -> Any:
        if self.framework is None:
            from difframe.framework import Framework

            self.framework = Framework()
        return self.framework

    # --- the sampler ----------------------------------------------------------------------------------------------
    def set_scheduler(self, name: str, /, **overrides: Any) -> Any:
        """Swap the sampler in one line: ``pipe.set_scheduler("euler_a")``. The model's noise schedule is kept; the
        options the current sampler's name implied (Karras sigmas, solver order, ...) are not carried over.

        Every call samples with its own copy of the sampler taken when it starts, so calls in progress (in other
        threads, or this one's callback) finish with the sampler they started with; later calls use the new one."""
        framework = self._framework()
        config = dict(self.scheduler.config)
        current = self.scheduler_name
        try:
            implied = framework.get("scheduler", current).spec.options if current else {}
        except Exception:
            implied = {}
        base = {k: v for k, v in config.items() if k not in implied}
        self.__dict__["scheduler"] = framework.scheduler(name, base, **overrides)
        return self.scheduler

    @property
    def scheduler_name(self) -> str | None:
        """The registered name of the current sampler (the most specific one whose class and options match)."""
        return self._sampler_name(self.scheduler)

    def _sampler_name(self, scheduler: Any) -> str | None:
        cached = getattr(scheduler, "_difframe_name", None)
        if cached is not None:
            return cached
        best, best_score = None, -1
        try:
            registrations = self._framework().registry.all("scheduler")
        except Exception:
            registrations = []
        for registration in registrations:
            module_name, _, attribute = registration.spec.factory.partition(":")
            if module_name != type(scheduler).__module__ or attribute != type(scheduler).__qualname__:
                continue
            options = registration.spec.options
            if all(scheduler.config.get(k) == v for k, v in options.items()) and len(options) > best_score:
                best, best_score = registration.name, len(options)
        return best or type(scheduler).__name__

    # --- running models (offload and timing in one place) ------------------------------------------------------
    def _activate(self, module: Any) -> None:
        if self._offload_device is None or not isinstance(module, torch.nn.Module) or module is self._active_module:
            return
        if self._active_module is not None:
            self._active_module.to("cpu")
        module.to(self._offload_device)
        self._active_module = module

    def _release(self) -> None:
        if self._offload_device is not None and self._active_module is not None:
            self._active_module.to("cpu")
            self._active_module = None

    def _run(self, label: str, module: Any, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self._activate(module)
        timings = self.timings
        if timings is None:
            return function(*args, **kwargs)
        begin = time.perf_counter()
        result = function(*args, **kwargs)
        with self._timings_lock:
            timings[label] = timings.get(label, 0.0) + time.perf_counter() - begin
        return result


def budget_bytes(budget: int | str | None) -> int | None:
    """Bytes; -1 for "unlimited"; None for automatic."""
    if isinstance(budget, str) and budget.strip().lower() in ("unlimited", "none", "inf"):
        return -1
    return parse_bytes(budget)


def check_attention_name(framework: Any, name: str) -> None:
    resolved = resolve_backend_name(framework, name)
    registration = framework.get("attention_processor", resolved)
    if registration.spec.role != "backend":
        raise ValueError(
            f"attention {name!r} is an add-on, not a backend; add it with attention_addons=[{name!r}] at build, "
            f"pipe.add_attention_addon({name!r}) or `difframe generate --attention-addon {name}`"
        )
    reason = registration.unavailable_reason
    if reason is not None:
        raise ValueError(f"attention backend {resolved!r} cannot run on this machine: {reason}")


# --- attention add-ons by name ------------------------------------------------------------------------------------
def addon_names(framework: Any) -> list[str]:
    """The registered attention add-ons."""
    return [r.name for r in framework.registry.all("attention_processor") if r.spec.role == "addon"]


def addon_requests(addons: Any) -> list[tuple[str, dict[str, Any]]]:
    """``attention_addons`` -> [(name, options)]: a list of "NAME", ("NAME", {options}) or {"name": ..., **options},
    or one mapping {"NAME": {options}}."""
    if addons is None:
        return []
    if isinstance(addons, str):
        addons = [addons]
    if isinstance(addons, Mapping):
        requests = []
        for name, options in addons.items():
            if not isinstance(options, Mapping | None):
                raise TypeError(f"attention_addons[{name!r}] must be the add-on's options (a dict), got {options!r}")
            requests.append((name, dict(options or {})))
        return requests
    requests = []
    for request in addons:
        if isinstance(request, str):
            requests.append((request, {}))
        elif isinstance(request, tuple) and len(request) == 2 and isinstance(request[1], Mapping):
            requests.append((request[0], dict(request[1])))
        elif isinstance(request, Mapping) and isinstance(request.get("name"), str):
            requests.append((request["name"], {k: v for k, v in request.items() if k != "name"}))
        else:
            raise TypeError(
                "an attention add-on is a registered name, (name, {options}) or {'name': name, **options}; "
                f"got {request!r}"
            )
    return requests


def build_addon(framework: Any, name: Any, options: Mapping[str, Any]) -> Any:
    """The attention add-on registered as ``name``, built with ``options`` (options it does not take are refused).
    Unknown names are refused with the installed add-ons; backends with how to choose them."""
    installed = addon_names(framework)
    if not isinstance(name, str):
        raise TypeError(f"an attention add-on is named by a string, got {name!r}; installed: {installed or 'none'}")
    try:
        registration = framework.get("attention_processor", name)
    except LookupError:
        from difframe.errors import UnknownComponentError

        listed = ", ".join(installed) or "none (a plugin registers one with role='addon')"
        raise UnknownComponentError(
            f"no attention add-on {name!r} is installed; attention add-ons installed: {listed}"
        ) from None
    if registration.spec.role != "addon":
        raise ValueError(
            f"{name!r} is an attention backend, not an add-on: choose it with attention={name!r} "
            f"(--attention {name}); attention add-ons installed: {', '.join(installed) or 'none'}"
        )
    try:
        json.dumps(dict(options))
    except (TypeError, ValueError):
        raise TypeError(
            f"attention add-on {registration.name!r}: options must be JSON values (numbers, text, lists, dicts), as "
            f"the PNG parameters record them; got {dict(options)!r}"
        ) from None
    addon = create_checked(framework, "attention_processor", registration.name, dict(options))
    if isinstance(addon, AttentionBackend) or not callable(addon):
        raise TypeError(
            f"attention add-on {registration.name!r} built a {type(addon).__name__}, which is not an add-on (a "
            "callable without attend); its plugin registers it wrongly"
        )
    addon_targets(addon)
    return addon


def addon_targets(addon: Any) -> tuple[str, ...]:
    """Where an add-on goes: its ``applies_to`` ("unet", "vae"), default the UNet."""
    targets = tuple(getattr(addon, "applies_to", ADDON_TARGETS))
    unknown = sorted(set(targets) - set(MODELS_WITH_ATTENTION))
    if unknown:
        raise ValueError(f"an add-on's applies_to names {unknown}; it may name 'unet' and 'vae'")
    return targets


def check_attention_build_options(framework: Any, options: Mapping[str, Any]) -> None:
    """What ``attention``, ``attention_options`` and ``attention_addons`` ask for, checked before any weight
    loads: names, options, and add-ons that would share an attention module (one add-on per module)."""
    attention, attention_options = options.get("attention"), options.get("attention_options")
    if attention_options is not None and attention is None:
        raise ValueError("attention_options needs attention= (the backend they configure)")
    if attention_options is not None and not isinstance(attention_options, Mapping):
        raise TypeError(f"attention_options must be a dict of the backend's options, got {attention_options!r}")
    if isinstance(attention, str) and attention_options:
        check_attention_name(framework, attention)
        create_checked(framework, "attention_processor", resolve_backend_name(framework, attention), attention_options)
    taken: dict[str, str] = {}
    for name, addon_options in addon_requests(options.get("attention_addons")):
        addon = build_addon(framework, name, addon_options)
        for target in addon_targets(addon):
            if target in taken:
                raise ValueError(
                    f"attention add-ons {taken[target]!r} and {name!r} both apply to the {target}'s attention, "
                    "whose modules hold one add-on each; keep one of them"
                )
            taken[target] = name
    if "unet" in taken and options.get("ip_adapter") is not None:
        raise ValueError(
            f"attention add-on {taken['unet']!r} and ip_adapter both put an add-on on the UNet's attention, whose "
            "modules hold one add-on each; keep one of them"
        )


def _attention_of(model: Any) -> list[tuple[str, Any]]:
    return list(attention_modules(model)) if isinstance(model, torch.nn.Module) else []


def _addon_name(addon: Any) -> str:
    return getattr(addon, "name", None) or type(addon).__name__

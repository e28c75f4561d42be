"""Framework: the installed plugins, their registrations, and building components and pipelines from them."""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import DifframeError, ModelLoadError, PluginError, UnavailableError, UnknownComponentError
from .plugins import PluginInfo, load_plugins
from .registry import Problem, Registration


def packaged_folder(reference: str) -> str:
    """'package:relative/path' -> that folder inside the installed package (found without importing it)."""
    package, separator, relative = reference.partition(":")
    if not separator or not package.isidentifier():
        return reference  # a folder or a hub id
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise ModelLoadError(
            f"the model {reference!r} lives in the package {package!r}, which is not installed; install it, "
            "or pass model='<folder or hub id>'"
        )
    return str(Path(locations[0]) / relative)


def is_packaged_folder(model: Any, reference: str) -> bool:
    """Whether ``model`` (a path) is the folder that ``reference`` ('package:relative/path') names."""
    from pathlib import Path

    try:
        return Path(os.fspath(model)).expanduser().resolve() == Path(packaged_folder(reference)).resolve()
    except (TypeError, OSError, ModelLoadError):  # not a path, or the package is not installed
        return False


class Framework:
    """Discovers plugins and builds what they register.

    ``Framework()`` loads every plugin installed under the entry-point group ``difframe`` (filtered by
    DIFFRAME_LOAD_PLUGINS / DIFFRAME_DISABLE_PLUGINS). ``Framework(plugins=[...])`` uses only the given plugin
    modules or objects; pass ``entry_points=True`` as well to add them to the installed ones.
    """

    def __init__(self, plugins: Iterable[Any] | None = None, *, entry_points: bool | None = None) -> None:
        use_entry_points = plugins is None if entry_points is None else entry_points
        self.plugin_manager, self.registry, self._plugins = load_plugins(plugins, use_entry_points)

    # --- what is installed --------------------------------------------------------------------------------------
    @property
    def plugins(self) -> list[PluginInfo]:
        return [self._plugins[name] for name in sorted(self._plugins)]

    @property
    def problems(self) -> list[Problem]:
        return list(self.registry.problems)

    @property
    def schedulers(self) -> list[str]:
        return self.registry.names("scheduler")

    @property
    def pipelines(self) -> list[str]:
        return self.registry.names("pipeline")

    @property
    def models(self) -> list[str]:
        return self.registry.names("model")

    @property
    def conditioners(self) -> list[str]:
        return self.registry.names("conditioner")

    @property
    def attention_processors(self) -> list[str]:
        return self.registry.names("attention_processor")

    @property
    def backends(self) -> list[str]:
        return self.registry.names("backend")

    def get(self, kind: str, name: str) -> Registration:
        try:
            return self.registry.get(kind, name)
        except UnknownComponentError as error:
            broken = [f"{p.plugin} ({p.message})" for p in self.registry.problems if p.stage in ("import", "hook")]
            if broken:
                raise UnknownComponentError(
                    f"{error} Plugins that failed to load, one of which may provide it: {'; '.join(broken)}"
                ) from None
            raise

    # --- building -----------------------------------------------------------------------------------------------
    def first_working(self, candidates: list[Registration]) -> tuple[Registration, Any]:
        """The first registration whose factory imports and can run here, with the factory. A broken provider
        never replaces a working one: its failure is recorded (``problems``, `difframe plugins`) and warned about,
        and the next provider of the same name or layout class is used."""
        failures: list[DifframeError] = []
        for registration in candidates:
            try:
                factory = self.load_factory(registration)
            except (PluginError, UnavailableError) as error:
                failures.append(error)
                continue
            for error in failures:
                warnings.warn(f"{error}; using plugin {registration.plugin!r} instead", stacklevel=3)
            return registration, factory
        raise failures[0]

    def load_factory(self, registration: Registration) -> Any:
        """Import a registration's factory, checking first that it can run here."""
        reason = registration.unavailable_reason
        if reason is not None:
            raise UnavailableError(
                f"{registration.kind.replace('_', ' ')} {registration.name!r} (plugin {registration.plugin!r}) "
                f"cannot run on this machine: {reason}"
            )
        module_name, _, attribute = registration.spec.factory.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
        except (Exception, SystemExit) as error:
            message = (
                f"plugin {registration.plugin!r} registers {registration.kind} {registration.name!r} with factory "
                f"{registration.spec.factory!r}, which failed to import: {type(error).__name__}: {error}"
            )
            self._record_problem(Problem(registration.plugin, "factory", message))
            raise PluginError(message) from error
        return target

    def _record_problem(self, problem: Problem) -> None:
        if problem in self.registry.problems:
            return
        self.registry.problems.append(problem)
        info = self._plugins.get(problem.plugin)
        if info is not None:
            info.problems.append(problem)

    def create(self, kind: str, name: str, /, config: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
        """Build a component by name: its spec's options, then ``config``, then ``overrides``, validated first."""
        self.get(kind, name)  # an unknown name: the error lists the plugins that failed to load
        registration, factory = self.first_working(self.registry.candidates(kind, name))
        values = {**(config or {}), **registration.spec.options, **overrides}
        if hasattr(factory, "from_config"):
            label = f"{kind.replace('_', ' ')} {registration.name!r} ({factory.__name__})"
            if hasattr(factory, "check_option_names"):
                factory.check_option_names(overrides, label=label)
            return factory.from_config(factory.validate_config(values, label=label))
        return factory(**values)

    def scheduler(self, name: str, /, config: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
        """A sampler by name; pass another scheduler's ``.config`` to keep a model's noise schedule."""
        return self.create("scheduler", name, config, **overrides)

    def build(self, pipeline: str, /, model: Any = None, **options: Any) -> Any:
        """Build a registered pipeline from a model folder or hub id (or the pipeline's default model, with the
        build options its registration gives that model unless ``options`` set them).

        Options are passed to the pipeline's ``from_pretrained``: components by name or instance
        (``scheduler="dpmpp"``), ``attention``, ``device``, ``torch_dtype``/``dtype``, ``variant`` and hub options.
        ``backend`` (a registered backend, default "eager") with ``backend_options``, or ``compile=True``, chooses
        where the models run; ``dtype="auto"`` picks bfloat16 on CPUs that have it in hardware (docs/backends.md).
        """
        self.get("pipeline", pipeline)
        registration, pipeline_class = self.first_working(self.registry.candidates("pipeline", pipeline))
        if (default := registration.spec.default_model) is not None:
            if model is None:
                model = packaged_folder(default)
            if is_packaged_folder(model, default):  # named or not, the default model gets its options
                options = {**registration.spec.default_model_options, **options}
        if model is None:
            raise ValueError(f"pipeline {registration.name!r} has no default model; pass model='<folder or hub id>'")
        if "dtype" in options:
            options["torch_dtype"] = options.pop("dtype")
        backend = self._backend_for(options)
        built = pipeline_class.from_pretrained(model, framework=self, **options)
        backend.apply(built)
        built.backend = backend
        return built

    def _backend_for(self, options: dict[str, Any]) -> Any:
        """Pop ``backend``, ``backend_options`` and ``compile`` from build options; resolve ``dtype="auto"``; refuse
        what the backend cannot run. Nothing is loaded or converted yet."""
        from .backends import DEFAULT_BACKEND, EagerBackend, auto_dtype, check_build_options
        from .specs import BackendSpec

        name = options.pop("backend", None)
        backend_options = dict(options.pop("backend_options", None) or {})
        if options.pop("compile", False):
            if name not in (None, DEFAULT_BACKEND, "torch-compile"):
                raise ValueError(f"compile=True is the 'torch-compile' backend; it cannot be combined with {name!r}")
            name = "torch-compile"
        device = str(options.get("device") or "cpu").split(":")[0]
        if name is None and DEFAULT_BACKEND not in self.backends:  # a Framework of explicit plugins only
            registration, spec = None, BackendSpec(name=DEFAULT_BACKEND, factory="difframe.backends:EagerBackend")
        else:
            registration = self.get("backend", name or DEFAULT_BACKEND)
            spec = registration.spec
        if registration is not None and registration.unavailable_reason is not None:
            self.load_factory(registration)  # raises, with the reason (a missing package, no GPU) first
        if isinstance(options.get("torch_dtype"), str) and options["torch_dtype"] == "auto":
            import torch

            options["torch_dtype"] = getattr(torch, auto_dtype(device, spec.supports.dtypes))
        check_build_options(spec, options, device)
        if registration is None:
            return EagerBackend(**backend_options)
        return self.create("backend", registration.name, **backend_options)

    def __repr__(self) -> str:
        return f"Framework(plugins={[p.name for p in self.plugins]})"

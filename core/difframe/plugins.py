"""Plugin discovery: entry points of group 'difframe', each loaded on its own so one broken plugin stays alone."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy
from pydantic import ValidationError

from . import hookspecs
from .registry import Problem, Registration, Registry
from .specs import HOOK_KINDS, SPEC_TYPES

ENTRY_POINT_GROUP = "difframe"
LOAD_ENV = "DIFFRAME_LOAD_PLUGINS"  # comma-separated: load only these plugins ("" loads none)
DISABLE_ENV = "DIFFRAME_DISABLE_PLUGINS"  # comma-separated: skip these plugins
SLOW_ENV = "DIFFRAME_SLOW_PLUGIN_SECONDS"  # a plugin whose import and hooks take longer is reported as slow
SLOW_DEFAULT_S = 1.0


@dataclass
class PluginInfo:
    """One plugin as `difframe plugins` shows it."""

    name: str
    version: str | None
    module: str
    hooks: list[str] = field(default_factory=list)
    registrations: list[Registration] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    load_seconds: float = 0.0  # importing the plugin and running its registration hooks

    @property
    def broken(self) -> bool:
        return any(p.stage in ("import", "hook", "factory") for p in self.problems)


def _names_from_env(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def _entry_point_plugin_name(point: EntryPoint) -> str:
    return point.dist.name.lower().replace("_", "-") if point.dist is not None else point.name


def selected_entry_points() -> list[EntryPoint]:
    """Installed plugin entry points after DIFFRAME_LOAD_PLUGINS / DIFFRAME_DISABLE_PLUGINS, in a stable order."""
    only, disabled = _names_from_env(LOAD_ENV), _names_from_env(DISABLE_ENV) or set()
    chosen = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        names = {_entry_point_plugin_name(point), point.name.lower()}
        if (only is not None and not names & only) or names & disabled:
            continue
        chosen.append(point)
    return sorted(chosen, key=lambda p: (_entry_point_plugin_name(p), p.name))


def _short_error(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"called sys.exit({error.code!r})"
    return f"{type(error).__name__}: {error}"


def _slow_threshold() -> float:
    try:
        return float(os.environ.get(SLOW_ENV, SLOW_DEFAULT_S))
    except ValueError:
        return SLOW_DEFAULT_S


class PluginLoader:
    """Fills a Registry from plugin objects and entry points, recording every problem instead of raising."""

    def __init__(self, manager: pluggy.PluginManager, registry: Registry) -> None:
        self.manager = manager
        self.registry = registry
        self.plugins: dict[str, PluginInfo] = {}

    def add_entry_point(self, point: EntryPoint) -> None:
        name = _entry_point_plugin_name(point)
        if name in self.plugins:  # a second entry point of one distribution
            name = f"{name}:{point.name}"
        version = point.dist.version if point.dist is not None else None
        info = PluginInfo(name=name, version=version, module=point.value)
        self.plugins[name] = info
        started = time.perf_counter()
        try:
            plugin = point.load()
        except (Exception, SystemExit) as error:  # a plugin that exits at import is reported, not fatal
            self._problem(info, "import", f"failed to import {point.value}: {_short_error(error)}")
            return
        finally:
            info.load_seconds += time.perf_counter() - started
        self._register(info, plugin)

    def add_object(self, plugin: Any, name: str | None = None) -> None:
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        module = getattr(plugin, "__name__", type(plugin).__module__)
        info = PluginInfo(name=name, version=getattr(plugin, "__version__", None), module=module)
        self.plugins[name] = info
        self._register(info, plugin)

    def _register(self, info: PluginInfo, plugin: Any) -> None:
        try:
            self.manager.register(plugin, name=info.name)
        except Exception as error:  # pluggy rejects hook implementations whose arguments do not match the spec
            self._problem(info, "import", f"invalid hook implementation: {_short_error(error)}")
            return
        info.hooks = sorted(caller.name for caller in self.manager.get_hookcallers(plugin) or [])

    def collect(self) -> None:
        """Call every registration hook of every plugin, one plugin at a time, in name order."""
        for hook_name, kind in HOOK_KINDS.items():
            caller = getattr(self.manager.hook, hook_name)
            for impl in sorted(caller.get_hookimpls(), key=lambda i: i.plugin_name):
                info = self.plugins[impl.plugin_name]
                started = time.perf_counter()
                try:
                    impl.function(register=self._register_callback(info, kind))
                except (Exception, SystemExit) as error:
                    where = traceback.extract_tb(error.__traceback__)[-1]
                    self._problem(
                        info,
                        "hook",
                        f"{hook_name} raised {_short_error(error)} (at {where.filename}:{where.lineno})",
                    )
                finally:
                    info.load_seconds += time.perf_counter() - started

    def report_slow(self) -> None:
        """Name the plugins that make every Framework() and `difframe plugins` wait."""
        threshold = _slow_threshold()
        for info in self.plugins.values():
            if info.load_seconds > threshold:
                self._problem(
                    info,
                    "slow",
                    f"took {info.load_seconds:.1f} s to import and register (over {threshold:g} s, "
                    f"{SLOW_ENV}); every Framework() and `difframe plugins` waits for it. Import heavy modules in "
                    "the factories, not at plugin import, or disable it with DIFFRAME_DISABLE_PLUGINS.",
                )

    def _register_callback(self, info: PluginInfo, kind: str) -> Callable[..., None]:
        spec_type = SPEC_TYPES[kind]

        def register(spec: Any = None, /, **fields: Any) -> None:
            if spec is not None and fields:
                raise TypeError("register() takes a spec object or keyword fields, not both")
            if spec is not None and not isinstance(spec, spec_type):
                label = getattr(spec, "name", spec)
                self._problem(
                    info,
                    "spec",
                    f"{kind} {label!r}: expected a difframe.specs.{spec_type.__name__}, got {type(spec).__name__}",
                )
                return
            try:
                spec = spec or spec_type(**fields)
            except ValidationError as error:
                details = "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors(include_url=False)
                )
                self._problem(info, "spec", f"{kind} {fields.get('name', '?')!r} is invalid: {details}")
                return
            registration = Registration(spec=spec, plugin=info.name)
            info.registrations.append(registration)
            self.registry.add(registration)

        return register

    def _problem(self, info: PluginInfo, stage: str, message: str) -> None:
        problem = Problem(info.name, stage, message)
        info.problems.append(problem)
        self.registry.problems.append(problem)


def load_plugins(
    plugins: Iterable[Any] | None, use_entry_points: bool
) -> tuple[pluggy.PluginManager, Registry, dict[str, PluginInfo]]:
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    loader = PluginLoader(manager, registry)
    if use_entry_points:
        for point in selected_entry_points():
            loader.add_entry_point(point)
    for plugin in plugins or ():
        loader.add_object(plugin)
    loader.collect()
    loader.report_slow()
    for problem in registry.problems:  # conflicts are found by the registry; attach them to their plugin
        info = loader.plugins.get(problem.plugin)
        if info is not None and problem not in info.problems:
            info.problems.append(problem)
    return manager, registry, loader.plugins

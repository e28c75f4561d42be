"""The registry: every spec the plugins registered, looked up by kind and name."""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass, field

from .availability import unavailable_reason
from .errors import UnknownComponentError
from .specs import ComponentSpec

# Names users may ask for that a package outside this checkout provides, so an error can say what to install.
KNOWN_PROVIDERS: dict[str, dict[str, str]] = {
    "scheduler": {"lcm": "difframe-plugin-lcm", "tcd": "difframe-plugin-lcm"},
    "attention_processor": {"xformers": "difframe-xformers-attn", "triton": "difframe-cuda-kernels"},
    "pipeline": {"stable-diffusion": "difframe-stable-diffusion"},
    "backend": {"openvino": "difframe-openvino", "cuda-kernels": "difframe-cuda-kernels"},
}


def normalize(name: str) -> str:
    return " ".join(name.casefold().split())


@dataclass(frozen=True)
class Registration:
    spec: ComponentSpec
    plugin: str

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def unavailable_reason(self) -> str | None:
        return unavailable_reason(self.spec.requires)


@dataclass(frozen=True)
class Problem:
    """Something a plugin did wrong; reported by `difframe plugins`, never fatal to other plugins."""

    plugin: str
    stage: str  # "import", "hook", "spec" or "conflict"
    message: str


@dataclass
class Registry:
    _by_kind: dict[str, dict[str, Registration]] = field(default_factory=lambda: defaultdict(dict))
    _lookup: dict[str, dict[str, Registration]] = field(default_factory=lambda: defaultdict(dict))
    shadowed: list[Registration] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def add(self, registration: Registration) -> None:
        """First registration of a name wins; plugins are added in sorted order, so the outcome is stable."""
        spec, lookup = registration.spec, self._lookup[registration.kind]
        keys = {normalize(spec.name), *(normalize(alias) for alias in spec.aliases)}
        taken = {key: lookup[key] for key in keys if key in lookup}
        if normalize(spec.name) in taken:
            winner = taken[normalize(spec.name)]
            self.shadowed.append(registration)
            self.problems.append(
                Problem(
                    registration.plugin,
                    "conflict",
                    f"{registration.kind} {spec.name!r} is also registered by plugin {winner.plugin!r}, which wins; "
                    f"ask for '{registration.plugin}:{spec.name}' to use this one",
                )
            )
            return
        for key, winner in taken.items():
            self.problems.append(
                Problem(
                    registration.plugin,
                    "conflict",
                    f"alias {key!r} of {registration.kind} {spec.name!r} already names {winner.name!r} "
                    f"(plugin {winner.plugin!r}); the alias is ignored",
                )
            )
        self._by_kind[registration.kind][spec.name] = registration
        for key in keys - taken.keys():
            lookup[key] = registration

    def all(self, kind: str | None = None) -> list[Registration]:
        kinds = [kind] if kind else sorted(self._by_kind)
        return [reg for k in kinds for _, reg in sorted(self._by_kind.get(k, {}).items())]

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind.get(kind, {}))

    def get(self, kind: str, name: str) -> Registration:
        """Look up by name or alias (case-insensitive), or 'plugin:name' to pick one plugin's registration."""
        plugin, _, bare = name.rpartition(":")
        if plugin:
            for registration in [*self._by_kind.get(kind, {}).values(), *self.shadowed]:
                if registration.plugin == plugin and registration.kind == kind and registration.name == bare:
                    return registration
        elif (found := self._lookup.get(kind, {}).get(normalize(name))) is not None:
            return found
        raise UnknownComponentError(self._unknown_message(kind, name))

    def candidates(self, kind: str, name: str) -> list[Registration]:
        """What ``get`` returns, then the registrations it shadows under that name, in plugin order: the fallbacks
        when the first one's factory fails. A 'plugin:name' request names one registration and has none."""
        first = self.get(kind, name)
        if ":" in name:
            return [first]
        return [first, *(r for r in self.shadowed if r.kind == kind and r.name == first.name)]

    def layout_candidates(self, library: str, class_name: str, kind: str | None = None) -> list[Registration]:
        """Every registration that loads a model_index.json entry, ``for_layout``'s first."""
        found = [r for r in [*self.all(kind), *self.shadowed] if (library, class_name) in r.spec.loads]
        return [r for r in found if kind is None or r.kind == kind]

    def for_layout(self, library: str, class_name: str, kind: str | None = None) -> Registration | None:
        """The registration that loads a model_index.json entry such as ('diffusers', 'DDIMScheduler')."""
        for registration in self.all(kind):
            if (library, class_name) in registration.spec.loads:
                return registration
        return None

    def _unknown_message(self, kind: str, name: str) -> str:
        label = kind.replace("_", " ")
        installed = self.names(kind)
        message = f"no {label} named {name!r} is installed."
        close = difflib.get_close_matches(normalize(name), list(self._lookup.get(kind, {})), n=1, cutoff=0.6)
        if close:
            message += f" Did you mean {self._lookup[kind][close[0]].name!r}?"
        provider = KNOWN_PROVIDERS.get(kind, {}).get(normalize(name))
        if provider:
            message += f" It is provided by the package {provider!r}: pip install {provider}."
        message += f" Installed {label}s: {', '.join(installed) if installed else 'none'}."
        message += " `difframe plugins` lists them with the plugin that provides each."
        return message

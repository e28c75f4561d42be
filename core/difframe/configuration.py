"""ConfigMixin: constructor arguments recorded as a config that round-trips through JSON."""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import os
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import ConfigDict, ValidationError, create_model

from .atomic import atomic_write_text
from .errors import ConfigError, ModelLoadError

T = TypeVar("T", bound="ConfigMixin")

# Bookkeeping keys of the shared layout: read and rewritten, never passed to constructors.
METADATA_KEYS = frozenset(
    {"_class_name", "_diffusers_version", "_difframe_version", "_use_default_values", "_name_or_path"}
)


class Config(Mapping[str, Any]):
    """A read-only mapping with attribute access: ``scheduler.config.num_train_timesteps``."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") or key == "_values":  # copy and pickle probe dunders before _values exists
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"config has no field {key!r}; fields: {', '.join(sorted(self._values))}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("a config is read-only; build a new component with from_config(config, **changes)")

    def __repr__(self) -> str:
        return f"Config({self._values!r})"

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return Config, (self._values,)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return os.fspath(value)
    return value


def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(cls.__init__).parameters
    return {
        name: p
        for name, p in list(parameters.items())[1:]
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name not in getattr(cls, "ignore_for_config", ())
    }


class ConfigMixin:
    """Records the arguments of the most-derived ``__init__`` as ``self.config``.

    ``from_config`` validates a config against the typed constructor (pydantic) and keeps keys the class does not
    know, so a config saved by another tool round-trips whole.
    """

    config_name: ClassVar[str] = "config.json"
    layout_name: ClassVar[tuple[str, str] | None] = None  # written as _class_name, e.g. ("diffusers", "DDIMScheduler")
    ignore_for_config: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording(cls.__dict__["__init__"])  # type: ignore[method-assign]

    @property
    def config(self) -> Config:
        return self.__dict__.get("_difframe_config") or Config({})

    def register_to_config(self, **values: Any) -> None:
        """Add or change config entries after construction (for values derived in ``__init__``)."""
        self.__dict__["_difframe_config"] = Config({**self.config, **values})

    # --- building from a config -----------------------------------------------------------------------------
    @classmethod
    @functools.cache
    def config_schema(cls) -> type:
        """A pydantic model of the constructor's typed parameters (unknown keys allowed and kept)."""
        try:
            hints = typing.get_type_hints(cls.__init__)
        except Exception:
            hints = {}
        fields = {
            name: (hints.get(name, Any), ... if p.default is p.empty else p.default)
            for name, p in _init_parameters(cls).items()
        }
        return create_model(
            f"{cls.__name__}Config",
            __config__=ConfigDict(extra="allow", arbitrary_types_allowed=True),
            **fields,
        )

    @classmethod
    def validate_config(cls, config: Mapping[str, Any], *, label: str | None = None) -> dict[str, Any]:
        """Return the config with values converted to the constructor's types, or raise ConfigError."""
        values = {k: v for k, v in config.items() if k not in METADATA_KEYS}
        try:
            model = cls.config_schema().model_validate(values)
        except ValidationError as error:
            problems = "; ".join(
                f"field {'.'.join(map(str, e['loc'])) or '?'}: {e['msg'].lower()}"
                + ("" if e["type"] == "missing" else f" (got {e['input']!r})")
                for e in error.errors()
            )
            raise ConfigError(
                f"invalid config for {label or cls.__name__}: {problems}. Fix these values in its "
                f"{cls.config_name} or in the arguments you passed."
            ) from None
        known = set(_init_parameters(cls))
        validated = {name: getattr(model, name) for name in known}
        return {**values, **validated}

    @classmethod
    def check_option_names(cls, names: Iterable[str], *, label: str | None = None) -> None:
        """Options passed by keyword must be constructor parameters: a misspelt one would otherwise be kept as an
        unknown config key and silently do nothing. (Configs from files may hold keys of other tools.)"""
        parameters = inspect.signature(cls.__init__).parameters.values()
        if any(p.kind == p.VAR_KEYWORD for p in parameters):
            return
        known = sorted(_init_parameters(cls))
        unknown = sorted(set(names) - set(known) - METADATA_KEYS)
        if unknown:
            said = []
            for name in unknown:
                close = difflib.get_close_matches(name, known, n=1)
                said.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigError(
                f"{label or cls.__name__} has no option {', '.join(said)}; its options are {', '.join(known)}"
            )

    @classmethod
    def from_config(cls: type[T], config: Mapping[str, Any] | None = None, /, **overrides: Any) -> T:
        """Build from a config (e.g. another component's ``.config``), with keyword overrides on top."""
        values = cls.validate_config({**(config or {}), **overrides})
        known = _init_parameters(cls)
        try:
            instance = cls(**{k: v for k, v in values.items() if k in known})
        except ConfigError:
            raise
        except ValueError as error:  # a constructor's own check: a ConfigError naming the class
            raise ConfigError(f"invalid config for {cls.__name__}: {error}") from error
        extras = {k: v for k, v in values.items() if k not in known}
        if extras:
            instance.register_to_config(**extras)
        return instance

    # --- files ------------------------------------------------------------------------------------------------
    @classmethod
    def load_config(cls, folder: str | os.PathLike[str], *, subfolder: str | None = None, **hub: Any) -> dict:
        """Read ``config_name`` from a folder (or hub id), returning the raw dict."""
        from .hub import resolve
        from .paths import check_subfolder, contained

        check_subfolder(subfolder)
        relative = f"{subfolder + '/' if subfolder else ''}{cls.config_name}"
        root = resolve(folder, allow_patterns=[relative], **hub)
        path = contained(root, relative, named_by=f"{cls.__name__}.load_config")
        if not path.is_file():
            raise ModelLoadError(f"{path} not found: a {cls.__name__} folder needs a {cls.config_name}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path} is not valid JSON ({error}); restore it or save the component again") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object, got {type(data).__name__}")
        return data

    @classmethod
    def from_pretrained(
        cls: type[T],
        reference: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        torch_dtype: Any = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        **hub: Any,
    ) -> T:
        """Build from a saved config alone (schedulers); weight options are accepted and ignored."""
        return cls.from_config(cls.load_config(reference, subfolder=subfolder, **hub))

    @classmethod
    def check_pretrained(cls, reference: str | os.PathLike[str], *, subfolder: str | None = None, **_: Any) -> None:
        """What ``from_pretrained`` checks, for a component built from its config alone (it reads no weights)."""
        cls.from_pretrained(reference, subfolder=subfolder)

    def save_pretrained(
        self, folder: str | os.PathLike[str], *, variant: str | None = None, atomic: bool = True
    ) -> Path:
        folder = Path(folder)
        if not atomic:
            self.save_config(folder)
            return folder
        from .atomic import atomic_directory

        with atomic_directory(folder) as staging:
            self.save_config(staging)
        return folder

    def config_dict_for_saving(self) -> dict[str, Any]:
        from . import __version__

        layout = type(self).layout_name
        head = {"_class_name": layout[1] if layout else type(self).__name__, "_difframe_version": __version__}
        return {**head, **_jsonable(dict(self.config))}

    def save_config(self, folder: str | os.PathLike[str]) -> Path:
        path = Path(folder) / self.config_name
        atomic_write_text(path, json.dumps(self.config_dict_for_saving(), indent=2, sort_keys=True) + "\n")
        return path


def _recording(init: Any) -> Any:
    signature = inspect.signature(init)
    variadic = {name for name, p in signature.parameters.items() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    @functools.wraps(init)
    def __init__(self: ConfigMixin, *args: Any, **kwargs: Any) -> None:
        if "_difframe_config" not in self.__dict__:  # the most-derived __init__ runs first
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            skip = variadic | set(getattr(type(self), "ignore_for_config", ()))
            values = {name: v for name, v in list(bound.arguments.items())[1:] if name not in skip}
            self.__dict__["_difframe_config"] = Config(values)
        init(self, *args, **kwargs)

    return __init__

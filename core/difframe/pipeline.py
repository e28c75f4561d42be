"""DiffusionPipeline: components declared as class attributes; loading, saving, placement and progress."""

from __future__ import annotations

import difflib
import inspect
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .atomic import atomic_directory, atomic_write_text
from .errors import DifframeError, ModelLoadError
from .paths import check_folder, contained

P = TypeVar("P", bound="DiffusionPipeline")
INDEX_NAME = "model_index.json"
SINGLE_FILE_OPTIONS = frozenset({"config"})  # read by load_single_file: the architecture of a file that cannot tell

WEIGHT_PATTERNS = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


class Component:
    """Declares a pipeline component: ``unet = Component("model")``. The attribute name is the sub-folder name."""

    def __init__(self, kind: str, *, optional: bool = False, description: str = "") -> None:
        self.kind = kind
        self.optional = optional
        self.description = description
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type) -> Any:
        return self if instance is None else None  # set components live in the instance __dict__

    def __repr__(self) -> str:
        return f"Component({self.kind!r}, optional={self.optional})"


def _is_safe_component_name(name: str) -> bool:
    return name.isidentifier()


class DiffusionPipeline:
    """Base of every pipeline. A subclass declares its components and implements ``__call__``."""

    layout_name: ClassVar[tuple[str, str] | None] = None  # _class_name in model_index.json
    declared: ClassVar[dict[str, Component]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.declared = {
            name: value
            for klass in reversed(cls.__mro__)
            for name, value in vars(klass).items()
            if isinstance(value, Component)
        }

    def __init__(self, **components: Any) -> None:
        unknown = components.keys() - self.declared.keys()
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no component(s) {', '.join(sorted(unknown))}; "
                f"it declares {', '.join(self.declared)}"
            )
        missing = [n for n, c in self.declared.items() if not c.optional and components.get(n) is None]
        if missing:
            raise TypeError(f"{type(self).__name__} needs component(s) {', '.join(missing)}")
        for name in self.declared:
            self.__dict__[name] = components.get(name)
        self.framework: Any = None
        self._progress_options: dict[str, Any] = {}

    # --- components ---------------------------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, Any]:
        return {name: self.__dict__.get(name) for name in self.declared}

    def _modules(self) -> Iterator[Any]:
        import torch

        for value in self.components.values():
            if isinstance(value, torch.nn.Module):
                yield value

    def to(self: P, device: Any = None, dtype: Any = None) -> P:
        """Move every torch component to ``device`` and/or cast floating weights to ``dtype``."""
        from .placement import check_device, check_dtype

        device, dtype = check_device(device), check_dtype(dtype, "dtype")
        for module in self._modules():
            module.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> Any:
        import torch

        for module in self._modules():
            for parameter in module.parameters():
                return parameter.device
        return torch.device("cpu")

    @property
    def dtype(self) -> Any:
        import torch

        for module in self._modules():
            for parameter in module.parameters():
                return parameter.dtype
        return torch.float32

    def set_scheduler(self, name: str, /, **overrides: Any) -> Any:
        """Swap the sampler in one line, keeping the model's noise schedule: ``pipe.set_scheduler("euler_a")``."""
        from .framework import Framework

        self.framework = self.framework or Framework()
        current = self.__dict__.get("scheduler")
        self.__dict__["scheduler"] = self.framework.scheduler(name, current.config if current else None, **overrides)
        return self.__dict__["scheduler"]

    # --- progress -----------------------------------------------------------------------------------------------
    def set_progress_bar_config(self, **options: Any) -> None:
        """Options for tqdm, e.g. ``disable=True`` or ``desc="denoising"``."""
        self._progress_options = options

    def progress_bar(self, iterable: Iterable[Any] | None = None, total: int | None = None) -> Any:
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, **{"leave": False, **self._progress_options})

    # --- saving -------------------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike[str], *, variant: str | None = None) -> Path:
        """Write model_index.json and one folder per component; an existing save is replaced only when complete."""
        index: dict[str, Any] = {
            "_class_name": (self.layout_name or (None, type(self).__name__))[1],
            "_difframe_version": _version(),
        }
        with atomic_directory(folder) as staging:
            for name, value in self.components.items():
                if value is None:
                    index[name] = [None, None]
                    continue
                layout = getattr(type(value), "layout_name", None) or (
                    type(value).__module__.split(".")[0],
                    type(value).__name__,
                )
                index[name] = list(layout)
                _save_component(value, staging / name, variant)
            atomic_write_text(staging / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
        return Path(folder)

    # --- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls: type[P],
        reference: str | os.PathLike[str],
        *,
        framework: Any = None,
        torch_dtype: Any = None,
        device: Any = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        progress: bool = True,
        **overrides: Any,
    ) -> P:
        """Load every declared component through the plugin that registers its class name in model_index.json.

        ``overrides`` replace components: an instance, or (for schedulers) a registered name, which is built
        from the model's own scheduler config. Every name and folder is checked before any weight is read.
        """
        from .framework import Framework
        from .hub import resolve, weight_patterns
        from .library_progress import quiet_library_progress
        from .paths import check_variant
        from .placement import check_device, check_dtype

        torch_dtype, device = check_dtype(torch_dtype), check_device(device)
        check_variant(variant)
        framework = framework or Framework()
        if Path(os.path.expanduser(os.fspath(reference))).is_file():  # a single-file checkpoint
            folder_only = {"variant": variant, "revision": revision, "cache_dir": cache_dir, "token": token}
            if given := [name for name, value in folder_only.items() if value is not None]:
                raise TypeError(f"{', '.join(given)} apply to model folders and hub ids, not to the file {reference}")
            cls._check_option_names(
                {k: v for k, v in overrides.items() if k not in cls.declared and k not in SINGLE_FILE_OPTIONS}
            )
            return cls.load_single_file(
                reference,
                framework=framework,
                torch_dtype=torch_dtype,
                device=device,
                allow_pickle=allow_pickle,
                progress=progress,
                **overrides,
            )
        extra = {k: overrides.pop(k) for k in list(overrides) if k not in cls.declared}
        cls._check_option_names(extra)
        hub = {
            "revision": revision,
            "cache_dir": cache_dir,
            "local_files_only": local_files_only,
            "token": token,
        }
        root = resolve(reference, allow_patterns=[INDEX_NAME], **hub)
        index = _read_index(root)
        load_options = {"torch_dtype": torch_dtype, "variant": variant, "allow_pickle": allow_pickle}
        if not Path(os.path.expanduser(os.fspath(reference))).is_dir():  # a hub id: fetch only what is used
            allow, ignore = [INDEX_NAME], []
            for name in cls.declared:
                if name not in overrides and isinstance(index.get(name), list) and index[name][:1] != [None]:
                    patterns = weight_patterns(f"{name}/", variant=variant, allow_pickle=allow_pickle)
                    allow += patterns["allow_patterns"]
                    ignore = patterns["ignore_patterns"]
            configs = [pattern for pattern in allow if not pattern.endswith(WEIGHT_PATTERNS)]
            root = resolve(reference, allow_patterns=configs, ignore_patterns=ignore, **hub)
            cls._check(framework, root, index, overrides, load_options, weights=False)  # before downloading weights
            with quiet_library_progress(not progress):  # the weights' download
                root = resolve(reference, allow_patterns=allow, ignore_patterns=ignore, **hub)
        plan, components = cls._check(framework, root, index, overrides, load_options, weights=True)
        with quiet_library_progress(not progress):
            for name, (registration, loader) in plan.items():
                components[name] = _load_component(loader, registration, root, name, load_options)
        pipeline = cls(**components)
        pipeline.framework = framework
        if not progress:
            pipeline.set_progress_bar_config(disable=True)
        if device is not None:
            pipeline.to(device)
        pipeline.apply_options(**extra)
        return pipeline

    @classmethod
    def from_single_file(cls: type[P], path: str | os.PathLike[str], **options: Any) -> P:
        """Load a single-file checkpoint (every model in one file, as model sites share them), with the options of
        ``from_pretrained``. ``from_pretrained`` and ``Framework.build(model=...)`` do the same given a file."""
        if not Path(os.path.expanduser(os.fspath(path))).is_file():
            raise ModelLoadError(f"{path} is not a file; a model folder or hub id loads with from_pretrained")
        return cls.from_pretrained(path, **options)

    @classmethod
    def load_single_file(cls: type[P], path: str | os.PathLike[str], *, framework: Any, **options: Any) -> P:
        """What from_pretrained does with a file path: pipelines that read single-file checkpoints override it."""
        raise ModelLoadError(
            f"{path} is a file, and {cls.__name__} loads only model folders (with {INDEX_NAME}) or hub ids"
        )

    @classmethod
    def _check_option_names(cls, options: dict[str, Any]) -> None:
        """Unknown build options are refused before anything loads (``apply_options`` runs after the weights)."""
        known = set(cls.declared)
        for klass in cls.__mro__:
            method = vars(klass).get("apply_options")
            if method is not None:
                parameters = inspect.signature(method).parameters.values()
                known |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = sorted(options.keys() - known - {"self"})
        if unknown:
            hints = [difflib.get_close_matches(name, sorted(known - {"self"}), n=1) for name in unknown]
            said = ", ".join(
                f"{name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") for name, hint in zip(unknown, hints)
            )
            raise TypeError(
                f"{cls.__name__} got unknown option(s): {said}. It takes {', '.join(sorted(known - {'self'}))}."
            )

    @classmethod
    def _check(
        cls,
        framework: Any,
        root: Path,
        index: dict[str, Any],
        overrides: dict[str, Any],
        load_options: dict[str, Any],
        *,
        weights: bool,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every check that needs no weight: a loader for each component, the samplers named in ``overrides`` (built
        here: they are cheap), and each loader's ``check_pretrained`` (configs, files; weights files present only
        when ``weights``). Returns the plan and the components built so far."""
        plan = cls._plan(framework, root, index, overrides)
        components = dict(overrides)
        for name, value in overrides.items():
            if isinstance(value, str) and cls.declared[name].kind == "scheduler":
                config = _scheduler_config(root, name, index, value)
                components[name] = framework.scheduler(value, config)
            elif isinstance(value, str):
                components[name] = framework.create(cls.declared[name].kind, value)
        for name, (registration, loader) in plan.items():
            check = getattr(loader, "check_pretrained", None)
            if check is not None:
                _in_component(name, registration, check, root, subfolder=name, weights=weights, **load_options)
        return plan, components

    def apply_options(self, **options: Any) -> None:
        """Pipeline-specific build options (e.g. ``attention``); the base class knows none."""
        if options:
            raise TypeError(f"{type(self).__name__} got unknown option(s): {', '.join(sorted(options))}")

    @classmethod
    def _plan(cls, framework: Any, root: Path, index: dict[str, Any], overrides: dict[str, Any]) -> dict:
        """Resolve every component to a loader, or raise, before any weight is read."""
        plan = {}
        for name, component in cls.declared.items():
            if name in overrides:
                continue
            entry = index.get(name)
            if entry is None or entry == [None, None] or (isinstance(entry, list) and entry[0] is None):
                if component.optional:
                    continue
                raise ModelLoadError(
                    f"{root} has no component {name!r} in {INDEX_NAME}, and {cls.__name__} needs it. Add the "
                    f"{name}/ folder and its entry, or pass {name}=... to from_pretrained."
                )
            if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
                raise ModelLoadError(f"{root / INDEX_NAME}: entry {name!r} must be [library, class], got {entry!r}")
            folder = root / name
            check_folder(root, folder)
            if not folder.is_dir():
                if component.optional:
                    continue
                raise ModelLoadError(f"{root} lists component {name!r} but has no folder {name}/")
            library, class_name = entry
            candidates = framework.registry.layout_candidates(library, class_name)
            if not candidates:
                raise ModelLoadError(
                    f"no installed plugin loads {entry!r} (component {name!r} of {root}). Install the plugin that "
                    f"provides it, or pass {name}=... yourself. `difframe plugins --json` lists what each plugin loads."
                )
            plan[name] = framework.first_working(candidates)
        return plan


def _version() -> str:
    from . import __version__

    return __version__


def _read_index(root: Path) -> dict[str, Any]:
    path = contained(root, INDEX_NAME, named_by=f"model folder {root}")
    if not path.is_file():
        raise ModelLoadError(
            f"{root} has no {INDEX_NAME}: it is not a pipeline folder. A single model folder (config.json) loads "
            "with that model class's from_pretrained."
        )
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(index, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    for key in index:
        if not key.startswith("_") and not _is_safe_component_name(key):
            raise ModelLoadError(
                f"{path} names a component {key!r}, which is not a plain folder name (it could reach outside the "
                "model folder). Component names are identifiers such as 'unet'."
            )
    resolved_root = root.resolve()
    for key in index:
        candidate = (root / key).resolve() if not key.startswith("_") else resolved_root
        if resolved_root not in (candidate, *candidate.parents):
            raise ModelLoadError(f"{path}: component folder {key!r} points outside the model folder")
    return index


def _scheduler_config(root: Path, name: str, index: dict[str, Any], sampler: str) -> dict[str, Any]:
    """The model's noise schedule, for a sampler given by name. A model that lists a scheduler but lacks its config
    is an error: the sampler would silently run the default schedule instead of the model's."""
    path = contained(root, f"{name}/scheduler_config.json", named_by=INDEX_NAME)
    listed = isinstance(index.get(name), list) and index[name][:1] != [None]
    if not path.is_file():
        if listed:
            raise ModelLoadError(
                f"{root} lists a {name} but has no {name}/scheduler_config.json, so {sampler!r} cannot take the "
                f"model's noise schedule. Restore the file, or pass {name}= a sampler object built with the model's "
                "schedule."
            )
        warnings.warn(
            f"{root} has no {name} config: sampler {sampler!r} uses its default noise schedule, which may not be "
            "the one the model was trained with",
            stacklevel=4,
        )
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelLoadError(f"{path} is not valid JSON ({error}); restore it or save the model again") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return config


def _in_component(name: str, registration: Any, action: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``action``; a difframe error names the component and the plugin that loads it."""
    try:
        return action(*args, **kwargs)
    except DifframeError as error:
        try:
            labelled = type(error)(f"component {name!r} ({registration.spec.factory}): {error}")
        except Exception:
            raise error from None
        raise labelled from None


def _load_component(loader: Any, registration: Any, root: Path, name: str, options: dict[str, Any]) -> Any:
    return _in_component(name, registration, loader.from_pretrained, root, subfolder=name, **options)


def _save_component(value: Any, folder: Path, variant: str | None) -> None:
    save = getattr(value, "save_pretrained", None)
    if save is None:
        raise TypeError(f"component {type(value).__name__} cannot be saved: it has no save_pretrained")
    if "atomic" in inspect.signature(save).parameters:  # difframe components
        save(folder, variant=variant, atomic=False)
    else:  # third-party objects such as transformers tokenizers
        save(folder)

"""The web UI's own infotext reader and writer (AUTOMATIC1111/stable-diffusion-webui), run from a checkout of it.

The web UI is an application, not a package: it is not on PyPI, so the tests here take its source from the folders
named by DIFFRAME_WEBUI_SRC (several separated by os.pathsep, e.g. one per release) and skip without it. Its
modules import the whole application (gradio, torch hijacks, model loading): the modules under test are executed
unmodified from the checkout, and every other module they import (the web UI's other modules and its third-party
dependencies) is replaced, only while they are imported and called, by an inert stand-in. Settings they read
(``shared.opts``) are the web UI's defaults listed in WEB_UI_OPTIONS; one not listed there is an error, never a
stand-in value.

Checked against: v1.10.1 (82a973c04367123ae98bd9abdf80d9eda9b910e2) and v1.8.0
(bef51aed032c0aaa5cfd80445bc4cf0d85b408b5), the last release before "Schedule type" became a sampler field.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WEBUI_ENV = "DIFFRAME_WEBUI_SRC"
SKIP_REASON = (
    f"{WEBUI_ENV} is not set: these tests run AUTOMATIC1111's web UI's own infotext reader and writer, which are "
    "not on PyPI; set it to a checkout (or several, separated by os.pathsep) of "
    "github.com/AUTOMATIC1111/stable-diffusion-webui, e.g. tag v1.10.1 (see docs/lora.md)"
)

# Executed from the checkout, unmodified (those a release lacks are simply not there: sd_schedulers before 1.9), in
# this order: sd_samplers first, as the web UI's own start does (the samplers' modules import each other).
REAL_MODULES = (
    "sd_samplers",
    "sd_samplers_common",
    "sd_samplers_kdiffusion",
    "sd_samplers_timesteps",
    "sd_samplers_lcm",
    "sd_schedulers",
    "processing",
    "infotext_utils",
    "infotext_versions",
    "prompt_parser",
    "hashes",
)
REAL_PACKAGES = ("packaging",)  # third-party modules that the code under test really uses (version parsing)

# The web UI's defaults (modules/shared_options.py) of the settings the code under test reads. Style inference
# from pasted prompts ("Infer styles from prompts of pasted infotext", default "Apply if any") is set to "Ignore":
# no style database is loaded here.
WEB_UI_OPTIONS: dict[str, Any] = {
    "infotext_skip_pasting": [],
    "infotext_styles": "Ignore",
    "auto_backcompat": True,
    "hide_samplers": [],
    "CLIP_stop_at_last_layers": 1,
    "eta_noise_seed_delta": 0,
    "add_model_hash_to_info": True,
    "add_model_name_to_info": True,
    "add_vae_hash_to_info": True,
    "add_vae_name_to_info": True,
    "randn_source": "GPU",
    "add_version_to_infotext": True,
    "add_user_name_to_info": False,
    "face_restoration_model": "CodeFormer",
    "fp8_storage": "Disable",
    "inpainting_mask_weight": 1.0,
    "use_old_hires_fix_width_height": False,
    "k_sched_type": "Automatic",  # before 1.9: the "Schedule type" setting
}


class Options(types.SimpleNamespace):
    def onchange(self, key: str, func: Any, call: bool = True) -> None:
        """Scripts register setting-change callbacks when loaded; no setting changes here."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"the web UI read the setting {name!r}, which the oracle fixture does not set: add its default "
            "(modules/shared_options.py of the checkout) to WEB_UI_OPTIONS in tests/webui/conftest.py"
        )


class _InertMeta(type):
    """Classes standing in for anything of a replaced module: attributes, calls, iteration and subclassing work."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _inert(f"{cls.__name__}.{name}")

    def __iter__(cls) -> Iterator[Any]:
        return iter(())


def _inert(name: str) -> type:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and callable(args[0]) and not kwargs:
            return args[0]  # used as a decorator: the function stays itself
        return _inert(f"{name}()")()

    def attribute(self: Any, key: str) -> Any:
        if key.startswith("__") and key.endswith("__"):
            raise AttributeError(key)
        return _inert(f"{name}.{key}")

    body = {"__init__": lambda self, *a, **k: None, "__call__": call, "__getattr__": attribute}
    return _InertMeta(name, (), body)


class _InertModule(types.ModuleType):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__path__: list[str] = []  # a package: its submodules are inert too

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = _inert(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


def _errors_report(message: str, *args: Any, **kwargs: Any) -> None:
    # the web UI reports (and hides) a failing infotext field with errors.report: here it fails the test
    raise AssertionError(f"the web UI reported an error: {message}")


class _Loader(importlib.abc.Loader):
    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    def create_module(self, spec: Any) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self, webui: WebUI) -> None:
        self.webui = webui

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        top, _, rest = fullname.partition(".")
        if top == "modules" and rest in REAL_MODULES and (self.webui.modules_dir / f"{rest}.py").is_file():
            return importlib.util.spec_from_file_location(fullname, self.webui.modules_dir / f"{rest}.py")
        if top == "modules" or top in self.webui.replaced:
            module = self.webui.concrete.get(fullname) or _InertModule(fullname)
            return importlib.util.spec_from_loader(fullname, _Loader(module), is_package=True)
        return None


class WebUI:
    """One checkout's modules, loaded; ``module(name)`` gives one, ``active()`` the imports they were loaded with."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.modules_dir = root / "modules"
        missing = [
            m for m in ("infotext_utils.py", "processing.py", "sd_samplers.py") if not (self.modules_dir / m).is_file()
        ]
        if missing:
            pytest.fail(
                f"{WEBUI_ENV} names {root}, which is not a stable-diffusion-webui checkout of version 1.8 or later "
                f"(modules/{', modules/'.join(missing)} missing)",
                pytrace=False,
            )
        self.version = _release(root)  # "v1.10.1"
        self.release = tuple(int(n) for n in self.version[1:].split("."))  # (1, 10, 1)
        self.opts = Options(**WEB_UI_OPTIONS)
        self.replaced = self._third_party_imports()
        self.concrete = self._concrete_modules()
        self.loaded: dict[str, types.ModuleType] = {}
        with self.active():
            for name in REAL_MODULES:
                if (self.modules_dir / f"{name}.py").is_file():
                    importlib.import_module(f"modules.{name}")

    def module(self, name: str) -> types.ModuleType:
        return self.loaded[f"modules.{name}"]

    def script(self, path: str) -> types.ModuleType:
        """A script of the checkout (``extensions-builtin/Lora/scripts/lora_script.py``), loaded as the others."""
        name = f"webui_script_{Path(path).stem}"
        if name not in self.loaded:
            file = self.root / path
            self.replaced |= self._third_party_imports([file])
            with self.active():
                spec = importlib.util.spec_from_file_location(name, file)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            self.loaded[name] = module
        return self.loaded[name]

    def _third_party_imports(self, files: list[Path] | None = None) -> set[str]:
        """Top-level names the modules under test import, less the standard library and REAL_PACKAGES."""
        names = {"launch"}  # processing.program_version imports the launcher for the version tag
        for path in files or [self.modules_dir / f"{name}.py" for name in REAL_MODULES]:
            if not path.is_file():
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.partition(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.partition(".")[0])
        return {n for n in names if n not in sys.stdlib_module_names and n not in (*REAL_PACKAGES, "modules")}

    def _concrete_modules(self) -> dict[str, types.ModuleType]:
        """Stand-ins with real values, where an inert one would change what the code under test does."""
        shared = _InertModule("modules.shared")
        shared.opts = self.opts
        devices = _InertModule("modules.devices")
        devices.fp8 = False
        errors = _InertModule("modules.errors")
        errors.report = _errors_report
        launch = _InertModule("launch")
        launch.git_tag = lambda: self.version  # the tag `git describe` gives in a release checkout
        package = types.ModuleType("modules")  # no inert attributes: `from modules import x` imports modules.x
        package.__path__ = []
        networks = _InertModule("networks")  # the Lora extension's: LoRA files found on disk, by short hash
        networks.available_network_hash_lookup = {}
        return {m.__name__: m for m in (package, shared, devices, errors, launch, networks)}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """sys.modules as the loaded modules saw it (their lazy imports find it), put back as it was after."""
        shadowed = {k: v for k, v in sys.modules.items() if k.partition(".")[0] in (*self.replaced, "modules")}
        for key in shadowed:
            del sys.modules[key]
        sys.modules.update(self.loaded)
        finder = _Finder(self)
        sys.meta_path.insert(0, finder)
        try:
            yield
        finally:
            sys.meta_path.remove(finder)
            for key in [k for k in sys.modules if k.partition(".")[0] in (*self.replaced, "modules")]:
                self.loaded[key] = sys.modules.pop(key)
            sys.modules.update(shadowed)


def _release(root: Path) -> str:
    """The release of a checkout, "v1.10.1", from the first version heading of its CHANGELOG.md ("## 1.8.0-RC" in
    the v1.8.0 tag)."""
    changelog = root / "CHANGELOG.md"
    match = (
        re.search(r"^## (\d+\.\d+\.\d+)", changelog.read_text(encoding="utf-8"), re.M) if changelog.is_file() else None
    )
    if match is None:
        pytest.fail(f"{root}/CHANGELOG.md has no '## 1.2.3' heading: is {root} a web UI checkout?", pytrace=False)
    return f"v{match.group(1)}"


def _checkouts() -> list[str | None]:
    value = os.environ.get(WEBUI_ENV, "")
    return [p for p in value.split(os.pathsep) if p] or [None]


@pytest.fixture(scope="session", params=_checkouts(), ids=lambda p: Path(p).name if p else "no-webui")
def webui(request: pytest.FixtureRequest) -> WebUI:
    if request.param is None:
        pytest.skip(SKIP_REASON)
    return WebUI(Path(request.param).expanduser().resolve())

"""Installing and uninstalling the plugin for real, the way a user would, in a throwaway venv.

The venv is layered on the shared environment (which has difframe and the first-party plugins) without changing
it: `--system-site-packages` plus a .pth that adds the shared site-packages, so pip installs into the throwaway
venv only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1]
BUILD_SNIPPET = """
from difframe import Framework
from difframe.errors import UnknownComponentError
try:
    scheduler = Framework().scheduler("lcm")
except UnknownComponentError as error:
    print("unknown:", error)
else:
    scheduler.set_timesteps(4)
    print("built:", type(scheduler).__module__, scheduler.timesteps.tolist())
"""


def run(python: Path, *args: str) -> str:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    result = subprocess.run([str(python), *args], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


def plugin_names(python: Path) -> dict[str, list[str]]:
    listing = json.loads(run(python, "-m", "difframe", "plugins", "--json"))
    return {p["name"]: [r["name"] for r in p["registrations"]] for p in listing}


@pytest.fixture
def throwaway_python(tmp_path: Path) -> Path:
    root = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(root)
    python = root / "bin" / "python"
    site_packages = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    shared = sysconfig.get_paths()["purelib"]  # this interpreter's (the shared venv's) site-packages
    (site_packages / "_shared_env.pth").write_text(f"import site; site.addsitedir({shared!r})\n")
    return python


def test_install_then_uninstall(tmp_path: Path, throwaway_python: Path) -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs to run from a virtual environment to layer the throwaway venv on it")
    python = throwaway_python
    # A copy of the sources, so the build's egg-info never lands in the checkout.
    source = tmp_path / "lcm"
    shutil.copytree(SOURCE, source, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__", "tests"))

    assert "difframe-plugin-lcm" not in plugin_names(python)
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(source))

    names = plugin_names(python)
    assert names["difframe-plugin-lcm"] == ["lcm", "tcd"]
    assert "difframe-samplers" in names  # the shared environment's plugins are still there
    assert run(python, "-c", BUILD_SNIPPET).strip() == "built: difframe_plugin_lcm.lcm [999, 759, 499, 259]"

    run(python, "-m", "pip", "uninstall", "-y", "-q", "difframe-plugin-lcm")
    assert "difframe-plugin-lcm" not in plugin_names(python)
    output = run(python, "-c", BUILD_SNIPPET)
    assert output.startswith("unknown:")
    assert "pip install difframe-plugin-lcm" in output

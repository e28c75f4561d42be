"""A third party's view: pip-install the plugin template, see it listed, build it, run its own tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "contrib" / "plugin-template"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Install the template with pip into a private site folder; return the environment that sees it."""
    work = tmp_path_factory.mktemp("template")
    source = shutil.copytree(TEMPLATE, work / "src")
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", target, source],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    return {"env": env, "source": source}


def _plugins_json(env: dict[str, str]) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "difframe", "plugins", "--json"], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout)


def test_installed_template_is_listed_and_builds(installed):
    listed = {plugin["name"]: plugin for plugin in _plugins_json(installed["env"])}
    template = listed["difframe-plugin-template"]
    assert template["hooks"] == ["register_attention_processor"]
    assert [r["name"] for r in template["registrations"]] == ["query-chunks"]
    assert template["registrations"][0]["available"] is True
    code = (
        "from difframe import Framework; "
        "b = Framework().create('attention_processor', 'query-chunks', chunk_size=7); print(b.chunk_size)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=installed["env"], check=True, capture_output=True, text=True
    )
    assert result.stdout.strip() == "7"


def test_template_own_tests_pass_when_installed(installed):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        env=installed["env"],
        capture_output=True,
        text=True,
        cwd=installed["source"],  # a copy outside this repository, as the template's author would run it
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout


def test_not_listed_without_install():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert "difframe-plugin-template" not in {p["name"] for p in _plugins_json(env)}

"""Fixtures for core tests: fake installed plugins, visible to importlib.metadata like pip-installed ones."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def fake_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Write a distribution (dist-info with an entry point in group 'difframe') and its module onto sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(dist: str, source: str, *, module: str | None = None, version: str = "1.0") -> None:
        module = module or dist.replace("-", "_")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[difframe]\n{dist} = {module}\n")
        created.append(module)
        importlib.invalidate_caches()

    yield make
    for module in created:
        sys.modules.pop(module, None)

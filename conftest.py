"""Repository-wide pytest settings."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# `make test` runs the suite on every core with pytest-xdist, one process per core. Each process then computes on
# one thread: most tests already pin torch to one (tiny models are fastest so), and the rest would otherwise start
# as many threads as there are cores in every process, and spin against each other. A test that asks for more
# threads (a check of multi-threaded kernels) gets them, with OpenMP threads that sleep rather than spin while they
# wait. Set before torch is imported, and inherited by the CLI subprocesses the tests start.
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
    for variable, value in (("OMP_NUM_THREADS", threads), ("MKL_NUM_THREADS", threads), ("OMP_WAIT_POLICY", "PASSIVE")):
        os.environ.setdefault(variable, value)

# The template's tests need the template installed; tests/test_plugin_template.py installs it for real with pip
# and runs them there.
collect_ignore_glob = ["contrib/plugin-template/tests/*"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that compare numbers with the reference library: `make test` runs them a second time on
    another CPU instruction-set path. The convention: they live in a test_parity*.py module or say "reference" in
    their name.

    The full-architecture tests (marked slow) run first: under pytest-xdist (`--dist loadfile
    --no-loadscope-reorder`), the modules that hold them are handed out first, so that the rest of the suite fills
    the processes while they run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order
    for item in items:
        if item.path.name.startswith("test_parity") or "reference" in item.originalname:
            item.add_marker(pytest.mark.parity)


@pytest.fixture(scope="session")
def sd15_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stable Diffusion 1.5 at its real sizes with random weights (a 4 GB folder written by the reference library):
    written once per test process and shared by the full-architecture tests, which run in one process."""
    from difframe_stable_diffusion.testing import TEXT_SD15, UNET_SD15, VAE_SD15, write_reference_model

    folder = tmp_path_factory.mktemp("sd15") / "sd15-random"
    return write_reference_model(folder, unet=UNET_SD15, vae=VAE_SD15, text=TEXT_SD15, jitter=False)


@pytest.fixture
def fake_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Write a distribution (dist-info with an entry point in group 'difframe') and its module onto sys.path, as an
    installed third-party plugin is; the modules are forgotten afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(
        dist: str, source: str, *, module: str | None = None, entry_point: str | None = None, version: str = "1.0"
    ) -> None:
        module = module or dist.replace("-", "_")
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[difframe]\n{entry_point or dist} = {module}\n")
        created.append(module)
        importlib.invalidate_caches()

    yield make
    for module in created:
        sys.modules.pop(module, None)

"""Repository-wide pytest settings."""

from __future__ import annotations

import pytest

# The template's tests need the template installed; tests/test_plugin_template.py installs it for real with pip
# and runs them there.
collect_ignore_glob = ["contrib/plugin-template/tests/*"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that compare numbers with the reference library: `make test` runs them a second time on
    another CPU instruction-set path. The convention: they live in a test_parity*.py module or say "reference" in
    their name."""
    for item in items:
        if item.path.name.startswith("test_parity") or "reference" in item.originalname:
            item.add_marker(pytest.mark.parity)

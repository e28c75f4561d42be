"""Meta-tests: every hook is documented and exercised; every spec field is documented."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from difframe import hookspecs
from difframe.specs import SPEC_TYPES, Requirements, Supports

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(name for name, f in vars(hookspecs).items() if inspect.isfunction(f) and name.startswith("register_"))


def test_hooks_found():
    assert set(HOOKS) >= {
        "register_scheduler",
        "register_attention_processor",
        "register_pipeline",
        "register_conditioner",
        "register_model",
        "register_commands",
    }


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    assert re.search(rf"^### {hook}$", (ROOT / "docs" / "hooks.md").read_text(), re.MULTILINE)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_a_core_test(hook):
    sources = "".join(p.read_text() for p in (ROOT / "core" / "tests").glob("test_*.py"))
    assert f"def {hook}(" in sources


@pytest.mark.parametrize(
    "field", sorted({f for spec in (*SPEC_TYPES.values(), Requirements, Supports) for f in spec.model_fields})
)
def test_spec_field_is_documented(field):
    assert f"`{field}`" in (ROOT / "docs" / "hooks.md").read_text()

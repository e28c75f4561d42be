"""Specs validate without importing plugin code; availability is decided without importing torch."""

from __future__ import annotations

import pytest
from difframe import Requirements, SchedulerSpec
from difframe.availability import cuda_unavailable_reason, unavailable_reason
from pydantic import ValidationError


def test_valid_spec():
    spec = SchedulerSpec(
        name="dpmpp_2m_karras",
        factory="pkg.mod:Class",
        aliases=("DPM++ 2M Karras",),
        options={"use_karras_sigmas": True},
        loads=[("diffusers", "DPMSolverMultistepScheduler")],
    )
    assert spec.loads == (("diffusers", "DPMSolverMultistepScheduler"),)
    assert spec.kind == "scheduler"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "Upper", "factory": "a:b"}, "name"),
        ({"name": "ok", "factory": "no_colon"}, "factory"),
        ({"name": "ok", "factory": "a:b", "aliases": ("",)}, "aliases"),
        ({"name": "ok", "factory": "a:b", "unknown": 1}, "unknown"),
        ({"name": "ok", "factory": "a:b", "loads": [("only-one",)]}, "loads"),
        ({"name": "ok", "factory": "a:b", "requires": {"gpu": True}}, "requires"),
    ],
)
def test_invalid_spec_names_the_field(fields, field):
    with pytest.raises(ValidationError) as error:
        SchedulerSpec(**fields)
    assert field in str(error.value)


def test_missing_package_is_the_reason():
    assert unavailable_reason(Requirements(packages=("json",))) is None
    assert unavailable_reason(Requirements(packages=("no_such_pkg_xyz",))) == "package no_such_pkg_xyz not installed"


def test_cuda_reason_on_this_machine():
    reason = cuda_unavailable_reason()
    assert reason is None or reason.startswith("needs CUDA: ")
    assert unavailable_reason(Requirements(cuda=True)) == reason

"""The xformers backend: availability (with the install command), the layout and mask conversion around xformers'
documented call, and on a GPU with xformers installed, the real kernel against the reference backend."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from difframe import Framework
from difframe.attention import ReferenceBackend, resolve_backend_name
from difframe.availability import cuda_unavailable_reason
from difframe_xformers_attn import plugin


def test_registered_as_a_cuda_backend_with_its_install_command():
    registration = Framework(plugins=[plugin]).get("attention_processor", "xformers")
    assert registration.spec.role == "backend" and registration.spec.requires.cuda
    reason = registration.unavailable_reason
    if reason is not None:  # on this machine: say what is missing and how to get it
        assert "pip install 'difframe-xformers-attn[xformers]'" in reason or reason.startswith("needs CUDA")


def test_auto_never_picks_it_for_cpu_models():
    framework = Framework(plugins=[plugin, __import__("difframe.builtins").builtins])
    assert resolve_backend_name(framework, "auto", device="cpu") == "sdpa"


def test_auto_follows_the_documented_order(monkeypatch):
    """docs/backends.md: on a GPU, xformers (20), then sdpa (10), sliced (0), reference (-10); each in turn is
    chosen when those above it cannot run, and a CPU model never gets xformers."""
    framework = Framework(plugins=[plugin, __import__("difframe.builtins").builtins])
    order = sorted(
        (r for r in framework.registry.all("attention_processor") if r.spec.role == "backend"),
        key=lambda r: -r.spec.priority,
    )
    assert [(r.name, r.spec.priority) for r in order] == [
        ("xformers", 20),
        ("sdpa", 10),
        ("sliced", 0),
        ("reference", -10),
    ]
    missing: set[str] = set()
    monkeypatch.setattr(
        "difframe.registry.Registration.unavailable_reason",
        property(lambda r: "switched off by the test" if r.name in missing else None),
    )  # at first everything runs, as on a GPU with xformers installed
    for registration in order:
        assert resolve_backend_name(framework, "auto", device="cuda") == registration.name
        assert resolve_backend_name(framework, "auto", device="cpu") == (
            "sdpa" if registration.name == "xformers" else registration.name
        )
        missing.add(registration.name)


def _bmhk_reference(q, k, v, attn_bias=None, scale=None):
    """xformers' contract: (batch, tokens, heads, dim) inputs, an additive bias of (batch, heads, q, k)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
    if attn_bias is not None:
        scores = scores + attn_bias.float()
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v.float()).to(q.dtype)


@pytest.fixture
def emulated_xformers(monkeypatch):
    """xformers' documented call stood in by the textbook formula: checks our layout and mask handling on the CPU."""
    ops = types.SimpleNamespace(memory_efficient_attention=_bmhk_reference)
    monkeypatch.setitem(sys.modules, "xformers", types.SimpleNamespace(ops=ops))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)


@pytest.mark.parametrize("mask_kind", [None, "bool", "additive"])
def test_layout_and_masks_match_the_reference_backend(emulated_xformers, mask_kind):
    from difframe_xformers_attn.backend import XFormersBackend

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 13, 8), torch.randn(2, 3, 13, 8)
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(2, 1, 1, 13) > 0.3
        mask[..., 0] = True
    elif mask_kind == "additive":
        mask = torch.randn(2, 1, 10, 13)
    expected = ReferenceBackend().attend(q, k, v, mask=mask, scale=0.3)
    got = XFormersBackend().attend(q, k, v, mask=mask, scale=0.3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(cuda_unavailable_reason() is not None, reason="needs an NVIDIA GPU")
def test_real_kernel_on_the_gpu():
    pytest.importorskip("xformers", reason="xformers is not installed: pip install 'difframe-xformers-attn[xformers]'")
    from difframe_xformers_attn.backend import XFormersBackend

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 8, 77, 64, device="cuda", dtype=torch.float16) for _ in range(3))
    mask = torch.rand(2, 1, 1, 77, device="cuda") > 0.2
    expected = ReferenceBackend().attend(q, k, v, mask=mask, scale=64**-0.5)
    got = XFormersBackend().attend(q, k, v, mask=mask, scale=64**-0.5)
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=2e-3)
    framework = Framework(plugins=[plugin, __import__("difframe.builtins").builtins])
    assert resolve_backend_name(framework, "auto", device="cuda") == "xformers"

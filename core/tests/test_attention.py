"""Attention backends, add-ons and how models choose them."""

from __future__ import annotations

import pytest
import torch
from difframe import builtins, hookimpl
from difframe.attention import (
    Attention,
    ReferenceBackend,
    SDPABackend,
    SlicedBackend,
    attention_modules,
    build_processor,
    resolve_backend_name,
    set_attention,
)
from difframe.framework import Framework
from difframe.modeling import ModelMixin
from torch import nn


def qkv(batch=2, heads=4, q_len=9, k_len=7, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, n, dim, generator=generator) for n in (q_len, k_len, k_len))


def masks(batch=2, heads=4, q_len=9, k_len=7):
    keep = torch.ones(batch, 1, 1, k_len, dtype=torch.bool)
    keep[1, ..., 4:] = False
    bias = torch.randn(batch, heads, q_len, k_len)
    return [None, keep, (~keep).float() * -10000.0, bias]


BACKENDS = [SDPABackend(), SlicedBackend(), SlicedBackend("auto"), SlicedBackend("max"), SlicedBackend(3)]
BACKENDS += [SlicedBackend(100)]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: f"{type(b).__name__}-{getattr(b, 'slice_size', '')}")
@pytest.mark.parametrize("mask_index", range(4))
def test_backends_agree_with_the_reference(backend, mask_index):
    q, k, v = qkv()
    mask = masks()[mask_index]
    expected = ReferenceBackend().attend(q, k, v, mask=mask, scale=0.3)
    got = backend.attend(q, k, v, mask=mask, scale=0.3)
    assert got.shape == expected.shape == (2, 4, 9, 8)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_masked_keys_are_ignored():
    q, k, v = qkv()
    keep = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    keep[:, ..., 5:] = False
    full = ReferenceBackend().attend(q, k[:, :, :5], v[:, :, :5], mask=None, scale=0.5)
    for backend in (ReferenceBackend(), *BACKENDS):
        torch.testing.assert_close(backend.attend(q, k, v, mask=keep, scale=0.5), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [0, -2, "half", 1.5])
def test_sliced_rejects_bad_slice_sizes(bad):
    with pytest.raises(ValueError, match="slice_size"):
        SlicedBackend(bad)


def test_attention_module_matches_the_textbook_formula():
    torch.manual_seed(0)
    attn = Attention(16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    x, context = torch.randn(3, 5, 16), torch.randn(3, 4, 12)
    q = attn.to_q(x).view(3, 5, 2, 8).transpose(1, 2)
    k = attn.to_k(context).view(3, 4, 2, 8).transpose(1, 2)
    v = attn.to_v(context).view(3, 4, 2, 8).transpose(1, 2)
    weights = (q @ k.transpose(-1, -2) / 8**0.5).softmax(-1)
    expected = attn.to_out[0]((weights @ v).transpose(1, 2).reshape(3, 5, 16))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, context), expected, atol=1e-5, rtol=1e-5)


def test_spatial_attention_with_group_norm_and_residual():
    """The VAE's mid-block form: (batch, channels, h, w) in and out, normalised, residual, rescaled."""
    torch.manual_seed(0)
    attn = Attention(8, heads=1, dim_head=8, bias=True, norm_num_groups=4, residual_connection=True).eval()
    attn.rescale_output_factor = 2.0
    x = torch.randn(2, 8, 3, 5)
    tokens = attn.group_norm(x).flatten(2).transpose(1, 2)
    q, k, v = (attn.split_heads(projection(tokens)) for projection in (attn.to_q, attn.to_k, attn.to_v))
    heads = ReferenceBackend().attend(q, k, v, mask=None, scale=8**-0.5)
    inner = attn.to_out[0](heads.transpose(1, 2).reshape(2, 15, 8))
    expected = (inner.transpose(1, 2).reshape(2, 8, 3, 5) + x) / 2.0
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_upcast_attention_computes_in_float32(dtype):
    torch.manual_seed(0)
    attn = Attention(32, heads=2, dim_head=16, upcast_attention=True).eval()
    seen = []

    class Spy(ReferenceBackend):
        def attend(self, query, key, value, *, mask, scale):
            seen.append(query.dtype)
            return super().attend(query, key, value, mask=mask, scale=scale)

    attn.backend = Spy()
    x = torch.randn(1, 6, 32)
    expected = attn(x)
    with torch.no_grad():
        got = attn.to(dtype)(x.to(dtype))
    assert got.dtype == dtype and seen == [torch.float32, torch.float32]
    torch.testing.assert_close(got.float(), expected.detach(), atol=3e-2, rtol=3e-2)


# --- choosing attention in a model ---------------------------------------------------------------------------------
class TwoBlocks(ModelMixin):
    layout_name = ("difframe-testing", "TwoBlocks")

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.down = nn.ModuleList([Attention(dim, heads=2, dim_head=8), Attention(dim, heads=2, dim_head=8)])
        self.mid = Attention(dim, heads=2, dim_head=8)

    def forward(self, x):
        for attn in [*self.down, self.mid]:
            x = attn(x) + x
        return x


def backends(model):
    return {name: type(module.backend).__name__ for name, module in attention_modules(model)}


def test_set_attention_by_registered_name_on_the_whole_model():
    model = TwoBlocks()
    framework = Framework(plugins=[builtins])
    model.set_attention("sliced", framework=framework, slice_size=1)
    assert set(backends(model).values()) == {"SlicedBackend"}
    assert {m.backend.slice_size for _, m in attention_modules(model)} == {1}
    model.set_attention("reference", framework=framework)
    assert set(backends(model).values()) == {"ReferenceBackend"}
    model.set_attention("default", framework=framework)  # an alias of sdpa
    assert set(backends(model).values()) == {"SDPABackend"}


def test_set_attention_per_module_and_per_parent():
    model = TwoBlocks()
    framework = Framework(plugins=[builtins])
    set_attention(model, {"down.1": "reference", "mid": SlicedBackend("max")}, framework=framework)
    assert backends(model) == {"down.0": "SDPABackend", "down.1": "ReferenceBackend", "mid": "SlicedBackend"}
    model.set_attention({"down": "sliced"}, framework=framework)  # a parent name reaches every module inside
    assert backends(model) == {"down.0": "SlicedBackend", "down.1": "SlicedBackend", "mid": "SlicedBackend"}
    with pytest.raises(KeyError, match="no attention module 'up'"):
        model.set_attention({"up": "sdpa"}, framework=framework)


def test_every_backend_gives_the_same_model_output():
    torch.manual_seed(0)
    model, x = TwoBlocks().eval(), torch.randn(2, 10, 16)
    model.set_attention(ReferenceBackend())
    with torch.no_grad():
        expected = model(x)
        for name, options in [("sdpa", {}), ("sliced", {}), ("sliced", {"slice_size": "max"}), ("auto", {})]:
            model.set_attention(name, framework=Framework(plugins=[builtins]), **options)
            torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_unknown_processor_names_say_what_is_installed():
    with pytest.raises(LookupError, match="sdpa"):
        TwoBlocks().set_attention("flash-v9", framework=Framework(plugins=[builtins]))


class FastBackend(SDPABackend):
    pass


class Plugins:
    @hookimpl
    def register_attention_processor(self, register):
        register(name="fast", factory=f"{__name__}:FastBackend", priority=50)
        register(
            name="gpu-only", factory=f"{__name__}:FastBackend", priority=99, requires={"packages": ["no_such_pkg"]}
        )
        register(name="double", factory=f"{__name__}:DoubleOutput", role="addon")


class DoubleOutput:
    """An add-on: runs the module's normal attention through its backend and doubles the result."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = attn.attend(attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), attention_mask)
        return 2 * attn.to_out[0](out) * kwargs.get("factor", 1.0)


def test_auto_picks_the_available_backend_with_the_highest_priority():
    assert resolve_backend_name(Framework(plugins=[builtins]), "auto") == "sdpa"
    framework = Framework(plugins=[builtins, Plugins()])
    assert resolve_backend_name(framework, "auto") == "fast"  # gpu-only has higher priority but cannot run here
    assert resolve_backend_name(framework, "sliced") == "sliced"
    assert isinstance(build_processor("auto", framework=framework), FastBackend)
    model = TwoBlocks()
    model.set_attention("auto", framework=framework)
    assert set(backends(model).values()) == {"FastBackend"}
    with pytest.raises(LookupError, match="no attention backend"):
        resolve_backend_name(Framework(plugins=[]), "auto")


def test_addons_wrap_the_backend_and_compose_with_it():
    torch.manual_seed(0)
    model, x = TwoBlocks().eval(), torch.randn(1, 4, 16)
    framework = Framework(plugins=[builtins, Plugins()])
    attn = model.mid
    with torch.no_grad():
        plain = attn(x)
        model.set_attention({"mid": "double"}, framework=framework)
        model.set_attention({"mid": "reference"}, framework=framework)
        assert isinstance(attn.addon, DoubleOutput) and isinstance(attn.backend, ReferenceBackend)
        torch.testing.assert_close(attn(x), 2 * plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attn(x, factor=0.5), plain, atol=1e-5, rtol=1e-5)  # kwargs reach the add-on
        model.set_attention(None)
        assert attn.addon is None
        torch.testing.assert_close(attn(x), plain, atol=1e-5, rtol=1e-5)


def test_set_attention_rejects_objects_that_are_not_processors():
    with pytest.raises(TypeError, match="neither an attention backend"):
        set_attention(TwoBlocks(), 42)
    with pytest.raises(ValueError, match="no attention modules"):
        set_attention(nn.Linear(2, 2), SDPABackend())

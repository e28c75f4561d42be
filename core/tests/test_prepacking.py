"""Prepacked convolutions: the same numbers as nn.Conv2d, rebuilt when the weight changes, training unchanged."""

import copy
import pickle

import pytest
import torch
from difframe.prepacking import (
    PrepackedConv2d,
    prepack_convolutions,
    prepacking_available,
    uses_prepacked_convolutions,
)
from torch import nn

pytestmark = pytest.mark.skipif(not prepacking_available(), reason="this torch build has no oneDNN CPU operators")
TOL = dict(atol=1e-5, rtol=1e-5)


def _pair(**options) -> tuple[nn.Conv2d, nn.Conv2d]:
    torch.manual_seed(0)
    plain = nn.Conv2d(8, 16, **{"kernel_size": 3, "padding": 1, **options})
    packed = copy.deepcopy(plain)
    prepack_convolutions(packed)
    return plain, packed


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"kernel_size": 1, "padding": 0},
        {"stride": 2},
        {"bias": False},
        {"dilation": 2, "padding": 2},
        {"groups": 4},
        {"padding": "same"},  # a string padding takes the plain path
        {"padding_mode": "reflect"},  # so does non-zero padding
    ],
)
def test_same_numbers_as_nn_conv2d(options):
    plain, packed = _pair(**options)
    assert type(packed) is PrepackedConv2d
    with torch.no_grad():
        for x in (torch.randn(2, 8, 9, 9), torch.randn(1, 8, 4, 4)):  # a second shape repacks
            torch.testing.assert_close(packed(x), plain(x), **TOL)
        x = torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(packed(x), plain(x), **TOL)


def test_a_changed_weight_is_repacked():
    plain, packed = _pair()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        packed(x)
        for module in (plain, packed):
            module.weight.mul_(-3.0)  # in place, as an optimizer step is
        torch.testing.assert_close(packed(x), plain(x), **TOL)
        fresh = nn.Conv2d(8, 16, 3, padding=1)
        plain.load_state_dict(fresh.state_dict())
        packed.load_state_dict(fresh.state_dict())
        torch.testing.assert_close(packed(x), plain(x), **TOL)
        packed.double()  # another dtype takes the plain path, and coming back repacks
        torch.testing.assert_close(packed(x.double()), plain.double()(x.double()), **TOL)
        packed.float(), plain.float()
        torch.testing.assert_close(packed(x), plain(x), **TOL)


def test_training_is_that_of_nn_conv2d():
    plain, packed = _pair()
    x = torch.randn(2, 8, 8, 8)
    for module in (plain, packed):
        module(x).square().sum().backward()
    torch.testing.assert_close(packed.weight.grad, plain.weight.grad, **TOL)
    torch.testing.assert_close(packed.bias.grad, plain.bias.grad, **TOL)


def test_state_dict_copy_and_pickle_are_unchanged():
    plain, packed = _pair()
    with torch.no_grad():
        packed(torch.randn(1, 8, 8, 8))  # holds an opaque oneDNN tensor now
    assert packed.state_dict().keys() == plain.state_dict().keys()
    assert all(torch.equal(packed.state_dict()[k], v) for k, v in plain.state_dict().items())
    for clone in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        with torch.no_grad():
            torch.testing.assert_close(clone(torch.ones(1, 8, 8, 8)), plain(torch.ones(1, 8, 8, 8)), **TOL)


def test_prepack_and_restore_a_model():
    class Custom(nn.Conv2d):  # a subclass has its own forward: left alone
        pass

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 1)), Custom(4, 4, 1), nn.Linear(4, 4))
    assert prepack_convolutions(model) == 2 and uses_prepacked_convolutions(model)
    assert type(model[2]) is Custom
    assert prepack_convolutions(model) == 0  # already done
    assert prepack_convolutions(model, enabled=False) == 2 and not uses_prepacked_convolutions(model)
    assert type(model[0]) is nn.Conv2d

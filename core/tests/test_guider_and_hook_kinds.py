"""Guiders and inference hooks as plugin kinds: registration, listing, and the hook machinery on a toy model."""

from __future__ import annotations

import json

import pytest
import torch
from difframe import Framework, hookimpl
from difframe.cli import main
from difframe.errors import UnknownComponentError
from difframe.guidance import ClassifierFreeGuidance, StepContext
from difframe.inference_hooks import HookError, HookSet, InferenceHook, Skip, at_step, current_step
from difframe.testing import ToyDenoiser


class KindsPlugin:
    __name__ = "difframe-toy-kinds"

    @hookimpl
    def register_guider(self, register):
        register(name="toy-cfg", factory="difframe.guidance:ClassifierFreeGuidance", description="cfg again")

    @hookimpl
    def register_inference_hook(self, register):
        register(
            name="toy-hook",
            factory="difframe.inference_hooks:InferenceHook",
            incompatible=("toy-cfg",),
            description="does nothing",
        )
        register(name="Bad Name", factory="difframe.inference_hooks:InferenceHook")


def test_kinds_are_registered_listed_and_validated(capsys):
    framework = Framework(plugins=[KindsPlugin(), __import__("difframe.builtins").builtins])
    assert framework.get("guider", "toy-cfg").spec.kind == "guider"
    assert framework.get("guider", "classifier-free").name == "cfg"
    assert framework.get("inference_hook", "toy-hook").spec.incompatible == ("toy-cfg",)
    assert any("Bad Name" in p.message for p in framework.problems)
    with pytest.raises(UnknownComponentError, match="no guider named 'nope'.*Installed guiders: cfg, toy-cfg"):
        framework.get("guider", "nope")
    assert isinstance(framework.create("guider", "cfg"), ClassifierFreeGuidance)
    assert main(["plugins", "--json", "--kind", "guider"]) == 0
    assert "cfg" in {r["name"] for p in json.loads(capsys.readouterr().out) for r in p["registrations"]}


class Tag(InferenceHook):
    targets = ("inner",)

    def __init__(self, label: str, log: list) -> None:
        self.label, self.log = label, log

    def pre_forward(self, module_name, module, args, kwargs):
        self.log.append(f"pre {self.label} step {current_step().index}")

    def post_forward(self, module_name, module, args, kwargs, output):
        self.log.append(f"post {self.label}")
        return output + 1


def test_hooks_compose_in_order_skip_and_come_off():
    model = ToyDenoiser().eval()
    x = torch.randn(1, 4, 2, 2)
    exact = model(x, 10)
    log: list[str] = []
    hooks = HookSet()
    first, second = Tag("a", log), Tag("b", log)
    hooks.add(model, first)
    hooks.add(model, second)
    with at_step(StepContext(index=3, total=5, timestep=10)):
        hooked = model(x, 10)
    assert log == ["pre a step 3", "pre b step 3", "post b", "post a"]
    assert not torch.equal(hooked, exact)
    hooks.remove(first)
    hooks.remove(second)
    assert torch.equal(model(x, 10), exact) and "forward" not in vars(model.inner)

    class Zero(InferenceHook):
        targets = ("Conv2d",)  # a class name: both convolutions

        def pre_forward(self, module_name, module, args, kwargs):
            return Skip(torch.zeros(args[0].shape[0], module.out_channels, *args[0].shape[2:]))

    hooks.add(model, Zero())
    assert torch.equal(model(x, 10), torch.zeros_like(exact))


def test_a_failing_hook_is_named_with_its_module():
    class Broken(InferenceHook):
        targets = ("outer",)
        name = "broken-hook"

        def post_forward(self, module_name, module, args, kwargs, output):
            raise ValueError("no")

    model = ToyDenoiser()
    HookSet().add(model, Broken())
    with pytest.raises(HookError, match=r"'broken-hook' failed in post_forward of module 'outer' \(Conv2d\)"):
        model(torch.randn(1, 4, 2, 2), 1)
    with pytest.raises(ValueError, match="match no module"):
        HookSet().add(model, type("Nowhere", (InferenceHook,), {"targets": ("nothing*",)})())

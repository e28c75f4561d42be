"""A third party's sampler, installed as its own distribution: it subclasses the public sampler base, declares only
its own option, registers a web-UI label, and is used by build(), set_scheduler and `difframe generate` (whose PNG
names it by that label, which --from-png reads back), with no private import."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

# Euler's step on the public contract: the base prepares the noise schedule from the shared options (declared once
# in difframe.scheduling), sigma_schedule/set_schedule lay out a run, current_index/advance track the position.
PLAIN_EULER = '''
import torch
from difframe import hookimpl
from difframe.scheduling import SchedulerOutput, SigmaScheduler, x0_from_sigma


class PlainEuler(SigmaScheduler):
    """Euler steps, each ``step_scale`` times as long (1: plain Euler)."""

    def __init__(self, step_scale: float = 1.0) -> None:
        if step_scale <= 0:
            raise ValueError(f"step_scale must be positive, got {step_scale}")

    def set_timesteps(self, num_inference_steps=None, device=None):
        timesteps, sigmas = self.sigma_schedule(num_inference_steps, None, None)
        self.set_schedule(timesteps, sigmas, device)

    def step(self, model_output, timestep, sample, generator=None):
        i = self.current_index(timestep)
        sample = sample.to(torch.float32)
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        x0 = x0_from_sigma(self.config.prediction_type, model_output, sample, sigma)
        prev = sample + (sample - x0) / sigma * (sigma_next - sigma) * self.config.step_scale
        self.advance()
        return SchedulerOutput(prev.to(model_output.dtype), x0)


@hookimpl
def register_scheduler(register):
    register(name="plain-euler", factory="plain_euler_sampler:PlainEuler", label="Plain Euler",
             schedule_type="Uniform", description="Euler on the public sampler base (a test's third-party sampler)")
'''


@pytest.fixture
def third_party(fake_plugin):
    """Installed as a third party's distribution is (dist-info with an entry point in group 'difframe')."""
    fake_plugin("plain-euler-sampler", PLAIN_EULER, module="plain_euler_sampler", entry_point="plain-euler")
    return importlib.import_module("plain_euler_sampler")


def test_the_contract_gives_the_shared_options_and_its_own(third_party):
    from difframe import Framework
    from difframe.errors import ConfigError

    sampler = Framework().scheduler("plain-euler", {"beta_schedule": "scaled_linear", "step_scale": 0.5})
    assert sampler.config.step_scale == 0.5 and sampler.config.beta_schedule == "scaled_linear"
    assert sampler.config.num_train_timesteps == 1000  # a shared option it did not declare, with its default
    with pytest.raises(ConfigError, match="beta_schedule"):
        Framework().scheduler("plain-euler", {"beta_schedule": "cubic"})
    with pytest.raises(ConfigError, match="step_scale must be positive"):
        Framework().scheduler("plain-euler", {"step_scale": 0})


def test_build_with_the_sampler_gives_euler_images(h, tiny_model, third_party):
    from difframe import Framework

    framework = Framework()
    settings = {"num_inference_steps": 3, "height": 32, "width": 32, "output_type": "latent"}
    pipe = h.build(framework, tiny_model, scheduler="plain-euler")
    assert type(pipe.scheduler).__name__ == "PlainEuler"
    ours = pipe("a red fox", generator=torch.Generator().manual_seed(2), **settings)
    assert ours.parameters[0].scheduler == "plain-euler"
    assert "Sampler: Plain Euler, CFG" in ours.parameters[0].to_text()
    pipe.set_scheduler("euler")
    euler = pipe("a red fox", generator=torch.Generator().manual_seed(2), **settings)
    torch.testing.assert_close(ours.images, euler.images, rtol=0, atol=0)


def test_cli_names_it_by_its_label_and_reproduces_it(tiny_model, third_party, tmp_path):
    from difframe.cli import main

    out, again = tmp_path / "out", tmp_path / "again"
    common = ("-m", str(tiny_model), "--steps", "2", "--size", "32", "--no-progress", "--seed", "5")
    assert main(["generate", "a red fox", "--scheduler", "plain-euler", "-o", str(out), *common]) == 0
    [made] = out.glob("*.png")
    assert "Sampler: Plain Euler," in Image.open(made).text["parameters"]
    assert main(["generate", "--from-png", str(made), "-m", str(tiny_model), "-o", str(again), "--no-progress"]) == 0
    [copy] = again.glob("*.png")
    assert Image.open(copy).text["parameters"] == Image.open(made).text["parameters"]
    assert np.array_equal(np.asarray(Image.open(copy)), np.asarray(Image.open(made)))

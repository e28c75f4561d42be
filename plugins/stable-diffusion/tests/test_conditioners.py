"""Conditioners through the registry: a third party's conditioner, installed as its own distribution, used by
build(), set_conditioner and `difframe generate --conditioner`, with no private import."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

# A third party's conditioner: the protocol of docs/hooks.md; from difframe only the public hookimpl marker.
SCALED_TEXT = '''
import torch

CALLS = []


class ScaledTextConditioner:
    """Plain CLIP embeddings of at most 77 tokens, multiplied by ``scale``."""

    def __init__(self, tokenizer, text_encoder, scale=1.0):
        self.tokenizer, self.text_encoder, self.scale = tokenizer, text_encoder, float(scale)

    def count_chunks(self, prompts):
        return 1

    @torch.no_grad()
    def encode(self, prompts, clip_skip=None, *, chunks=None):
        CALLS.append(list(prompts))
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0] * self.scale


from difframe import hookimpl


@hookimpl
def register_conditioner(register):
    register(name="scaled-text", factory="scaled_text_conditioner:ScaledTextConditioner",
             description="CLIP embeddings times a factor (a test's third-party conditioner)")
'''


@pytest.fixture
def third_party(fake_plugin):
    """Installed as a third party's distribution is (dist-info with an entry point in group 'difframe')."""
    fake_plugin("scaled-text-conditioner", SCALED_TEXT, module="scaled_text_conditioner", entry_point="scaled-text")
    return importlib.import_module("scaled_text_conditioner")


def _fresh_framework():
    from difframe import Framework

    return Framework()


def test_build_and_set_conditioner_by_name(h, tiny_model, third_party):
    framework = _fresh_framework()
    assert "scaled-text" in framework.conditioners
    pipe = h.build(framework, tiny_model, conditioner="scaled-text")
    settings = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "latent"}
    same = pipe("a red fox", generator=torch.Generator().manual_seed(1), **settings)
    assert third_party.CALLS and ["a red fox"] in third_party.CALLS
    assert same.parameters[0].extra["Conditioner"] == "scaled-text"
    pipe.set_conditioner("clip-text")  # a short prompt: the same tokens, so the same embedding
    default = pipe("a red fox", generator=torch.Generator().manual_seed(1), **settings)
    torch.testing.assert_close(same.images, default.images, rtol=0, atol=0)
    assert "Conditioner" not in default.parameters[0].extra
    pipe.set_conditioner("scaled-text", scale=3.0)
    louder = pipe("a red fox", generator=torch.Generator().manual_seed(1), **settings)
    assert (louder.images - default.images).abs().max() > 1e-3
    assert louder.parameters[0].extra["Conditioner"] == 'scaled-text {"scale": 3.0}'


def test_bad_conditioner_names_fail_before_weights_load(tiny_model, third_party):
    from difframe.errors import UnknownComponentError

    framework = _fresh_framework()
    with pytest.raises(UnknownComponentError, match="scaled-text"):
        framework.build("stable-diffusion", model=tiny_model / "missing", conditioner="scaled-txt")
    with pytest.raises(ValueError, match="encodes image prompts, not text"):
        framework.build("stable-diffusion", model=tiny_model / "missing", conditioner="ip-adapter")


def test_cli_conditioner_is_recorded_and_reproduced(tiny_model, third_party, tmp_path):
    from difframe.cli import main

    out, again = tmp_path / "out", tmp_path / "again"
    common = ("-m", str(tiny_model), "--steps", "2", "--size", "32", "--no-progress", "--seed", "5")
    assert main(["generate", "a red fox", "--conditioner", "scaled-text", "-o", str(out), *common]) == 0
    [made] = out.glob("*.png")
    assert "Conditioner: scaled-text" in Image.open(made).text["parameters"]
    third_party.CALLS.clear()
    assert main(["generate", "--from-png", str(made), "-m", str(tiny_model), "-o", str(again), "--no-progress"]) == 0
    assert third_party.CALLS  # the PNG's conditioner was used again
    [copy] = again.glob("*.png")
    assert np.array_equal(np.asarray(Image.open(copy)), np.asarray(Image.open(made)))


def test_prompt_weighting_is_on_by_default_and_its_setting_is_recorded(tiny_model, tmp_path):
    from difframe.cli import main

    common = ("-m", str(tiny_model), "--steps", "2", "--size", "32", "--no-progress", "--seed", "5")
    weighted, plain, literal = tmp_path / "weighted", tmp_path / "plain", tmp_path / "literal"
    assert main(["generate", "a (red:1.6) fox", "-o", str(weighted), *common]) == 0
    assert main(["generate", "a red fox", "-o", str(plain), *common]) == 0
    assert main(["generate", "a (red:1.6) fox", "--no-prompt-weighting", "-o", str(literal), *common]) == 0
    [weighted_png], [plain_png], [literal_png] = (sorted(d.glob("*.png")) for d in (weighted, plain, literal))
    assert "Conditioner" not in Image.open(weighted_png).text["parameters"]  # on, as in the web UI: nothing to say
    # quoted as the web UI quotes a value holding commas, colons or quotes
    assert 'Conditioner: "clip-text {\\"weighting\\": false}"' in Image.open(literal_png).text["parameters"]
    pixels = [np.asarray(Image.open(p), dtype=int) for p in (weighted_png, plain_png, literal_png)]
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[0], pixels[2])
    again = tmp_path / "again"
    assert (
        main(["generate", "--from-png", str(literal_png), "-m", str(tiny_model), "-o", str(again), "--no-progress"])
        == 0
    )
    [copy] = again.glob("*.png")
    assert np.array_equal(np.asarray(Image.open(copy), dtype=int), pixels[2])

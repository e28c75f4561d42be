"""The pipelines' shared pieces: progress counted in sampler steps, attention add-ons only where they apply, the
attention recorded in the PNG, and bit-exact images whatever batch they are made in."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image


class Bar:
    def __init__(self, total):
        self.total, self.n = total, 0

    def update(self, n=1):
        self.n += n


def recording_progress(pipe, bars):
    @contextlib.contextmanager
    def progress_bar(iterable=None, total=None):
        bars.append(Bar(total))
        yield bars[-1]

    return progress_bar


@pytest.mark.parametrize("sampler", ["heun", "dpmpp"])
def test_progress_counts_sampler_steps(h, framework, tiny_model, sampler):
    pipe = h.cached(framework, tiny_model, scheduler=sampler)
    bars: list[Bar] = []
    pipe.progress_bar = recording_progress(pipe, bars)
    try:
        pipe("a cat", seed=1, num_inference_steps=5, output_type="latent")
        pipe("a cat", seed=1, num_images_per_prompt=2, num_inference_steps=5, output_type="latent")
    finally:
        del pipe.progress_bar
    assert [(bar.total, bar.n) for bar in bars] == [(5, 5), (10, 10)]  # Heun calls the UNet 9 times for 5 steps


class ScaleOutput:  # the example add-on of docs/attention.md, as written there
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        out = attn.attend(attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), attention_mask)
        return attn.to_out[0](out) * kwargs.get("scale", 1.0)


def test_documented_addon_applies_to_the_unet_only(h, framework, tiny_model):
    from difframe.attention import attention_modules

    pipe = h.build(framework, tiny_model)
    plain = pipe("a cat", seed=3, num_inference_steps=2, output_type="np").images
    addon = ScaleOutput()
    pipe.set_attention(addon)
    assert all(module.addon is addon for _, module in attention_modules(pipe.unet))
    assert all(module.addon is None for _, module in attention_modules(pipe.vae))
    out = pipe("a cat", seed=3, num_inference_steps=2, cross_attention_kwargs={"scale": 1.0})
    assert np.array_equal(np.asarray(out.images[0]), (plain[0] * 255).round().astype(np.uint8))
    assert "Attention: sdpa + ScaleOutput add-on" in out.parameters[0].to_text()
    pipe.set_attention(None)
    assert all(module.addon is None for _, module in attention_modules(pipe.unet))


def test_addon_declares_where_it_applies(h, framework, tiny_model):
    from difframe.attention import attention_modules

    class Everywhere:
        applies_to = ("unet", "vae")

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
            return attn.default_forward(hidden_states, encoder_hidden_states, attention_mask)

    class Nowhere(Everywhere):
        applies_to = ("text_encoder",)

    pipe = h.build(framework, tiny_model)
    everywhere = Everywhere()
    pipe.set_attention(everywhere)
    assert all(module.addon is everywhere for _, module in attention_modules(pipe.vae))
    with pytest.raises(ValueError, match="applies_to names \\['text_encoder'\\]; it may name 'unet' and 'vae'"):
        pipe.set_attention(Nowhere())


def test_backend_options_from_build_and_recorded(h, framework, tiny_model):
    from difframe.attention import attention_modules

    pipe = h.build(framework, tiny_model, attention="sliced", attention_options={"slice_size": "max"})
    backends = {module.backend.slice_size for _, module in attention_modules(pipe.unet)}
    assert backends == {"max"}
    out = pipe("a cat", seed=3, num_inference_steps=1)
    assert out.parameters[0].extra["Attention"] == "sliced"
    assert "Attention: sliced" in out.images[0].info["parameters"]
    with pytest.raises(ValueError, match="attention_options needs attention="):
        h.build(framework, tiny_model, attention_options={"slice_size": "max"})


@pytest.mark.parametrize("kind", ["text", "img2img"])
def test_image_of_a_batch_is_bit_identical_to_it_alone(h, framework, tiny_model, kind):
    torch.set_num_threads(2)  # several threads: where kernels would block by batch size
    pipeline = {"text": "stable-diffusion", "img2img": "stable-diffusion-img2img"}[kind]
    pipe = h.cached(framework, tiny_model, pipeline, scheduler="euler_a")
    extra = {}
    if kind == "img2img":
        extra = {"image": Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))}
    prompts = ["a red cat", "a blue dog in the snow", "a green tree"]
    batch = pipe(prompts, seeds=[5, 6, 7], num_inference_steps=3, output_type="np", **extra)
    for i, prompt in enumerate(prompts):
        alone = pipe(prompt, seed=5 + i, num_inference_steps=3, output_type="np", **extra)
        assert batch.images[i].tobytes() == alone.images[0].tobytes(), f"image {i}"
    assert pipe.reproducible  # the default

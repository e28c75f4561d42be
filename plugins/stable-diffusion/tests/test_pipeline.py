"""Pipeline behaviour: per-image seeds independent of the batch, chunking, callbacks and interrupts, output types,
metadata, memory options and bad input rejected before any denoising."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

STEPS = 3


def close(a, b, tol=1e-5):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= tol


def test_an_image_is_the_same_alone_or_in_any_batch(h, framework, tiny_model):
    # a stochastic sampler, guidance, negative prompts: the image of ("a dog", seed 8) must not depend on its
    # neighbours, its position, the number of images per prompt or the chunking
    pipe = h.cached(framework, tiny_model, scheduler="euler_a")
    kwargs = dict(num_inference_steps=STEPS, output_type="np")
    alone = pipe("a dog", negative_prompt="ugly", seed=8, **kwargs).images[0]
    batch = pipe(["a cat", "a dog", "a bird"], negative_prompt=["", "ugly", "bad"], seeds=[1, 8, 3], **kwargs)
    assert close(batch.images[1], alone)
    reordered = pipe(["a dog", "a cat"], negative_prompt=["ugly", ""], seeds=[8, 1], **kwargs)
    assert close(reordered.images[0], alone) and close(reordered.images[1], batch.images[0])
    per_prompt = pipe("a dog", negative_prompt="ugly", seeds=[2, 8], num_images_per_prompt=2, **kwargs)
    assert close(per_prompt.images[1], alone)
    chunked = pipe(
        ["a cat", "a dog", "a bird"], negative_prompt=["", "ugly", "bad"], seeds=[1, 8, 3], memory_budget=1, **kwargs
    )
    assert close(chunked.images, batch.images)
    assert not close(batch.images[0], batch.images[2], tol=1e-3)  # different seeds do differ


def test_seed_gives_consecutive_seeds(h, framework, tiny_model):
    pipe = h.cached(framework, tiny_model, scheduler="ddim")
    out = pipe("a cat", seed=41, num_images_per_prompt=3, num_inference_steps=1, output_type="latent")
    assert out.seeds == [41, 42, 43]
    assert [p.seed for p in out.parameters] == [41, 42, 43]
    random = pipe("a cat", num_inference_steps=1, output_type="latent")
    assert isinstance(random.seeds[0], int)
    again = pipe("a cat", seed=random.seeds[0], num_inference_steps=1, output_type="latent")
    assert torch.equal(again.images, random.images)


def test_memory_budget_splits_batches(h, framework, tiny_model):
    pipe = h.cached(framework, tiny_model, scheduler="dpmpp")
    per_image = pipe.estimate_image_bytes(32, 32, guided=True)
    calls = []
    original = pipe.run_chunk

    def spy(chunk, **settings):
        calls.append(chunk.size)
        return original(chunk, **settings)

    pipe.run_chunk = spy
    try:
        pipe("a cat", seed=1, num_images_per_prompt=5, num_inference_steps=1, memory_budget=per_image * 2)
        assert calls == [1] * 5  # reproducible (the default): every image in a batch of its own
        calls.clear()
        pipe.set_reproducible(False)
        pipe("a cat", seed=1, num_images_per_prompt=5, num_inference_steps=1, memory_budget=per_image * 2)
        assert calls == [2, 2, 1]
        assert pipe.memory_budget is None  # a call's budget is for that call only
        calls.clear()
        pipe.set_memory_budget("unlimited")
        pipe("a cat", seed=1, num_images_per_prompt=5, num_inference_steps=1)
        assert calls == [5]
    finally:
        del pipe.run_chunk
        pipe.set_memory_budget(None)
        pipe.set_reproducible(True)


def test_callback_reads_replaces_latents_and_interrupts(h, framework, tiny_model):
    pipe = h.cached(framework, tiny_model, scheduler="ddim")
    seen = []

    def record(p, step, timestep, tensors):
        seen.append((step, int(timestep), tuple(tensors["latents"].shape)))
        return {}

    pipe("a cat", seed=0, num_inference_steps=STEPS, callback_on_step_end=record, output_type="latent")
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][2] == (1, 4, 16, 16)

    def zero_at_end(p, step, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if step == STEPS - 1 else {}

    out = pipe("a cat", seed=0, num_inference_steps=STEPS, callback_on_step_end=zero_at_end, output_type="latent")
    assert torch.count_nonzero(out.images) == 0

    def stop_after_first(p, step, timestep, tensors):
        p.interrupt()

    steps = []
    out = pipe(
        "a cat",
        seed=0,
        num_inference_steps=STEPS,
        num_images_per_prompt=2,
        memory_budget=1,
        callback_on_step_end=lambda *a: steps.append(a[1]) or stop_after_first(*a),
        output_type="np",
    )
    assert out.interrupted and steps == [0]
    assert out.images.shape == (1, 32, 32, 3)  # the interrupted chunk is decoded; later chunks do not run


def test_output_types_and_embedded_parameters(h, framework, tiny_model, tmp_path):
    from difframe_stable_diffusion.metadata import read_parameters

    pipe = h.cached(framework, tiny_model, scheduler="euler")
    kwargs = dict(seed=5, num_inference_steps=2, negative_prompt="blurry")
    pil = pipe("a cat", **kwargs)
    array = pipe("a cat", output_type="np", **kwargs).images
    tensor = pipe("a cat", output_type="pt", **kwargs).images
    latent = pipe("a cat", output_type="latent", **kwargs).images
    assert (
        array.shape == (1, 32, 32, 3)
        and tuple(tensor.shape) == (1, 3, 32, 32)
        and tuple(latent.shape) == (1, 4, 16, 16)
    )
    assert np.allclose(tensor.permute(0, 2, 3, 1).numpy(), array)
    assert np.array_equal(np.asarray(pil.images[0]), (array[0] * 255).round().astype("uint8"))
    text = pil.images[0].info["parameters"]
    settings = "Steps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 5, Size: 32x32, Model: tiny-sd"
    assert text == f"a cat\nNegative prompt: blurry\n{settings}"
    [path] = pil.save(tmp_path)
    params = read_parameters(path)
    assert (params.prompt, params.seed, params.scheduler, params.steps) == ("a cat", 5, "euler", 2)
    again = pipe(
        params.prompt,
        negative_prompt=params.negative_prompt,
        seed=params.seed,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale,
        height=params.height,
        width=params.width,
        output_type="np",
    )
    assert np.array_equal(again.images, array)


def test_swap_sampler_in_one_line(h, framework, tiny_model):
    pipe = h.cached(framework, tiny_model, scheduler="ddim")
    pipe.set_scheduler("euler_a")
    assert pipe.scheduler_name == "euler_a"
    pipe.set_scheduler("dpmpp_2m_karras")
    assert pipe.scheduler_name == "dpmpp_2m_karras"
    pipe.set_scheduler("euler")  # Karras sigmas came with the name, so they do not carry over
    assert pipe.scheduler_name == "euler" and not pipe.scheduler.config.get("use_karras_sigmas")
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"  # the model's noise schedule stays
    pipe.set_scheduler("dpmpp")
    assert pipe.scheduler_name == "dpmpp_2m"
    assert pipe("a cat", seed=1, num_inference_steps=2).parameters[0].to_text().count("Sampler: DPM++ 2M,") == 1


def test_attention_backends_and_memory_options_keep_the_image(h, framework, tiny_model):
    pipe = h.build(framework, tiny_model, scheduler="ddim", attention="auto")
    kwargs = dict(seed=3, num_inference_steps=2, num_images_per_prompt=2, output_type="np")
    baseline = pipe("a cat", **kwargs).images
    pipe.enable_attention_slicing("max")
    pipe.enable_vae_slicing()
    assert close(pipe("a cat", **kwargs).images, baseline)
    pipe.disable_attention_slicing()
    pipe.disable_vae_slicing()
    pipe.enable_model_cpu_offload("cpu")
    moves = []
    original = pipe._activate
    pipe._activate = lambda module: moves.append(type(module).__name__) or original(module)
    assert close(pipe("a cat", **kwargs).images, baseline)
    assert moves[0] == "CLIPTextModel" and "UNet2DConditionModel" in moves and moves[-1] == "AutoencoderKL"
    assert pipe._active_module is None  # everything back on the CPU after the call
    sliced = h.build(framework, tiny_model, scheduler="ddim", attention="sliced", vae_tiling=True)
    assert close(sliced("a cat", **kwargs).images, baseline)


def test_timings_measure_model_calls(h, framework, tiny_model):
    pipe = h.cached(framework, tiny_model, scheduler="dpmpp")
    pipe.timings = {}
    pipe("a cat", seed=1, num_inference_steps=2)
    assert set(pipe.timings) == {"text_encoder", "unet", "vae"} and all(v > 0 for v in pipe.timings.values())


# --- bad input ------------------------------------------------------------------------------------------------------
BAD_CALLS = [
    (dict(height=30), "multiples of"),
    (dict(width=33), "multiples of"),
    (dict(num_inference_steps=0), "at least 1"),
    (dict(num_inference_steps=2.5), "integer"),
    (dict(seeds=[1, 2]), "2 seeds for 1 images"),
    (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), "3 entries but there are 2 prompts"),
    (dict(guidance_rescale=2.0), r"\[0, 1\]"),
    (dict(output_type="jpeg"), "output_type"),
    (dict(num_images_per_prompt=0), "at least 1"),
    (dict(prompt=None), "pass a prompt"),
    (dict(generator=[torch.Generator()] * 3), "3 generators for 1 images"),
    (dict(latents=torch.zeros(1, 4, 8, 8)), "latents must be"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_CALLS)
def test_bad_input_fails_before_denoising(h, framework, tiny_model, kwargs, message):
    pipe = h.cached(framework, tiny_model, scheduler="ddim")
    pipe.timings = {}
    with pytest.raises((ValueError, TypeError), match=message):
        pipe(**{"prompt": "a cat", "num_inference_steps": 2, **kwargs})
    assert "unet" not in pipe.timings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(strength=1.5), r"strength must be in \[0, 1\]"),
        (dict(strength=-0.1), r"strength must be in \[0, 1\]"),
        (dict(strength=0.1, num_inference_steps=5), "no denoising step"),
    ],
)
def test_bad_strength(h, framework, tiny_model, kwargs, message):
    pipe = h.cached(framework, tiny_model, "stable-diffusion-img2img", "ddim")
    with pytest.raises(ValueError, match=message):
        pipe(**{"prompt": "a cat", "image": h.make_image(32), "num_inference_steps": 2, **kwargs})


def test_mask_and_image_sizes_must_match(h, framework, tiny_model):
    pipe = h.cached(framework, tiny_model, "stable-diffusion-inpaint", "ddim")
    pipe.timings = {}
    with pytest.raises(ValueError, match="same size"):
        pipe("a cat", image=h.make_image(32), mask_image=h.make_mask(64), num_inference_steps=2)
    assert not pipe.timings


def test_bad_build(h, framework, tiny_model, tmp_path):
    from difframe.errors import ModelLoadError, UnknownComponentError

    broken = tmp_path / "no-vae"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="vae"):
        framework.build("stable-diffusion", model=broken)
    with pytest.raises(UnknownComponentError, match="no scheduler named 'warp_drive'.*Installed schedulers"):
        framework.build("stable-diffusion", model=tiny_model, scheduler="warp_drive")
    with pytest.raises(UnknownComponentError, match="no attention processor named 'flashy'"):
        framework.build("stable-diffusion", model=tiny_model, attention="flashy")
    with pytest.raises(ValueError, match="unknown dtype"):
        framework.build("stable-diffusion", model=tiny_model, dtype="float7")
    with pytest.raises(TypeError, match="unknown option"):
        framework.build("stable-diffusion", model=tiny_model, turbo=True)


def test_save_and_load_round_trip(h, framework, tiny_model, tmp_path):
    import json

    import diffusers

    pipe = h.build(framework, tiny_model, scheduler="ddim")
    assert pipe.scheduler.config.clip_sample is False  # corrected on load, as the reference's constructor does
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    again = h.build(framework, tmp_path / "saved")
    kwargs = dict(seed=1, num_inference_steps=2, output_type="np")
    ours = pipe("a cat", **kwargs).images
    assert np.array_equal(again("a cat", **kwargs).images, ours)
    # the reference library loads our save as well, and makes the same image
    reference = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "saved", safety_checker=None)
    reference.set_progress_bar_config(disable=True)
    assert type(reference.scheduler).__name__ == "DDIMScheduler"
    theirs = reference("a cat", generator=h.generators([1]), num_inference_steps=2, output_type="np").images
    assert close(theirs, ours, tol=1e-4)

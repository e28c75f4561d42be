"""The drawn data set and the automatic scorer the model is measured with."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from difframe_shapes_model.data import PALETTE, SHAPES, all_captions, draw, make_dataset, random_scene
from difframe_shapes_model.evaluate import (
    check_scorer,
    describe_timing,
    evaluate,
    guidance_gap,
    markdown,
    parse_setting,
    prompts_and_seeds,
    time_single_image,
)
from difframe_shapes_model.score import parse_prompt, read, score
from PIL import Image, ImageFilter


def test_dataset_is_reproducible_from_its_seed():
    a, scenes_a = make_dataset(20, seed=3)
    b, scenes_b = make_dataset(20, seed=3)
    assert np.array_equal(a, b) and scenes_a == scenes_b
    assert a.shape == (20, 64, 64, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, make_dataset(20, seed=4)[0])


def test_scenes_follow_the_rules():
    import random

    rng = random.Random(0)
    for _ in range(300):
        scene = random_scene(rng)
        assert scene.colour != scene.background and scene.shape in SHAPES
        left, top, right, bottom = scene.box
        assert 0 < left < right < 64 and 0 < top < bottom < 64 and right - left == bottom - top


def test_captions():
    captions = all_captions()
    assert len(captions) == len(set(captions)) == 6 * 5 * 3
    assert "a red circle on a blue background" in captions
    assert parse_prompt("a red circle on a blue background") == ("red", "circle", "blue")


def test_scorer_reads_ground_truth():
    assert check_scorer(count=500) >= 0.98


def test_scorer_survives_blur_and_noise():
    images, scenes = make_dataset(200, seed=9)
    rng = np.random.default_rng(0)
    right = 0
    for image, scene in zip(images, scenes):
        blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
        noisy = np.clip(blurred + rng.normal(0, 8, blurred.shape), 0, 255).astype(np.uint8)
        right += all(score(noisy, scene.caption).values())
    assert right / len(images) >= 0.95


def test_scorer_on_a_plain_image_finds_no_shape():
    plain = Image.new("RGB", (64, 64), PALETTE["green"])
    reading = read(plain)
    assert (reading.background, reading.colour, reading.shape) == ("green", None, None)
    assert score(plain, "a red circle on a green background") == {
        "background": True,
        "colour": False,
        "shape": False,
        "both_colours": False,
    }


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_kind_is_told_apart(shape):
    from difframe_shapes_model.data import Scene

    image = draw(Scene("yellow", shape, "purple", (10, 12, 50, 52)))
    assert read(image).shape == shape


def test_evaluation_prompts_are_fixed():
    prompts, seeds = prompts_and_seeds(240)
    assert len(prompts) == 240 and seeds == list(range(240))
    assert set(prompts) == set(all_captions())
    assert prompts_and_seeds(240) == (prompts, seeds)


def test_shipped_model_generates_offline_and_follows_the_prompt():
    from difframe import Framework

    pipe = Framework().build("stable-diffusion", progress=False)  # no model: the built-in one
    image = pipe("a red circle on a blue background", seed=7, num_inference_steps=20).images[0]
    assert image.size == (64, 64)
    result = score(image, "a red circle on a blue background")
    assert result["both_colours"], result


def test_the_built_in_model_runs_with_prepacked_convolutions():
    """Its 8x8 latents are where prepacking pays; the images are those of plain convolutions."""
    from difframe import Framework
    from difframe.prepacking import prepacking_available, uses_prepacked_convolutions

    fast = Framework().build("stable-diffusion", progress=False)
    plain = Framework().build("stable-diffusion", progress=False, prepacked_convolutions=False)
    assert not uses_prepacked_convolutions(plain.unet) and not uses_prepacked_convolutions(plain.vae)
    if not prepacking_available():
        pytest.skip("this torch build has no oneDNN CPU operators: the built-in model runs plain convolutions")
    assert uses_prepacked_convolutions(fast.unet) and uses_prepacked_convolutions(fast.vae)
    kwargs = dict(seed=5, num_inference_steps=8, output_type="np")
    np.testing.assert_allclose(fast("a red circle", **kwargs).images, plain("a red circle", **kwargs).images, atol=1e-4)
    with pytest.raises(ValueError, match="prepacked_convolutions must be True, False or 'auto'"):
        Framework().build("stable-diffusion", prepacked_convolutions="yes")


def test_timing_one_image_reports_its_spread():
    from difframe import Framework

    pipe = Framework().build("stable-diffusion", progress=False)
    timing = time_single_image(pipe, repeat=3)
    assert 0 < timing["p10"] <= timing["median"] <= timing["p90"] and timing["runs"] == 3
    assert "median" in describe_timing(timing) and "3 runs" in describe_timing(timing)


def test_guidance_visibly_works_on_the_shipped_model():
    """Unguided, the model follows its prompt poorly (as Stable Diffusion does); guidance fixes that."""
    from difframe import Framework

    pipe = Framework().build("stable-diffusion", progress=False)
    rows = evaluate(pipe, [("dpmpp", 20, 1.0), ("dpmpp", 20, 7.5)], count=60)
    assert rows[1]["both_colours"] >= 80, rows
    assert guidance_gap(rows) >= 20, rows


def test_damaged_shipped_weights_name_the_file(tmp_path):
    import shutil

    from difframe import Framework
    from difframe.errors import ModelLoadError
    from difframe_shapes_model import WEIGHTS

    copy = shutil.copytree(WEIGHTS, tmp_path / "model")
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"unet.*diffusion_pytorch_model.safetensors"):
        Framework().build("stable-diffusion", model=copy)
    weights.unlink()
    with pytest.raises(ModelLoadError, match="has no weights file diffusion_pytorch_model.safetensors"):
        Framework().build("stable-diffusion", model=copy)


def test_prompts_outside_the_training_vocabulary_still_generate():
    from difframe import Framework

    pipe = Framework().build("stable-diffusion", progress=False)
    out = pipe(["a photograph of an astronaut riding a horse", ""], seed=3, num_inference_steps=4, output_type="np")
    assert out.images.shape == (2, 64, 64, 3) and np.isfinite(out.images).all()


def test_evaluation_settings_and_the_guidance_gap():
    assert parse_setting("dpmpp:20:7.5") == ("dpmpp", 20, 7.5)
    with pytest.raises(argparse.ArgumentTypeError, match="sampler:steps:guidance"):
        parse_setting("dpmpp:20")
    row = {"images": 240, "background": 99.0, "colour": 95.0, "shape": 90.0, "seconds_per_image_batched": 0.07}
    rows = [
        {"model": "unet-02000", **row, "sampler": "dpmpp", "steps": 20, "guidance": 1.0, "both_colours": 50.0},
        {"model": "unet-02000", **row, "sampler": "dpmpp", "steps": 20, "guidance": 7.5, "both_colours": 85.5},
        {"model": "unet-04000", **row, "sampler": "ddim", "steps": 20, "guidance": 7.5, "both_colours": 90.0},
    ]
    assert guidance_gap(rows[:2]) == 35.5
    assert guidance_gap(rows[1:]) is None  # no unguided row to compare with
    table = markdown(rows).splitlines()
    assert table[0].startswith("| model | sampler") and table[2].startswith("| unet-02000 | dpmpp | 20 | 1.0 |")

"""PNG parameters in the web UIs' format: written, read back, and read from AUTOMATIC1111's own output."""

from __future__ import annotations

import pytest
from difframe_stable_diffusion.metadata import (
    GenerationParameters,
    parse_settings,
    read_parameters,
    sampler_label,
    save_png,
    scheduler_from_label,
)
from PIL import Image

A1111 = (
    "masterpiece, a cat wearing a hat\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 3456789012, Size: 512x768, "
    'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "add_detail: 7c6bad76eb54", '
    "Clip skip: 2, Version: v1.7.0"
)


def test_writes_the_web_ui_format():
    params = GenerationParameters(
        prompt="a watercolor fox",
        negative_prompt="blurry",
        steps=20,
        scheduler="dpmpp_2m_karras",
        guidance_scale=7.5,
        seed=7,
        width=512,
        height=512,
        model="sd15",
    )
    assert params.to_text() == (
        "a watercolor fox\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 7, Size: 512x512, "
        "Model: sd15"
    )


def test_reads_automatic1111_output():
    params = GenerationParameters.from_text(A1111)
    assert params.prompt == "masterpiece, a cat wearing a hat"
    assert params.negative_prompt == "lowres, bad anatomy"
    assert (params.steps, params.scheduler, params.guidance_scale, params.seed) == (
        20,
        "dpmpp_2m_karras",
        7.0,
        3456789012,
    )
    assert (params.width, params.height, params.model, params.clip_skip) == (512, 768, "v1-5-pruned-emaonly", 1)
    assert params.extra["Model hash"] == "6ce0161689"
    assert params.extra["Lora hashes"] == "add_detail: 7c6bad76eb54"


def test_round_trip_with_quoting_multiline_and_extras():
    params = GenerationParameters(
        prompt="line one\nline two, with: colon",
        negative_prompt="bad\nworse",
        steps=4,
        scheduler="euler_a",
        guidance_scale=5.0,
        seed=2**40,
        width=768,
        height=512,
        model="org/model, v2",
        clip_skip=1,
        guidance_rescale=0.7,
        strength=0.6,
        extra={"Note": "x, y"},
    )
    assert GenerationParameters.from_text(params.to_text()) == params


def test_newer_schedule_type_and_unknown_sampler():
    settings = "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1, Size: 640x640"
    assert GenerationParameters.from_text(f"p\n{settings}").scheduler == "dpmpp_2m_karras"
    assert scheduler_from_label("Euler a") == "euler_a"
    assert scheduler_from_label("my_sampler") == "my_sampler"
    assert sampler_label("my_sampler") == "my_sampler"
    assert sampler_label("dpmpp") == "DPM++ 2M" and scheduler_from_label("DPM++ 2M") == "dpmpp_2m"


def test_prompt_without_settings_and_bad_values():
    assert GenerationParameters.from_text("just a prompt").prompt == "just a prompt"
    with pytest.raises(ValueError, match="Steps"):
        GenerationParameters.from_text("p\nSteps: many, Sampler: Euler, CFG scale: 7")
    assert parse_settings('A: 1, B: "x, y", C: z') == {"A": "1", "B": "x, y", "C": "z"}


def test_png_text_chunk(tmp_path):
    params = GenerationParameters(prompt="a fox", steps=3, scheduler="ddim", seed=9, width=8, height=8)
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", params)
    with Image.open(path) as image:
        assert image.text["parameters"] == params.to_text()  # a plain tEXt chunk named "parameters"
    assert read_parameters(path) == params
    with pytest.raises(ValueError, match="no 'parameters'"):
        plain = tmp_path / "plain.png"
        Image.new("RGB", (8, 8)).save(plain)
        read_parameters(plain)

"""PNG parameters against the web UI's (AUTOMATIC1111) reader, as its source reads them (modules/infotext_utils.py,
sd_samplers.py, sd_schedulers.py of version 1.10): the settings line is the last line with at least 3 "key: value"
pairs; lines are stripped and a line starting with "Negative prompt:" starts the negative prompt; a "Prompt" or
"Negative prompt" settings field replaces the text lines; a schedule in the sampler label wins over "Schedule type";
"Automatic" (and no schedule, from 1.9 on) is the sampler's default schedule: Karras for DPM++ 2M, Exponential for
DPM++ 2M SDE."""

from __future__ import annotations

import pytest
from difframe_stable_diffusion.metadata import (
    GenerationParameters,
    scheduler_from_label,
    split_parameters,
    web_ui_samplers,
)


def params(**changes) -> GenerationParameters:
    base = dict(prompt="a cat", negative_prompt="", steps=20, scheduler="dpmpp", seed=1, width=512, height=512)
    return GenerationParameters(**{**base, **changes})


@pytest.mark.parametrize(
    "prompt, negative",
    [
        ("a cat\nNegative prompt: x", ""),
        ("a cat\nNegative prompt: x", "blurry"),
        ("  spaced  ", "\n leading newline"),
        ("Steps: 1, Sampler: Euler, CFG scale: 7", ""),  # a prompt that looks like a settings line
        ("first\n\nNegative prompt:", "Negative prompt: inside"),
    ],
)
def test_prompts_the_lines_alone_would_misread_come_back_exactly(prompt, negative):
    written = params(prompt=prompt, negative_prompt=negative).to_text()
    read = GenerationParameters.from_text(written)
    assert (read.prompt, read.negative_prompt) == (prompt, negative)
    # the web UI's reader: text lines first, then the settings fields override "Prompt" / "Negative prompt"
    lines_prompt, lines_negative, settings = split_parameters(written)
    assert settings.get("Prompt", lines_prompt) == prompt
    assert settings.get("Negative prompt", lines_negative) == negative


def test_plain_prompts_are_written_as_before():
    text = params(prompt="a cat, oil", negative_prompt="blurry").to_text()
    assert text.splitlines()[:2] == ["a cat, oil", "Negative prompt: blurry"]
    assert "Prompt:" not in text.splitlines()[-1]


@pytest.mark.parametrize(
    "name, written",
    [
        ("dpmpp", "Sampler: DPM++ 2M, Schedule type: Uniform"),
        ("dpmpp_2m_karras", "Sampler: DPM++ 2M Karras, Schedule type: Karras"),
        ("dpmpp_2m_sde", "Sampler: DPM++ 2M SDE, Schedule type: Uniform"),
        ("dpmpp_2m_sde_exponential", "Sampler: DPM++ 2M SDE, Schedule type: Exponential"),
        ("euler_a", "Sampler: Euler a, Schedule type: Uniform"),
        ("ddim", "Sampler: DDIM, CFG"),
    ],
)
def test_sampler_and_schedule_are_written_for_old_and_new_web_uis(name, written):
    assert written in params(scheduler=name).to_text()


@pytest.mark.parametrize("name", sorted(web_ui_samplers().by_name))
def test_every_sampler_round_trips(name):
    read = GenerationParameters.from_text(params(scheduler=name).to_text()).scheduler
    assert read == name


@pytest.mark.parametrize(
    "name, label",
    [
        ("dpmpp_2s_a", "DPM++ 2S a"),
        ("dpmpp_2s_a_karras", "DPM++ 2S a Karras"),
        ("dpmpp_2m_sde_exponential", "DPM++ 2M SDE"),
    ],
)
def test_labels_come_from_the_registered_specs(name, label):
    assert f"Sampler: {label}," in params(scheduler=name).to_text()


def test_samplers_the_web_ui_lacks_are_written_by_name():
    # DPM-Solver++ singlestep (not ancestral) has no web-UI sampler: its name goes in as it is and comes back
    for name in ("dpmpp_2s", "dpmpp_2s_karras", "dpmpp_3s"):
        assert name not in web_ui_samplers().by_name
        text = params(scheduler=name).to_text()
        assert f"Sampler: {name}," in text and GenerationParameters.from_text(text).scheduler == name


@pytest.mark.parametrize(
    "sampler, schedule, version, expected",
    [
        ("DPM++ 2M", "Karras", "v1.10.1", "dpmpp_2m_karras"),
        ("DPM++ 2M", None, "v1.10.1", "dpmpp_2m_karras"),  # 1.9+: no schedule = Automatic = Karras
        ("DPM++ 2M", "Automatic", None, "dpmpp_2m_karras"),
        ("DPM++ 2M", None, "v1.7.0", "dpmpp_2m"),  # before 1.9 the plain label had the model's sigmas
        ("DPM++ 2M", None, None, "dpmpp_2m"),
        ("DPM++ 2M", "Uniform", "v1.10.1", "dpmpp_2m"),
        ("DPM++ 2M Karras", None, "v1.6.0", "dpmpp_2m_karras"),
        ("DPM++ 2M Karras", "Uniform", "v1.10.1", "dpmpp_2m_karras"),  # the label's schedule wins
        ("DPM++ 2M SDE", "Exponential", "v1.10.1", "dpmpp_2m_sde_exponential"),
        ("DPM++ 2M SDE", None, "f2.0.1v1.10.1-previous-519", "dpmpp_2m_sde_exponential"),
        ("DPM++ 2M SDE", "Karras", "v1.10.1", "dpmpp_2m_sde_karras"),
        ("DPM++ 2S a", None, "v1.10.1", "dpmpp_2s_a_karras"),  # 1.9+: Automatic = Karras for it too
        ("DPM++ 2S a", None, "v1.7.0", "dpmpp_2s_a"),
        ("DPM++ 2S a Karras", None, "v1.6.0", "dpmpp_2s_a_karras"),
        ("Euler a", None, "v1.10.1", "euler_a"),
        ("Euler", "Karras", "v1.10.1", "euler_karras"),
    ],
)
def test_reads_web_ui_sampler_and_schedule(sampler, schedule, version, expected):
    text = f"a cat\nSteps: 20, Sampler: {sampler}, " + (f"Schedule type: {schedule}, " if schedule else "")
    text += "CFG scale: 7, Seed: 1, Size: 512x512" + (f", Version: {version}" if version else "")
    assert GenerationParameters.from_text(text).scheduler == expected


def test_a_schedule_without_a_sampler_here_is_refused_by_name():
    with pytest.raises(ValueError, match="Polyexponential"):
        scheduler_from_label("DPM++ 2M", "Polyexponential")
    with pytest.raises(ValueError, match="Euler a.*Karras"):
        scheduler_from_label("Euler a", "Karras")


def test_hashes_and_unsupported_fields():
    text = (
        "a cat <lora:add_detail:0.5>\nNegative prompt: easynegative\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689, Model: v15, "
        "Denoising strength: 0.4, Clip skip: 2, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, "
        'Lora hashes: "add_detail: 7c6bad76eb54, other: 0123456789ab", TI hashes: "easynegative: c74b4e810b03", '
        "Version: v1.10.1"
    )
    read = GenerationParameters.from_text(text)
    assert read.lora_hashes == {"add_detail": "7c6bad76eb54", "other": "0123456789ab"}
    assert read.ti_hashes == {"easynegative": "c74b4e810b03"}
    assert (read.strength, read.clip_skip, read.model, read.extra["Model hash"]) == (0.4, 1, "v15", "6ce0161689")
    assert read.unsupported_fields() == ["Hires upscale: 2", "Hires steps: 10", "Hires upscaler: Latent"]

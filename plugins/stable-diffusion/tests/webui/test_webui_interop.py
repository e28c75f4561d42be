"""PNG parameters and AUTOMATIC1111's web UI, both ways.

The tests taking the ``webui`` fixture run the web UI's own reader (``parse_generation_parameters`` in
modules/infotext_utils.py, then the sampler lookup of modules/sd_samplers.py) and writer (``create_infotext`` in
modules/processing.py) from a checkout named by DIFFRAME_WEBUI_SRC (conftest.py here); without one they skip.
Tested against v1.10.1 (82a973c04367123ae98bd9abdf80d9eda9b910e2) and v1.8.0
(bef51aed032c0aaa5cfd80445bc4cf0d85b408b5). The others check our reader and writer alone."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import pytest
from difframe_stable_diffusion.metadata import (
    GenerationParameters,
    format_hashes,
    model_hash,
    scheduler_from_label,
    web_ui_samplers,
)

SCHEDULES = ("Uniform", "Karras", "Exponential")  # the schedules difframe has samplers for
# difframe samplers with no web-UI sampler: written by a name or label the web UI does not have (its UniPC takes no
# schedule: it reads "UniPC Karras" as UniPC)
NOT_IN_WEB_UI = {"ddpm", "deis", "pndm", "dpmpp_2s", "dpmpp_2s_karras", "dpmpp_3s", "unipc_karras"}
# Karras samplers with no label of their own before 1.9 (their "Euler" with the karras setting would be one)
NO_LABEL_BEFORE_1_9 = {"euler_karras", "heun_karras"}
# Known: 1.4 to 1.8 paste "Schedule type" into their k_sched_type setting (Automatic, karras, exponential,
# polyexponential), and generation stops on any other value; we write "Schedule type: Uniform" only for a plain
# sampler whose default schedule is another from 1.9 on (DPM++ 2M: Karras), where 1.9 and later need it.
OLD_SCHEDULE_SETTING = (
    "a limit of web UI 1.4-1.8, not ours: 'Schedule type: {}' is a setting there that stops generation, and 1.9+ "
    "needs it to read this sampler right, so no text satisfies both (docs/lora.md)"
)
TRICKY_PROMPTS = [
    ("a cat\nNegative prompt: x", ""),
    ("a cat\nNegative prompt: x", "blurry"),
    ("a cat\n   Negative prompt: indented", "blurry\nNegative prompt: twice"),
    ("  spaced  ", "\n leading newline"),
    ("Steps: 1, Sampler: Euler, CFG scale: 7", ""),  # a prompt that looks like a settings line
    ("first\n\nNegative prompt:", "Negative prompt: inside"),
]


def params(**changes: Any) -> GenerationParameters:
    base = dict(prompt="a cat", negative_prompt="", steps=20, scheduler="dpmpp", seed=1, width=512, height=512)
    return GenerationParameters(**{**base, **changes})


def tokens(text: str) -> str:
    """Runs of whitespace as one space, as the CLIP tokenizer (the web UI's and ours) reads them."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from difframe_clip import write_tokenizer_folder
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(write_tokenizer_folder(tmp_path_factory.mktemp("clip") / "tokenizer"))


# --- the web UI's own code ---------------------------------------------------------------------------------------
def their_reading(webui: Any, text: str) -> dict[str, Any]:
    with webui.active():
        return webui.module("infotext_utils").parse_generation_parameters(text)


def their_choice(webui: Any, fields: dict[str, Any]) -> tuple[str, str | None]:
    """(sampler label without its schedule, schedule) the web UI generates with after pasting ``fields``.

    1.9 and later: ``get_sampler_from_infotext`` / ``get_scheduler_from_infotext``, "Automatic" being the sampler's
    ``scheduler`` option, else the model's own sigmas (Uniform; KDiffusionSampler.get_sigmas). Before: the label
    names the sampler, and "Schedule type" is pasted into the k_sched_type setting, which overrides the sampler's
    own schedule unless it is "Automatic" (an unknown value stops generation). Timestep samplers (DDIM, PLMS,
    UniPC) have no schedule (None)."""
    samplers = webui.module("sd_samplers")
    with webui.active():
        if hasattr(samplers, "get_sampler_from_infotext"):
            name = samplers.get_sampler_from_infotext(fields)
            schedule = samplers.get_scheduler_from_infotext(fields)
        else:
            name = fields.get("Sampler")
            assert name in samplers.all_samplers_map, f"{webui.version} has no sampler {name!r}"
            schedule = fields.get("Schedule type", "Automatic")
            known = webui.module("sd_samplers_kdiffusion").k_diffusion_scheduler
            assert schedule in known, f"{webui.version} stops at 'Schedule type: {schedule}' (knows {list(known)})"
    config = samplers.all_samplers_map[name]
    if name not in {s.name for s in webui.module("sd_samplers_kdiffusion").samplers_data_k_diffusion}:
        return name, None
    if schedule == "Automatic":
        schedule = config.options.get("scheduler") or "uniform"
    schedule = schedule.capitalize()
    if name.endswith(" " + schedule):
        name = name[: -len(schedule) - 1]
    return name, schedule


def their_infotext(
    webui: Any, *, prompt: str = "a cat", negative: str = "", sampler: str = "Euler a", schedule: str = "Automatic",
    clip_skip: int = 1, model_hash: str | None = None, model: str | None = None, extra: dict[str, Any] | None = None,
) -> str:  # fmt: skip
    """What ``create_infotext`` writes for a txt2img job of these settings (``p`` holds what it reads)."""
    extra = dict(extra or {})
    samplers = webui.module("sd_samplers")
    config = samplers.all_samplers_map[sampler]
    if schedule != "Automatic" or config.options.get("scheduler"):
        # KDiffusionSampler.get_sigmas records the schedule it used (the sampler's own for "Automatic")
        resolved = schedule if schedule != "Automatic" else config.options["scheduler"]
        if hasattr(samplers, "get_sampler_from_infotext"):
            extra["Schedule type"] = webui.module("sd_schedulers").schedulers_map[resolved].label
    p = SimpleNamespace(
        batch_size=1, all_prompts=[prompt], all_negative_prompts=[negative], main_prompt=prompt,
        main_negative_prompt=negative, steps=20, sampler_name=sampler, scheduler=schedule, cfg_scale=7.0,
        all_seeds=[1], all_subseeds=[2], restore_faces=False, width=512, height=768, sd_model_hash=model_hash,
        sd_model_name=model, sd_vae_hash=None, sd_vae_name=None, subseed_strength=0, seed_resize_from_w=-1,
        seed_resize_from_h=-1, extra_generation_params=extra, is_using_inpainting_conditioning=False,
        tiling=False, user=None, s_min_uncond=0, get_token_merging_ratio=lambda for_hr=False: 0,
    )  # fmt: skip
    webui.opts.CLIP_stop_at_last_layers = clip_skip
    try:
        with webui.active():
            return webui.module("processing").create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds)
    finally:
        webui.opts.CLIP_stop_at_last_layers = 1


def ours(name: str) -> tuple[str, str | None]:
    label, schedule = web_ui_samplers().by_name[name]
    if schedule and label.endswith(" " + schedule):
        label = label[: -len(schedule) - 1]
    return label, schedule


# --- what we write, read by the web UI ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(set(web_ui_samplers().by_name) - NOT_IN_WEB_UI))
def test_the_web_ui_generates_with_our_sampler_and_schedule(webui, name, request):
    fields = their_reading(webui, params(scheduler=name).to_text())
    if webui.release < (1, 9):
        setting = fields.get("Schedule type", "Automatic")
        if setting not in webui.module("sd_samplers_kdiffusion").k_diffusion_scheduler:
            request.applymarker(pytest.mark.xfail(strict=True, reason=OLD_SCHEDULE_SETTING.format(setting)))
        elif name in NO_LABEL_BEFORE_1_9:
            reason = f"a limit of web UI {webui.version}: it has no such sampler (added in 1.9)"
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    assert their_choice(webui, fields) == ours(name)


def test_samplers_the_web_ui_lacks_are_not_in_it(webui):
    theirs = set(webui.module("sd_samplers").all_samplers_map)
    for name in NOT_IN_WEB_UI:
        assert web_ui_samplers().by_name.get(name, (name, None))[0] not in theirs


@pytest.mark.parametrize("prompt, negative", TRICKY_PROMPTS)
def test_the_web_ui_reads_our_prompts_as_they_were_used(webui, clip_tokenizer, prompt, negative):
    fields = their_reading(webui, params(prompt=prompt, negative_prompt=negative).to_text())
    assert (tokens(fields["Prompt"]), tokens(fields["Negative prompt"])) == (tokens(prompt), tokens(negative))
    for read, used in ((fields["Prompt"], prompt), (fields["Negative prompt"], negative)):
        assert clip_tokenizer(read).input_ids == clip_tokenizer(used).input_ids


def test_the_web_ui_reads_our_fields(webui, tmp_path):
    checkpoint = tmp_path / "v15.safetensors"
    checkpoint.write_bytes(b"not a real checkpoint, only hashed" * 1000)
    written = params(
        model="v15", clip_skip=1, strength=0.4, guidance_scale=6.5, width=640, height=384,
        extra={
            "Model hash": model_hash(checkpoint),
            "Lora hashes": format_hashes({"add_detail": "7c6bad76eb54", "other": "0123456789ab"}),
            "TI hashes": format_hashes({"easynegative": "c74b4e810b03"}),
        },
    ).to_text()  # fmt: skip
    fields = their_reading(webui, written)
    with webui.active():  # the web UI's "Model hash": the first 10 hex digits of the file's sha256
        assert fields["Model hash"] == webui.module("hashes").calculate_sha256(str(checkpoint))[:10]
    assert fields["Model"] == "v15" and fields["Clip skip"] == "2" and fields["Denoising strength"] == "0.4"
    assert (fields["CFG scale"], fields["Size-1"], fields["Size-2"], fields["Seed"]) == ("6.5", "640", "384", "1")
    assert fields["Lora hashes"] == "add_detail: 7c6bad76eb54, other: 0123456789ab"
    assert fields["TI hashes"] == "easynegative: c74b4e810b03"


def test_the_web_ui_lora_extension_finds_our_lora_hashes(webui):
    """The Lora extension's infotext_pasted renames a prompt's <lora:NAME:...> to the local file with NAME's hash."""
    text = params(
        prompt="a cat <lora:add_detail:0.5> <lora:unknown:1>",
        extra={"Lora hashes": format_hashes({"add_detail": "7c6bad76eb54", "unknown": "0123456789ab"})},
    ).to_text()
    fields = their_reading(webui, text)
    script = webui.script("extensions-builtin/Lora/scripts/lora_script.py")
    found = webui.loaded["networks"].available_network_hash_lookup
    found["7c6bad76eb54"] = SimpleNamespace(get_alias=lambda: "detail_tweaker_v2")
    try:
        with webui.active():
            script.infotext_pasted(text, fields)
    finally:
        found.clear()
    assert fields["Prompt"] == "a cat <lora:detail_tweaker_v2:0.5> <lora:unknown:1>"


# --- what the web UI writes, read by us --------------------------------------------------------------------------
def test_we_read_the_web_ui_writers_samplers_and_schedules(webui):
    difframe = {ours(name): name for name in web_ui_samplers().by_name if name not in NOT_IN_WEB_UI}
    schedules = ("Automatic", *SCHEDULES) if "modules.sd_schedulers" in webui.loaded else ("Automatic",)
    checked = []
    for sampler in webui.module("sd_samplers").all_samplers_map:
        for schedule in schedules:
            text = their_infotext(webui, sampler=sampler, schedule=schedule)
            used = their_choice(webui, their_reading(webui, text))
            try:
                read: str | ValueError = GenerationParameters.from_text(text).scheduler
            except ValueError as error:
                read = error
            if used in difframe:
                assert read == difframe[used], text
                checked.append(read)
            else:  # a sampler or schedule difframe lacks: refused by name, or a name no sampler here has
                assert isinstance(read, ValueError) or read not in web_ui_samplers().aliases, text
    assert {"dpmpp_2m", "dpmpp_2m_karras", "dpmpp_2m_sde_exponential", "euler_a", "ddim"} <= set(checked)


@pytest.mark.parametrize("prompt, negative", TRICKY_PROMPTS)
def test_we_read_the_web_ui_writers_prompts_as_it_does(webui, prompt, negative):
    text = their_infotext(webui, prompt=prompt, negative=negative)
    fields = their_reading(webui, text)
    read = GenerationParameters.from_text(text)
    assert (read.prompt, read.negative_prompt) == (fields["Prompt"], fields["Negative prompt"])


def test_we_read_the_web_ui_writers_fields(webui):
    karras = (
        {"sampler": "DPM++ 2M", "schedule": "Karras"} if webui.release >= (1, 9) else {"sampler": "DPM++ 2M Karras"}
    )
    text = their_infotext(
        webui, prompt="a cat <lora:add_detail:0.5>", negative="easynegative", **karras, clip_skip=2,
        model_hash="6ce0161689", model="v1-5-pruned-emaonly",
        extra={
            "Denoising strength": 0.4,
            # the strings the Lora extension (extra_networks_lora.py) and sd_hijack_clip.py put there
            "Lora hashes": "add_detail: 7c6bad76eb54, other: 0123456789ab",
            "TI hashes": "easynegative: c74b4e810b03",
        },
    )  # fmt: skip
    read = GenerationParameters.from_text(text)
    assert read.scheduler == "dpmpp_2m_karras" and read.clip_skip == 1 and read.strength == 0.4
    assert (read.model, read.extra["Model hash"], read.width, read.height) == (
        "v1-5-pruned-emaonly",
        "6ce0161689",
        512,
        768,
    )
    assert read.lora_hashes == {"add_detail": "7c6bad76eb54", "other": "0123456789ab"}
    assert read.ti_hashes == {"easynegative": "c74b4e810b03"}
    assert read.extra["Version"] == webui.version and read.unsupported_fields() == []


# --- ours alone ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, negative", TRICKY_PROMPTS)
def test_our_prompts_come_back_exactly(prompt, negative):
    read = GenerationParameters.from_text(params(prompt=prompt, negative_prompt=negative).to_text())
    assert (read.prompt, read.negative_prompt) == (prompt, negative)


def test_plain_prompts_are_written_as_before():
    text = params(prompt="a cat, oil", negative_prompt="blurry").to_text()
    assert text.splitlines()[:2] == ["a cat, oil", "Negative prompt: blurry"]
    assert "Prompt:" not in text.splitlines()[-1]


@pytest.mark.parametrize(
    "name, written",
    [
        ("dpmpp", "Sampler: DPM++ 2M, Schedule type: Uniform"),
        ("dpmpp_2m_karras", "Sampler: DPM++ 2M Karras, CFG"),
        ("dpmpp_2m_sde", "Sampler: DPM++ 2M SDE, Schedule type: Uniform"),
        ("dpmpp_2m_sde_exponential", "Sampler: DPM++ 2M SDE Exponential, CFG"),
        ("euler_a", "Sampler: Euler a, CFG"),
        ("ddim", "Sampler: DDIM, CFG"),
    ],
)
def test_sampler_and_schedule_are_written_for_old_and_new_web_uis(name, written):
    assert written in params(scheduler=name).to_text()


@pytest.mark.parametrize(
    "name, label",
    [
        ("dpmpp_2s_a", "DPM++ 2S a"),
        ("dpmpp_2s_a_karras", "DPM++ 2S a Karras"),
        ("dpmpp_2m_sde_exponential", "DPM++ 2M SDE Exponential"),
    ],
)
def test_labels_come_from_the_registered_specs(name, label):
    assert f"Sampler: {label}," in params(scheduler=name).to_text()


@pytest.mark.parametrize("name", sorted(web_ui_samplers().by_name))
def test_every_sampler_round_trips(name):
    read = GenerationParameters.from_text(params(scheduler=name).to_text()).scheduler
    assert read == name


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


def test_hashes_and_unsupported_fields(tmp_path):
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
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"\x00" * 3_000_000)
    assert model_hash(checkpoint) == hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]

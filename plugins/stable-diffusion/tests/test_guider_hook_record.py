"""The guider and the inference hooks in the PNG parameters: written with all their options (plain cfg without
hooks writes nothing new), read back by `difframe generate --from-png` into the same image byte for byte, and a
name that is not installed refused with what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest
from difframe.cli import main
from difframe_stable_diffusion.metadata import (
    GenerationParameters,
    format_component_record,
    parse_component_record,
    read_parameters,
    save_png,
)
from PIL import Image

APG = {"eta": 0.0, "guidance_rescale": None, "guidance_scale": None, "momentum": -0.5, "norm_threshold": 15.0}
APG_RECORD = {**APG, "start": 0.0, "stop": 0.8}


def _common(tiny_model):
    return ("-m", str(tiny_model), "--steps", "3", "--size", "64", "--no-progress", "--seed", "5")


def _made(folder):
    [png] = folder.glob("*.png")
    return png


def test_component_record_reads_back_what_it_writes():
    for entries in (
        [("apg", APG_RECORD)],
        [("deepcache", {"branch": 0, "interval": 3}), ("tome", {"ratio": 0.5, "use_rand": False})],
        [("cfg-zero-star", {}), ("<my_module.MyHook>", {})],
        [("pag", {"layers": ["mid", "down_blocks.1"], "pag_scale": 2.5})],
    ):
        value = format_component_record(entries)
        text = GenerationParameters(prompt="a fox", seed=1, extra={"Hooks": value}).to_text()
        assert parse_component_record("Hooks", GenerationParameters.from_text(text).extra["Hooks"]) == entries
    for bad in ("", "apg {eta: 0}", "apg {} tome", "apg, {", ", apg"):
        with pytest.raises(ValueError, match="PNG parameters: Hooks"):
            parse_component_record("Hooks", bad)


def test_plain_cfg_without_hooks_writes_the_same_text(h, framework, tiny_model):
    pipe = h.build(framework, tiny_model)
    plain = pipe("a fox", seed=1, num_inference_steps=2, width=64, height=64).images[0].info["parameters"]
    assert "Guider" not in plain and "Hooks" not in plain
    for same in ({"guider": "cfg"}, {"guider": "cfg", "guider_options": {"start": 0.0, "stop": 1.0}}):
        built = h.build(framework, tiny_model, **same)
        assert built("a fox", seed=1, num_inference_steps=2, width=64, height=64).images[0].info["parameters"] == plain


def test_guider_and_hooks_are_written_with_all_their_options(h, framework, tiny_model):
    pipe = h.build(
        framework,
        tiny_model,
        guider="apg",
        guider_options={"eta": 0.0, "momentum": -0.5, "stop": 0.8},
        hooks=[("deepcache", {"interval": 2}), ("tome", {"ratio": 0.25, "use_rand": False})],
    )
    params = pipe("a fox", seed=1, num_inference_steps=2, width=64, height=64).parameters[0]
    assert parse_component_record("Guider", params.extra["Guider"]) == [("apg", APG_RECORD)]
    hooks = dict(parse_component_record("Hooks", params.extra["Hooks"]))
    assert list(hooks) == ["deepcache", "tome"]  # the order they run in
    assert hooks["deepcache"] == {"branch": 0, "interval": 2}
    assert hooks["tome"]["ratio"] == 0.25 and hooks["tome"]["use_rand"] is False and hooks["tome"]["sx"] == 2
    text = params.to_text()
    assert (
        'Guider: "apg {\\"eta\\": 0.0, ' in text and 'Hooks: "deepcache {\\"branch\\": 0, \\"interval\\": 2}, ' in text
    )
    pipe.set_guider("pag", pag_scale=2.0)  # PAG's own perturbation hook is the guider's, not written as a hook
    params = pipe("a fox", seed=1, num_inference_steps=2, width=64, height=64).parameters[0]
    assert parse_component_record("Guider", params.extra["Guider"])[0][0] == "pag"
    assert [name for name, _ in parse_component_record("Hooks", params.extra["Hooks"])] == ["deepcache", "tome"]


def test_objects_are_written_as_objects_and_non_json_options_refused(h, framework, tiny_model):
    from difframe_guiders.adaptive_projected import AdaptiveProjectedGuidance

    pipe = h.build(framework, tiny_model)
    pipe.set_guider(AdaptiveProjectedGuidance(eta=0.0))  # its options cannot be known: not written as "apg"
    params = pipe("a fox", seed=1, num_inference_steps=2, width=64, height=64).parameters[0]
    assert params.extra["Guider"] == "<difframe_guiders.adaptive_projected.AdaptiveProjectedGuidance>"
    with pytest.raises(TypeError, match="'pag': options must be JSON values"):
        pipe.set_guider("pag", layers=object())


@pytest.mark.parametrize(
    ("given", "field"),
    [
        (["--guider", 'apg {"eta": 0.0, "momentum": -0.5}'], "Guider"),
        (["--guider", 'cfg {"stop": 0.5}'], "Guider"),
        (["--hook", 'deepcache {"interval": 2}', "--hook", 'tome {"ratio": 0.5, "use_rand": false}'], "Hooks"),
        (["--guider", "pag", "--hook", "tome"], "Hooks"),
    ],
)
def test_from_png_makes_the_same_image(tiny_model, tmp_path, given, field):
    out, again, plain = tmp_path / "out", tmp_path / "again", tmp_path / "plain"
    assert main(["generate", "a red fox", *given, "-o", str(out), *_common(tiny_model)]) == 0
    assert main(["generate", "a red fox", "-o", str(plain), *_common(tiny_model)]) == 0
    made = _made(out)
    text = Image.open(made).text["parameters"]
    assert f"{field}: " in text
    assert not np.array_equal(np.asarray(Image.open(made)), np.asarray(Image.open(_made(plain))))
    assert main(["generate", "--from-png", str(made), "-m", str(tiny_model), "-o", str(again), "--no-progress"]) == 0
    copy = _made(again)
    assert np.array_equal(np.asarray(Image.open(copy)), np.asarray(Image.open(made)))
    assert copy.read_bytes() == made.read_bytes()  # the text too: the same guider and hooks recorded


def test_from_png_refuses_what_is_not_installed_and_flags_override(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    given = ["--guider", 'apg {"eta": 0.0}', "--hook", 'deepcache {"interval": 2}']
    assert main(["generate", "a red fox", *given, "-o", str(out), *_common(tiny_model)]) == 0
    made = _made(out)
    params = read_parameters(made)
    cases = (
        ("Guider", "gone-guider {}", "made with the guider 'gone-guider', which is not installed (installed: apg, cfg"),
        ("Hooks", 'deepcache {"interval": 2}, gone-hook', "made with the inference hook 'gone-hook', which is not"),
        ("Guider", "<my_module.MyGuider>", "guider object my_module.MyGuider, set as an object rather than by a"),
        ("Hooks", 'deepcache {"cache_interval": 3}', "records options that the installed 'deepcache' refuses"),
        ("Guider", 'cfg {"start": 2.0}', "records options that the installed 'cfg' refuses (the guidance"),
    )
    for key, value, message in cases:
        edited = tmp_path / "edited.png"
        save_png(Image.open(made), edited, params.replace(extra={**params.extra, key: value}))
        capsys.readouterr()
        assert main(["generate", "--from-png", str(edited), "-o", str(tmp_path / "no"), "--no-progress"]) == 2
        error = capsys.readouterr().err
        assert message in error, error
        if "not installed" in message:
            assert "install the plugin that registers it, or pass --" in error
        if "records options" in message:
            assert "install the version of its plugin that made it, or pass --" in error
    # --guider and --hook replace the PNG's: plain cfg without hooks is the plain image's text again
    plain, replaced = tmp_path / "plain", tmp_path / "replaced"
    assert main(["generate", "a red fox", "-o", str(plain), *_common(tiny_model)]) == 0
    again = ["generate", "--from-png", str(made), "-m", str(tiny_model), "--no-progress"]
    assert main([*again, "--guider", "cfg", "--hook", "none", "-o", str(replaced)]) == 0
    assert _made(replaced).read_bytes() == _made(plain).read_bytes()
    capsys.readouterr()
    assert main(["generate", "a fox", "--guider", "apq", "-o", str(out), *_common(tiny_model)]) == 2
    assert "apq" in capsys.readouterr().err
    assert main(["generate", "a fox", "--hook", "tome {ratio: 1}", "-o", str(out), *_common(tiny_model)]) == 2
    assert "--hook 'tome {ratio: 1}': the options after the name must be a JSON object" in capsys.readouterr().err


def test_record_options_are_json(h, framework, tiny_model):
    pipe = h.build(framework, tiny_model, hooks=["tome"])
    [(name, options)] = parse_component_record("Hooks", pipe.guidance_metadata()["Hooks"])
    assert name == "tome" and json.loads(json.dumps(options)) == options and options["ratio"] == 0.5

"""Attention add-ons chosen by name: a third party's add-on, installed as its own distribution, used by build(),
add_attention_addon / remove_attention_addon and `difframe generate --attention-addon` with no private import, and
reproduced from its PNG; the CLI's --attention-option and --reproducible."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from PIL import Image

# A third party's attention add-on: the protocol of docs/attention.md; from difframe only the public hookimpl marker.
SCALED_ATTENTION = '''
CALLS = []


class ScaledAttention:
    """The module's own attention, its output multiplied by ``factor`` (1.0: unchanged)."""

    def __init__(self, factor=1.0):
        self.factor = float(factor)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        CALLS.append(attn.is_cross_attention)
        return attn.default_forward(hidden_states, encoder_hidden_states, attention_mask) * self.factor


from difframe import hookimpl


@hookimpl
def register_attention_processor(register):
    register(name="scaled-attention", factory="scaled_attention_addon:ScaledAttention", role="addon",
             description="the attention output times a factor (a test's third-party add-on)")
'''
SETTINGS = {"num_inference_steps": 2, "height": 32, "width": 32, "output_type": "np"}


@pytest.fixture
def third_party(fake_plugin):
    """Installed as a third party's distribution is (dist-info with an entry point in group 'difframe')."""
    fake_plugin(
        "scaled-attention-addon", SCALED_ATTENTION, module="scaled_attention_addon", entry_point="scaled-attention"
    )
    return importlib.import_module("scaled_attention_addon")


def _framework():
    from difframe import Framework

    return Framework()


def test_build_with_an_addon_by_name_and_its_record(h, tiny_model, third_party):
    from difframe.attention import attention_modules

    framework = _framework()
    plain = h.build(framework, tiny_model)("a red fox", seed=4, **SETTINGS)
    pipe = h.build(framework, tiny_model, attention_addons=["scaled-attention"])
    [addon] = pipe.attention_addons
    assert addon.name == "scaled-attention" and type(addon).__name__ == "ScaledAttention"
    assert all(m.addon is addon for _, m in attention_modules(pipe.unet))  # the UNet's attention, by default
    assert all(m.addon is None for _, m in attention_modules(pipe.vae))
    third_party.CALLS.clear()
    unet_calls = []
    pipe.unet.register_forward_hook(lambda *args: unet_calls.append(1))
    same = pipe("a red fox", seed=4, **SETTINGS)
    layers = len(list(attention_modules(pipe.unet)))
    assert unet_calls and len(third_party.CALLS) == layers * len(unet_calls)  # every layer, every UNet call
    assert set(third_party.CALLS) == {True, False}  # self- and cross-attention
    assert np.array_equal(same.images, plain.images)  # factor 1: the module's own result, bit for bit
    assert same.parameters[0].extra["Attention"] == "sdpa + scaled-attention add-on"

    pipe.remove_attention_addon("scaled-attention")
    assert pipe.attention_addons == [] and all(m.addon is None for _, m in attention_modules(pipe.unet))
    assert "Attention" not in pipe("a red fox", seed=4, **SETTINGS).parameters[0].extra
    halved = pipe.add_attention_addon("scaled-attention", factor=0.5)
    louder = pipe("a red fox", seed=4, **SETTINGS)
    assert np.abs(louder.images - plain.images).max() > 1e-3  # the add-on changes the computation
    assert louder.parameters[0].extra["Attention"] == 'sdpa + scaled-attention {"factor": 0.5} add-on'
    assert 'Attention: "sdpa + scaled-attention {\\"factor\\": 0.5} add-on"' in louder.parameters[0].to_text()
    with pytest.raises(ValueError, match="already has the add-on scaled-attention"):
        pipe.add_attention_addon("scaled-attention")
    pipe.remove_attention_addon(halved)
    with pytest.raises(ValueError, match="no attention add-on 'scaled-attention' was added by name"):
        pipe.remove_attention_addon("scaled-attention")
    # the mapping form, with options, gives the same images as the method
    mapped = h.build(framework, tiny_model, attention_addons={"scaled-attention": {"factor": 0.5}})
    assert np.array_equal(mapped("a red fox", seed=4, **SETTINGS).images, louder.images)


def test_bad_addons_are_refused_before_weights_load(tiny_model, third_party):
    from difframe.errors import UnknownComponentError

    framework = _framework()
    missing = tiny_model / "missing"  # no such folder: any check after these would fail on it instead
    with pytest.raises(
        UnknownComponentError, match="no attention add-on 'scaled-atention'.*installed: scaled-attention"
    ):
        framework.build("stable-diffusion", model=missing, attention_addons=["scaled-atention"])
    with pytest.raises(
        ValueError, match="'sliced' is an attention backend, not an add-on.*installed: scaled-attention"
    ):
        framework.build("stable-diffusion", model=missing, attention_addons=["sliced"])
    with pytest.raises(TypeError, match="'scaled-attention' has no option\\(s\\) 'strength'; it takes factor"):
        framework.build("stable-diffusion", model=missing, attention_addons=[("scaled-attention", {"strength": 2})])
    with pytest.raises(ValueError, match="'scaled-attention' is an add-on, not a backend.*attention_addons="):
        framework.build("stable-diffusion", model=missing, attention="scaled-attention")
    with pytest.raises(ValueError, match="both apply to the unet's attention"):
        framework.build("stable-diffusion", model=missing, attention_addons=["scaled-attention", "scaled-attention"])
    with pytest.raises(TypeError, match="options must be JSON values"):
        framework.build("stable-diffusion", model=missing, attention_addons={"scaled-attention": {"factor": object()}})
    with pytest.raises(ValueError, match="'scaled-attention' and ip_adapter both put an add-on on the UNet"):
        framework.build("stable-diffusion", model=missing, attention_addons=["scaled-attention"], ip_adapter="a.bin")
    with pytest.raises(TypeError, match="an attention add-on is a registered name"):
        framework.build("stable-diffusion", model=missing, attention_addons=[3])
    with pytest.raises(TypeError, match="'sliced' has no option\\(s\\) 'slices'; it takes slice_size"):
        framework.build("stable-diffusion", model=missing, attention="sliced", attention_options={"slices": 2})


def test_cli_addon_is_recorded_and_the_png_made_again_byte_for_byte(tiny_model, third_party, tmp_path, capsys):
    from difframe.cli import main

    out, again, plain = tmp_path / "out", tmp_path / "again", tmp_path / "plain"
    common = ("-m", str(tiny_model), "--steps", "2", "--size", "32", "--no-progress", "--seed", "5")
    addon = 'scaled-attention {"factor": 0.5}'
    assert main(["generate", "a red fox", "--attention-addon", addon, "-o", str(out), *common]) == 0
    assert main(["generate", "a red fox", "-o", str(plain), *common]) == 0
    [made], [plain_png] = out.glob("*.png"), plain.glob("*.png")
    text = Image.open(made).text["parameters"]
    assert 'Attention: "sdpa + scaled-attention {\\"factor\\": 0.5} add-on"' in text
    assert not np.array_equal(np.asarray(Image.open(made)), np.asarray(Image.open(plain_png)))
    third_party.CALLS.clear()
    assert main(["generate", "--from-png", str(made), "-m", str(tiny_model), "-o", str(again), "--no-progress"]) == 0
    assert third_party.CALLS  # the PNG's add-on ran again
    [copy] = again.glob("*.png")
    assert copy.read_bytes() == made.read_bytes()
    capsys.readouterr()
    assert main(["generate", "a fox", "--attention-addon", "scaled-atention", "-o", str(out), *common]) == 2
    assert "no attention add-on 'scaled-atention' is installed; attention add-ons installed: scaled-attention" in (
        capsys.readouterr().err
    )
    assert (
        main(["generate", "a fox", "--attention-addon", "scaled-attention {factor: 2}", "-o", str(out), *common]) == 2
    )
    assert "the options after the name must be a JSON object" in capsys.readouterr().err


def test_cli_refuses_a_png_whose_addon_is_not_installed(tiny_model, tmp_path, capsys):
    from difframe.cli import main
    from difframe_stable_diffusion.metadata import read_parameters, save_png

    out = tmp_path / "out"
    common = ("-m", str(tiny_model), "--steps", "2", "--size", "32", "--no-progress", "--seed", "5")
    assert main(["generate", "a red fox", "-o", str(out), *common]) == 0
    [made] = out.glob("*.png")
    params = read_parameters(made)
    params.extra["Attention"] = "sdpa + gone-addon add-on"
    save_png(Image.open(made), tmp_path / "edited.png", params)
    capsys.readouterr()
    assert main(["generate", "--from-png", str(tmp_path / "edited.png"), "-o", str(out), "--no-progress"]) == 2
    assert "made with the attention add-on 'gone-addon', which is not an installed add-on" in capsys.readouterr().err


def test_cli_attention_options(tiny_model, tmp_path, capsys):
    from difframe.cli import main

    common = ("-m", str(tiny_model), "--steps", "2", "--size", "32", "--no-progress", "--seed", "5")
    sliced = tmp_path / "sliced"
    given = ["--attention", "sliced", "--attention-option", "slice_size=1"]
    assert main(["generate", "a fox", *given, "-o", str(sliced), *common]) == 0
    [made] = sliced.glob("*.png")
    text = Image.open(made).text["parameters"]
    assert text.endswith("Attention: sliced")  # backend options change memory and speed, not the image: unwritten
    capsys.readouterr()
    for options, message in [
        (
            ["--attention", "sliced", "--attention-option", "slice_size=0"],
            "slice_size must be 'auto', 'max' or a whole",
        ),
        (["--attention", "sliced", "--attention-option", "slices=2"], "'sliced' has no option(s) 'slices'"),
        (["--attention", "sliced", "--attention-option", "slice_size"], "--attention-option takes KEY=VALUE"),
        (["--attention-option", "slice_size=2"], "--attention-option needs --attention NAME"),
    ]:
        assert main(["generate", "a fox", *options, "-o", str(tmp_path / "bad"), *common]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").glob("*.png"))
    # --from-png uses the PNG's backend: the same bytes again
    again = tmp_path / "again"
    assert main(["generate", "--from-png", str(made), "-m", str(tiny_model), "-o", str(again), "--no-progress"]) == 0
    [copy] = again.glob("*.png")
    assert copy.read_bytes() == made.read_bytes()


@pytest.mark.parametrize("flag, expected", [([], True), (["--reproducible"], True), (["--no-reproducible"], False)])
def test_cli_reproducible_flag(tiny_model, tmp_path, monkeypatch, flag, expected):
    from difframe import Framework
    from difframe.cli import main

    built = []
    build = Framework.build

    def spy(self, *args, **options):
        built.append(build(self, *args, **options))
        return built[-1]

    monkeypatch.setattr(Framework, "build", spy)
    common = ("-m", str(tiny_model), "--steps", "1", "--size", "32", "--no-progress", "--seed", "5", "-b", "2")
    assert main(["generate", "a fox", *flag, "-o", str(tmp_path), *common]) == 0
    assert [pipe.reproducible for pipe in built] == [expected]
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_cli_ip_adapter_images_come_back_and_do_not_combine_with_an_addon(tiny_model, third_party, tmp_path, capsys):
    """IP-Adapter's own add-on is in the Attention record; --from-png with --ip-adapter builds it again (the PNG is
    the same bytes), and a named add-on beside it is refused before any weight is read."""
    from difframe.cli import main
    from difframe_ip_adapter import testing  # a first-party plugin: installed with the others, never skipped

    adapters = testing.write_adapter_folder(tmp_path / "adapters", testing.SD1_TINY)
    testing.colour_image().save(tmp_path / "ref.png")
    image_prompt = ["--ip-adapter", str(adapters / "models" / "ip-adapter-plain.safetensors")]
    image_prompt += ["--ip-image", str(tmp_path / "ref.png")]
    common = ("-m", str(tiny_model), "--steps", "2", "--size", "32", "--no-progress")
    out, again = tmp_path / "out", tmp_path / "again"
    assert main(["generate", "a cat", "--seed", "1", *image_prompt, "-o", str(out), *common]) == 0
    [made] = out.glob("*.png")
    assert "IPAdapterAttention add-on" in Image.open(made).text["parameters"]
    assert main(["generate", "--from-png", str(made), *image_prompt, "-o", str(again), *common]) == 0
    [copy] = again.glob("*.png")
    assert copy.read_bytes() == made.read_bytes()
    capsys.readouterr()
    both = ["--attention-addon", "scaled-attention", *image_prompt, "-o", str(tmp_path / "both")]
    assert main(["generate", "a cat", *both, *common]) == 2
    assert "'scaled-attention' and ip_adapter both put an add-on on the UNet's attention" in capsys.readouterr().err


def test_attention_record_reads_back_what_it_writes():
    from difframe_stable_diffusion.metadata import GenerationParameters, format_attention_record, parse_attention_record

    for backends, addons in [
        (["sliced"], []),
        (["sdpa"], [("ScaleOutput", {})]),
        (["sdpa"], [("scaled-attention", {"factor": 0.5, "note": "a + b, c: d"}), ("other", {})]),
    ]:
        value = format_attention_record(backends, addons)
        text = GenerationParameters(prompt="a fox", extra={"Attention": value}).to_text()
        assert parse_attention_record(GenerationParameters.from_text(text).extra["Attention"]) == (backends, addons)
    for bad, message in [
        ("", "is empty"),
        ('sdpa {"a": 1}', "only an add-on has options"),
        ("sdpa + x {bad} add-on", "options that are not JSON"),
        ("sdpa sliced", "unexpected 'sliced'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_attention_record(bad)


def test_cli_refuses_a_png_whose_backend_is_not_here(tiny_model, tmp_path, capsys):
    from difframe.cli import main
    from difframe_stable_diffusion.metadata import read_parameters, save_png

    out = tmp_path / "out"
    common = ("-m", str(tiny_model), "--steps", "1", "--size", "32", "--no-progress", "--seed", "5")
    assert main(["generate", "a red fox", "-o", str(out), *common]) == 0
    [made] = out.glob("*.png")
    params = read_parameters(made)
    params.extra["Attention"] = "flash-kernel"
    save_png(Image.open(made), tmp_path / "edited.png", params)
    capsys.readouterr()
    assert main(["generate", "--from-png", str(tmp_path / "edited.png"), "-o", str(out), "--no-progress"]) == 2
    assert "made with the attention backend 'flash-kernel', which cannot be used here" in capsys.readouterr().err
    again = tmp_path / "again"  # --attention chooses another: the PNG's backend is not needed
    edited = ["--from-png", str(tmp_path / "edited.png"), "-m", str(tiny_model), "--attention", "auto"]
    assert main(["generate", *edited, "-o", str(again), "--no-progress"]) == 0
    [copy] = again.glob("*.png")
    assert np.array_equal(np.asarray(Image.open(copy)), np.asarray(Image.open(made)))


def test_loading_an_ip_adapter_over_a_named_addon_is_refused(tiny_model, third_party, tmp_path):
    """IP-Adapter needs the cross-attention layers for its own add-on: one added by name there is refused, not
    silently replaced, and the pipeline is left as it was."""
    from difframe import Framework
    from difframe_ip_adapter import testing  # a first-party plugin: installed with the others, never skipped

    adapters = testing.write_adapter_folder(tmp_path / "adapters", testing.SD1_TINY)
    pipe = Framework().build("stable-diffusion", model=tiny_model, attention_addons=["scaled-attention"])
    with pytest.raises(ValueError, match="cross-attention already has the add-on scaled-attention"):
        pipe.load_ip_adapter(adapters, subfolder="models", weight_name="ip-adapter-plain.safetensors")
    assert [addon.name for addon in pipe.attention_addons] == ["scaled-attention"]

"""`difframe generate`: images with embedded parameters, and `--from-png` making the same image again."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image


def run(*argv: str) -> int:
    from difframe.cli import main

    return main(list(argv))


def test_generate_then_reproduce_from_png(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    common = ("--steps", "2", "--size", "32", "--no-progress", "--attention", "sdpa")
    first = ("generate", "a red fox", "-m", str(tiny_model), "-s", "euler_a", "--seed", "3", "-b", "2")
    assert run(*first, "-n", "blurry", "-g", "6", "-o", str(out), *common) == 0
    paths = sorted(out.glob("*.png"))
    assert [p.name for p in paths] == ["00000-3.png", "00001-4.png"]
    text = Image.open(paths[1]).text["parameters"]
    settings = "Steps: 2, Sampler: Euler a, CFG scale: 6.0, Seed: 4"
    assert text.startswith(f"a red fox\nNegative prompt: blurry\n{settings}")
    again = tmp_path / "again"
    assert run("generate", "--from-png", str(paths[1]), "-m", str(tiny_model), "-o", str(again), "--no-progress") == 0
    [copy] = again.glob("*.png")
    # made alone rather than second in a batch of two: float rounding may move a pixel by one level
    difference = np.abs(np.asarray(Image.open(copy), dtype=int) - np.asarray(Image.open(paths[1]), dtype=int))
    assert difference.max() <= 1
    assert Image.open(copy).text["parameters"] == text
    assert str(copy) in capsys.readouterr().out


def test_generate_errors(tiny_model, tmp_path, capsys):
    assert run("generate") == 2
    assert "give a prompt" in capsys.readouterr().err
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert run("generate", "--from-png", str(plain)) == 2
    assert "no 'parameters' text chunk" in capsys.readouterr().err
    assert run("generate", "a cat", "-m", str(tiny_model), "--size", "30", "--steps", "1", "-o", str(tmp_path)) == 2
    assert "multiples of" in capsys.readouterr().err


def test_command_is_listed_without_importing_torch():
    code = (
        "import sys\n"
        "from difframe.cli import build_parser, _add_plugin_commands\n"
        "parser = build_parser()\n"
        "_add_plugin_commands(parser)\n"
        "assert 'generate' in parser.format_help()\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_generate_image_to_image_and_inpainting(h, tiny_model, tmp_path, capsys):
    image, mask = tmp_path / "init.png", tmp_path / "mask.png"
    h.make_image(32).save(image)
    h.make_mask(32).save(mask)
    common = ("-m", str(tiny_model), "--steps", "4", "--seed", "1", "--no-progress")
    assert (
        run("generate", "a cat", "--image", str(image), "--strength", "0.5", "-o", str(tmp_path / "i2i"), *common) == 0
    )
    [made] = (tmp_path / "i2i").glob("*.png")
    assert "Denoising strength: 0.5" in Image.open(made).text["parameters"]
    assert run("generate", "--from-png", str(made), "-m", str(tiny_model), "-o", str(tmp_path / "x")) == 2
    assert "--image" in capsys.readouterr().err
    out = tmp_path / "inpaint"
    assert run("generate", "a cat", "--image", str(image), "--mask", str(mask), "-o", str(out), *common) == 0
    [painted] = out.glob("*.png")
    assert Image.open(painted).size == (32, 32)
    assert "Denoising strength: 1.0" in Image.open(painted).text["parameters"]  # inpainting's default strength


def test_generate_warnings_are_one_line_each(tiny_model, tmp_path, capsys):
    argv = (
        "generate",
        "a cat",
        "-m",
        str(tiny_model),
        "--steps",
        "1",
        "-g",
        "50",
        "-o",
        str(tmp_path),
        "--no-progress",
    )
    assert run(*argv) == 0
    err = capsys.readouterr().err
    assert err.count("warning: guidance_scale 50 is above the usual 1-30") == 1 and "UserWarning" not in err


def test_several_prompts_in_one_run_and_no_stray_progress_bar(tiny_model, tmp_path, capsys):
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()  # as in a fresh process: on until --no-progress turns it off
    out = tmp_path / "out"
    common = ("-m", str(tiny_model), "--steps", "1", "--size", "32", "--seed", "3", "-b", "2", "-o", str(out))
    assert run("generate", "a red fox", "a blue cat", *common, "--no-progress") == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err
    assert transformers_logging.is_progress_bar_enabled()  # restored after the run
    made = sorted(out.glob("*.png"))
    assert [p.name for p in made] == ["00000-3.png", "00001-4.png", "00002-5.png", "00003-6.png"]
    prompts = [Image.open(p).text["parameters"].splitlines()[0] for p in made]
    assert prompts == ["a red fox", "a red fox", "a blue cat", "a blue cat"]


def test_prompts_file_with_plain_and_json_lines(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a red fox\n\n{"prompt": "a blue cat", "steps": 2, "seed": 9, "sampler": "euler"}\n')
    out = tmp_path / "out"
    common = ("-m", str(tiny_model), "--steps", "1", "--size", "32", "--seed", "5", "--no-progress")
    assert run("generate", "--prompts", str(prompts), *common, "-o", str(out)) == 0
    texts = sorted(Image.open(p).text["parameters"] for p in out.glob("*.png"))
    assert len(texts) == 2
    fox, cat = sorted(texts, key=lambda t: not t.startswith("a red fox"))
    assert fox.startswith("a red fox\nSteps: 1,") and "Seed: 5," in fox  # the command line's settings
    assert cat.startswith("a blue cat\nSteps: 2, Sampler: Euler,") and "Seed: 9," in cat  # the line's own


def test_model_given_as_a_folder_inside_a_package(tiny_model, tmp_path, monkeypatch, capsys):
    import importlib

    site = tmp_path / "site"
    (site / "my_models").mkdir(parents=True)
    (site / "my_models" / "__init__.py").write_text("")
    (site / "my_models" / "tiny").symlink_to(tiny_model, target_is_directory=True)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    out = tmp_path / "out"
    common = ("--steps", "1", "--size", "32", "--seed", "1", "--no-progress", "-o", str(out))
    assert run("generate", "a red fox", "-m", "my_models:tiny", *common) == 0
    assert len(list(out.glob("*.png"))) == 1
    assert run("generate", "a red fox", "-m", "my_models:missing", *common) == 2
    assert "my_models" in capsys.readouterr().err

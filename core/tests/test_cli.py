"""`difframe plugins`: a readable table, stable JSON, filters, broken plugins shown; no torch import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from difframe.cli import main

GOOD = """
from difframe import hookimpl

@hookimpl
def register_scheduler(register):
    register(name="good-sampler", factory="difframe.testing:ToyScheduler", aliases=("Good Sampler",))

@hookimpl
def register_attention_processor(register):
    register(name="needs-gpu", factory="x.y:Z", requires={"packages": ["no_such_pkg_xyz"], "cuda": True})
"""


def _json(capsys, *args: str) -> list[dict]:
    assert main(["plugins", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_lists_plugins_registrations_and_availability(fake_plugin, capsys):
    fake_plugin("difframe-good", GOOD, version="1.2")
    fake_plugin("difframe-broken", "raise ImportError('half-installed')\n")
    report = {p["name"]: p for p in _json(capsys)}
    good = report["difframe-good"]
    assert good["version"] == "1.2"
    assert good["hooks"] == ["register_attention_processor", "register_scheduler"]
    by_name = {r["name"]: r for r in good["registrations"]}
    assert by_name["good-sampler"]["available"] is True
    assert by_name["good-sampler"]["aliases"] == ["Good Sampler"]
    assert by_name["needs-gpu"]["available"] is False
    assert by_name["needs-gpu"]["reason"] == "package no_such_pkg_xyz not installed"
    broken = report["difframe-broken"]
    assert broken["broken"] is True
    assert broken["problems"][0]["stage"] == "import" and "half-installed" in broken["problems"][0]["message"]


def test_json_is_stable_and_sorted(fake_plugin, capsys):
    fake_plugin("difframe-good", GOOD)
    first = main(["plugins", "--json"]) or capsys.readouterr().out
    second = main(["plugins", "--json"]) or capsys.readouterr().out
    assert first == second
    report = json.loads(first)
    assert [p["name"] for p in report] == sorted(p["name"] for p in report)
    assert first == json.dumps(report, indent=2, sort_keys=True) + "\n"


def test_filters_by_kind_and_hook(fake_plugin, capsys):
    fake_plugin("difframe-good", GOOD)
    kinds = {r["kind"] for p in _json(capsys, "--kind", "scheduler") for r in p["registrations"]}
    assert kinds == {"scheduler"}
    names = [p["name"] for p in _json(capsys, "--hook", "register_attention_processor")]
    assert "difframe-good" in names and all(
        "register_attention_processor" in p["hooks"] for p in _json(capsys, "--hook", "register_attention_processor")
    )


def test_table_is_readable(fake_plugin, capsys):
    fake_plugin("difframe-good", GOOD, version="1.2")
    fake_plugin("difframe-broken", "raise ImportError('half-installed')\n")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "difframe-good 1.2\n  hooks: register_attention_processor, register_scheduler" in out
    assert "unavailable: package no_such_pkg_xyz not installed" in out
    assert "difframe-broken 1.0  BROKEN" in out
    assert "! import: failed to import difframe_broken: ImportError: half-installed" in out


def test_bad_filter_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        main(["plugins", "--kind", "nonsense"])
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err


def test_cli_and_import_do_not_import_torch():
    code = (
        "import sys, io, contextlib\n"
        "import difframe\n"
        "assert 'torch' not in sys.modules, 'import difframe imported torch'\n"
        "from difframe.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['plugins']); main(['plugins', '--json'])\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'safetensors', 'huggingface_hub', 'PIL') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "difframe", "plugins", "--kind", "attention_processor"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "sdpa" in result.stdout and "available" in result.stdout


def test_plugins_add_commands_and_a_failing_one_is_skipped(capsys):
    from difframe import Framework, hookimpl

    class Greeter:
        __name__ = "greeter"

        @hookimpl
        def register_commands(self, cli):
            command = cli.add_parser("hello", help="say hello")
            command.add_argument("who")
            command.set_defaults(func=lambda args: print(f"hello {args.who}") or 0)

    class Failing:
        __name__ = "failing"

        @hookimpl
        def register_commands(self, cli):
            raise RuntimeError("no commands today")

    framework = Framework(plugins=[Greeter(), Failing()])
    assert main(["hello", "world"], framework=framework) == 0
    captured = capsys.readouterr()
    assert captured.out == "hello world\n"
    assert "plugin 'failing' failed to add its commands: no commands today" in captured.err

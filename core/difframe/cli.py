"""The `difframe` command line. Listing plugins imports neither torch nor any component code."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from .specs import HOOK_KINDS

KINDS = sorted(HOOK_KINDS.values())


def plugins_report(
    framework: Any, kind: str | None = None, hook: str | None = None, *, timing: bool = False
) -> list[dict[str, Any]]:
    """Installed plugins as plain, sorted data: what each implements and registers, and what is broken.
    ``timing`` adds the seconds each took to import and register (a slow one is also reported as a problem)."""
    shadowed = {id(r) for r in framework.registry.shadowed}
    report = []
    for info in framework.plugins:
        if hook and hook not in info.hooks:
            continue
        registrations = [
            {
                "kind": r.kind,
                "name": r.name,
                "aliases": list(r.spec.aliases),
                "factory": r.spec.factory,
                "description": r.spec.description,
                "loads": [list(pair) for pair in r.spec.loads],
                # what the spec of this kind adds (a scheduler's web-UI label, a model's role...), and what it supports
                **_kind_fields(r.spec),
                "available": r.unavailable_reason is None,
                "reason": r.unavailable_reason,
                "shadowed": id(r) in shadowed,
            }
            for r in sorted(info.registrations, key=lambda r: (r.kind, r.name))
            if kind is None or r.kind == kind
        ]
        if kind and not registrations:
            continue
        report.append(
            {
                "name": info.name,
                "version": info.version,
                "module": info.module,
                "hooks": info.hooks,
                "broken": info.broken,
                "registrations": registrations,
                "problems": [{"stage": p.stage, "message": p.message} for p in info.problems],
            }
        )
        if timing:
            report[-1]["load_seconds"] = round(info.load_seconds, 3)
    return report


def _kind_fields(spec: Any) -> dict[str, Any]:
    from .specs import ComponentSpec

    shared = set(ComponentSpec.model_fields) - {"supports"}
    return {k: v for k, v in spec.model_dump(mode="json").items() if k not in shared}


def _print_table(report: list[dict[str, Any]]) -> None:
    if not report:
        print("No difframe plugins found. Install one (e.g. `pip install difframe-samplers`) or check the filters.")
        return
    for plugin in report:
        status = "  BROKEN" if plugin["broken"] else ""
        took = f"  ({plugin['load_seconds']:.3f} s)" if "load_seconds" in plugin else ""
        print(f"{plugin['name']} {plugin['version'] or ''}{status}".rstrip() + took)
        print(f"  hooks: {', '.join(plugin['hooks']) or '-'}")
        rows = [
            (
                r["kind"],
                r["name"] + (" (shadowed)" if r["shadowed"] else ""),
                ", ".join(r["aliases"][:3]) + (", ..." if len(r["aliases"]) > 3 else ""),
                "available" if r["available"] else f"unavailable: {r['reason']}",
            )
            for r in plugin["registrations"]
        ]
        widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
        for row in rows:
            print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
        for problem in plugin["problems"]:
            print(f"  ! {problem['stage']}: {problem['message']}")
        print()


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """While plugins import, what they print goes to stderr (also at the file-descriptor level, for C code), so
    stdout holds only the command's own output."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (an embedding host): redirect at the Python level only
        saved = None
    try:
        if saved is not None:
            os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)


def _discover() -> Any:
    from .framework import Framework

    with _stdout_to_stderr():
        return Framework()


def _cmd_plugins(args: argparse.Namespace) -> int:
    report = plugins_report(_discover(), kind=args.kind, hook=args.hook, timing=args.timing)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print_table(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="difframe", description="A plugin-based diffusion framework.")
    parser.add_argument("--version", action="version", version=f"difframe {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list installed plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="print stable, sorted JSON")
    plugins.add_argument("--kind", choices=KINDS, help="only registrations of this kind")
    plugins.add_argument("--timing", action="store_true", help="add the seconds each plugin took to load")
    plugins.add_argument("--hook", choices=sorted([*HOOK_KINDS, "register_commands"]), help="only plugins with it")
    plugins.set_defaults(func=_cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None, *, framework: Any = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["plugins"]:  # plugin commands cost a full discovery; `plugins` needs only its own
        _add_plugin_commands(parser, framework)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .errors import DifframeError

    try:
        return int(args.func(args) or 0)
    except DifframeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _add_plugin_commands(parser: argparse.ArgumentParser, framework: Any = None) -> None:
    """Let each plugin add subcommands; one that fails is reported on stderr and skipped."""
    framework = framework or _discover()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for impl in framework.plugin_manager.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=subparsers)
        except (Exception, SystemExit) as error:
            print(f"warning: plugin {impl.plugin_name!r} failed to add its commands: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

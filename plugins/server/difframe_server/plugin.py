"""Registrations of difframe-server: the `difframe serve` command. No torch or web framework import here."""

from __future__ import annotations

from difframe import hookimpl


@hookimpl
def register_commands(cli) -> None:
    from .cli import add_serve_command

    add_serve_command(cli)

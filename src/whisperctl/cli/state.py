"""The global options every command shares (through ``ctx.obj``), in a module of their own so that the
commands kept outside ``app.py`` (``convert``) reach them without importing the app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from whisperctl.cli.render import Output

__all__ = ["State", "output_of", "state_of"]


@dataclass
class State:
    """Global options, shared by every command through ``ctx.obj``."""

    cache_dir: Path | None
    registry: Path | None
    output: Output


def state_of(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if not isinstance(obj, State):  # a command invoked without the callback (tests of sub-apps)
        obj = State(None, None, Output())
        ctx.find_root().obj = obj
    return obj


def output_of(ctx: typer.Context) -> Output:
    return state_of(ctx).output

"""The global options every command shares (through ``ctx.obj``), in a module of their own so that the
commands kept outside ``app.py`` (``convert``) reach them without importing the app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from whisperctl.cli.render import Output

__all__ = ["JsonOpt", "MirrorOpt", "OfflineOpt", "State", "output_of", "state_of"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]
# The options of a command that downloads a model before its own work (load, convert).
MirrorOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--mirror",
        help="Mirror URL, directory or oci:// repository for a download [env: WHISPERCTL_MIRROR].",
        show_default=False,
    ),
]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never download [env: WHISPERCTL_OFFLINE=1].")]


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

"""The ``whisperctl`` command: parse options, call the library, render, map errors to exit codes.

Nothing here imports torch; commands that need it import it inside the library call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from . import __version__, api
from .cache import CACHE_ENV
from .errors import WhisperctlError
from .output import Output, entry_info_json, entry_list_json
from .registry import REGISTRY_ENV

__all__ = ["app", "main"]

EXIT_INTERRUPTED = 130


class _Group(TyperGroup):
    """Maps every :class:`WhisperctlError` to its exit code, in one place."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except WhisperctlError as exc:
            _output(ctx).error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _output(ctx).error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None


app = typer.Typer(
    cls=_Group,
    name="whisperctl",
    help="List, download, verify, inspect and load OpenAI Whisper checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class State:
    """Global options, shared by every command through ``ctx.obj``."""

    cache_dir: Path | None
    registry: Path | None
    output: Output


def _state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    if not isinstance(obj, State):  # a command invoked without the callback (tests of sub-apps)
        obj = State(None, None, Output())
        ctx.find_root().obj = obj
    return obj


def _output(ctx: typer.Context) -> Output:
    return _state(ctx).output


def _version(value: bool) -> None:
    if value:
        typer.echo(f"whisperctl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            envvar=CACHE_ENV,
            help="Cache directory (default: $XDG_CACHE_HOME/whisper, else ~/.cache/whisper).",
            show_default=False,
        ),
    ] = None,
    registry: Annotated[
        Path | None,
        typer.Option(
            "--registry",
            envvar=REGISTRY_ENV,
            help="User registry TOML file (default: models.toml in the user config dir).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Print more details.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """List, download, verify, inspect and load OpenAI Whisper checkpoints.

    Shares its cache with openai-whisper: files downloaded by either are used by the other.
    """
    ctx.obj = State(cache_dir=cache_dir, registry=registry, output=Output(quiet=quiet, verbose=verbose))


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table.")]
NameArg = Annotated[
    str, typer.Argument(help="Model name or alias (see `whisperctl list`).", show_default=False)
]


@app.command("list")
def list_(
    ctx: typer.Context,
    cached: Annotated[bool, typer.Option("--cached", help="Only models with a file in the cache.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the known models (official and your registry's) with their cache status."""
    st = _state(ctx)
    entries = api.list_models(cache_dir=st.cache_dir, registry=st.registry, cached=cached)
    if as_json:
        st.output.json([entry_list_json(e) for e in entries])
        return
    root = entries[0].path.parent if entries else api.open_context(st.cache_dir, st.registry)[1].root
    st.output.model_table(entries, cache_root=str(root))


@app.command()
def info(ctx: typer.Context, name: NameArg, as_json: JsonOpt = False) -> None:
    """Everything known about a model: dims, parameters, digest, size, alignment heads, cache status."""
    st = _state(ctx)
    entry = api.model_info(name, cache_dir=st.cache_dir, registry=st.registry)
    if as_json:
        st.output.json(entry_info_json(entry))
    else:
        st.output.model_details(entry)


@app.command()
def path(ctx: typer.Context, name: NameArg) -> None:
    """Print the absolute path of a cached model (exit 5 if not cached), e.g. `$(whisperctl path tiny)`."""
    st = _state(ctx)
    st.output.line(str(api.model_path(name, cache_dir=st.cache_dir, registry=st.registry)))


def main() -> None:
    """Console-script entry point."""
    app(prog_name="whisperctl")

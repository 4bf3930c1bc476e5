"""The ``whisperctl`` command: parse options, call the library, render, map errors to exit codes.

Nothing here imports torch; commands that need it import it inside the library call.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from whisperctl import api
from whisperctl._version import __version__
from whisperctl.cli.convert import convert as convert_command
from whisperctl.cli.render import (
    Bars,
    Output,
    render_du,
    render_export,
    render_freeze,
    render_info,
    render_layout,
    render_prune,
    render_push,
    render_remove,
)
from whisperctl.cli.state import JsonOpt, MirrorOpt, OfflineOpt, State, output_of, state_of
from whisperctl.errors import ExitCode, WhisperctlError

__all__ = ["app", "main"]


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
            raise typer.Exit(ExitCode.INTERRUPTED) from None


app = typer.Typer(
    cls=_Group,
    name="whisperctl",
    help="List, download, verify, inspect, load and convert OpenAI Whisper checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


_state = state_of
_output = output_of


def _version(value: bool) -> None:
    if value:
        Output().line(f"whisperctl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            envvar=api.CACHE_ENV,
            help="Cache directory (default: $XDG_CACHE_HOME/whisper, else ~/.cache/whisper).",
            show_default=False,
        ),
    ] = None,
    registry: Annotated[
        Path | None,
        typer.Option(
            "--registry",
            envvar=api.REGISTRY_ENV,
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
    """List, download, verify, inspect, load and convert OpenAI Whisper checkpoints.

    Shares its cache with openai-whisper: files downloaded by either are used by the other.
    """
    output = Output(quiet=quiet, verbose=verbose)
    ctx.obj = State(cache_dir=cache_dir, registry=registry, output=output)
    if verbose:
        reg = registry or os.environ.get(api.REGISTRY_ENV) or f"{api.default_registry_path()} (default)"
        output.debug(f"whisperctl {__version__}; cache {api.resolve_cache_dir(cache_dir)}; registry {reg}")


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
        st.output.json(entries)
    else:
        st.output.model_table(entries, cache_root=str(api.resolve_cache_dir(st.cache_dir)))


TargetArg = Annotated[
    str,
    typer.Argument(
        help="Model name or alias, or the path of a model: a .pt or ggml file, a Hugging Face or "
        "CTranslate2 directory.",
        show_default=False,
    ),
]


@app.command()
def info(
    ctx: typer.Context,
    target: TargetArg,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Hash the file (for a name, as `verify` does) and name the models with its digest.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Everything known about a model, or a model file or directory of any format: format, dims,
    parameters, tensors and dtypes, alignment heads, digest, status.

    A cached or given model is read lazily (headers, configs and pickles, never its weights, without
    PyTorch) and checked against its dims and the registry's; problems are flagged. For a path, exit 4 when
    it is unreadable or inconsistent.
    """
    st = _state(ctx)
    found = api.inspect(target, cache_dir=st.cache_dir, registry=st.registry, hash=verify)
    render_info(st.output, found, as_json=as_json)
    if found.entry is None and not found.ok:
        raise typer.Exit(ExitCode.INTEGRITY)


@app.command()
def path(ctx: typer.Context, name: NameArg) -> None:
    """Print the absolute path of a cached model (exit 5 if not cached), e.g. `$(whisperctl path tiny)`."""
    st = _state(ctx)
    st.output.line(str(api.model_path(name, cache_dir=st.cache_dir, registry=st.registry)))


NamesArg = Annotated[list[str] | None, typer.Argument(help="Model names or aliases.", show_default=False)]
ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--requirements",
        "-r",
        help="Manifest: model names one a line, # comments ('-' reads stdin); see `whisperctl freeze`.",
        show_default=False,
    ),
]


@app.command()
def download(
    ctx: typer.Context,
    names: NamesArg = None,
    all_: Annotated[bool, typer.Option("--all", help="Every model in the registry.")] = False,
    requirements: ManifestOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Download again even if verified.")] = False,
    connections: Annotated[
        int, typer.Option("--connections", min=1, max=64, help="Parallel byte ranges per large file.")
    ] = 8,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=32, help="Models downloaded at once.")] = 4,
    mirror: Annotated[
        list[str] | None,
        typer.Option(
            "--mirror",
            help="Mirror URL or directory (<base>/<sha256>/<file>), or registry repository "
            "oci://HOST[:PORT]/REPO (oci+http:// for plain http), tried before the official URL; "
            "repeatable or comma-separated [env: WHISPERCTL_MIRROR].",
            show_default=False,
        ),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline", help="No network: only the cache and mirror directories [env: WHISPERCTL_OFFLINE=1]."
        ),
    ] = False,
    stall_timeout: Annotated[
        float,
        typer.Option(
            "--stall-timeout", min=0.1, help="Seconds without a byte before a connection is retried."
        ),
    ] = 30.0,
    speed_limit: Annotated[
        int,
        typer.Option(
            "--speed-limit",
            min=0,
            help="Minimum bytes/s over --speed-time; below it, the connections are retried (0: no minimum).",
        ),
    ] = 1024,
    speed_time: Annotated[
        float, typer.Option("--speed-time", min=0.1, help="Seconds over which --speed-limit is measured.")
    ] = 60.0,
    as_json: JsonOpt = False,
) -> None:
    """Download models into the cache, verified (SHA-256) while they stream; resumes interrupted downloads."""
    from whisperctl.fetch.transfer import TransferOptions  # the engine's options, with httpx: only here

    if not (names or all_ or requirements):
        raise typer.BadParameter("name at least one model, or use --all or -r FILE", param_hint="NAMES")
    st = _state(ctx)
    with Bars(st.output) as bars:
        records = api.download(
            names or (),
            manifest=requirements,
            all_models=all_,
            cache_dir=st.cache_dir,
            registry=st.registry,
            mirrors=mirror or None,
            offline=offline or None,  # None: WHISPERCTL_OFFLINE decides
            force=force,
            jobs=jobs,
            options=TransferOptions(
                connections=connections,
                stall_timeout=stall_timeout,
                speed_limit=speed_limit,
                speed_time=speed_time,
            ),
            progress=bars,
            check=False,
        )
    if as_json:
        st.output.json(records)
    failed = [r for r in records if not r.ok]
    for r in failed:
        st.output.error(str(r.error))
    if failed:
        raise typer.Exit(failed[0].exit_code)


@app.command()
def verify(
    ctx: typer.Context,
    names: NamesArg = None,
    repair: Annotated[bool, typer.Option("--repair", help="Download again what is corrupt.")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, max=32, help="Files hashed at once.")] = 4,
    as_json: JsonOpt = False,
) -> None:
    """Re-hash cached models in full (all cached models when none is named) and update their stamps.

    Exit 0 when every model is verified, 5 when the only problem is models not (fully) downloaded, else 4.
    """
    st = _state(ctx)
    with Bars(st.output, label="verified") as bars:
        records = api.verify(
            names,
            repair=repair,
            cache_dir=st.cache_dir,
            registry=st.registry,
            jobs=jobs,
            on_start=lambda spec, size: bars.start(spec.name, size, 0),
            on_bytes=lambda spec, n: bars.advance(spec.name, n),
            progress=bars,
        )
    if as_json:
        st.output.json(records)
    else:
        st.output.verify_lines(records)
    codes = {r.exit_code for r in records} - {ExitCode.OK}
    if codes:  # a corrupt file outweighs a missing one
        raise typer.Exit(ExitCode.INTEGRITY if ExitCode.INTEGRITY in codes else ExitCode.NOT_CACHED)


@app.command()
def load(
    ctx: typer.Context,
    target: TargetArg,
    device: Annotated[
        str, typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
    ] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype", help="fp32 (as openai-whisper), fp16 (the checkpoint's own, half the memory), bf16."
        ),
    ] = "fp32",
    verify: Annotated[
        bool, typer.Option("--verify", help="Hash a named model's file in full even if its stamp is valid.")
    ] = False,
    sha256: Annotated[
        str | None,
        typer.Option(
            "--sha256", metavar="HEX", help="For a path: the digest the file must have.", show_default=False
        ),
    ] = None,
    in_memory: Annotated[
        bool, typer.Option("--in-memory", help="Read the file into memory instead of mapping it.")
    ] = False,
    mirror: MirrorOpt = None,
    offline: OfflineOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Load a model (downloading it first if needed) onto a device, and report what it took.

    Parameters per part, device and dtype, alignment heads, time of each phase, peak memory. Exit 4 for a
    file that is not a valid checkpoint (or tries to run code), 7 for an unavailable device.
    """
    st = _state(ctx)
    with Bars(st.output) as bars:
        loaded = api.load(
            target,
            device=device,
            dtype=dtype,
            in_memory=in_memory,
            verify=verify,
            sha256=sha256,
            cache_dir=st.cache_dir,
            registry=st.registry,
            mirrors=mirror or None,
            offline=offline or None,  # None: WHISPERCTL_OFFLINE decides
            progress=bars,
        )
    if as_json:
        st.output.json(loaded.report)
    elif not st.output.quiet:
        st.output.load_report(loaded.report)


app.command("convert")(convert_command)


# -- fleets and CI: manifests, freeze, export, rm, prune, du, cache-key -------------------------------------
@app.command()
def freeze(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Print the cached, verified models as a manifest for `download -r`, their digests as comments."""
    st = _state(ctx)
    frozen = api.freeze(cache_dir=st.cache_dir, registry=st.registry)
    render_freeze(st.output, frozen, as_json=as_json)


@app.command()
def export(
    ctx: typer.Context,
    dest: Annotated[
        str | None,
        typer.Argument(
            help="Directory of the mirror tree (created if needed); with --oci-layout, a model name.",
            show_default=False,
        ),
    ] = None,
    names: NamesArg = None,
    all_cached: Annotated[bool, typer.Option("--all-cached", help="Every model in the cache.")] = False,
    requirements: ManifestOpt = None,
    oci_layout: Annotated[
        Path | None,
        typer.Option(
            "--oci-layout",
            metavar="DIR",
            help="Write an OCI image layout (for skopeo and oras, and a mirror itself) instead of a tree.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write cached models as a mirror tree DIR/<sha256>/<file> plus SHA256SUMS (hard links, else copies).

    Any static web server serving DIR is a mirror for `--mirror URL`; DIR itself is one for `--mirror DIR`.
    With `--oci-layout DIR`: an OCI image layout, each model tagged with its name.
    """
    st = _state(ctx)
    if oci_layout is not None:
        layout = api.export_oci_layout(
            oci_layout,
            [*([dest] if dest else []), *(names or ())],
            manifest=requirements,
            all_cached=all_cached,
            cache_dir=st.cache_dir,
            registry=st.registry,
        )
        if as_json:
            st.output.json(layout)
        else:
            render_layout(st.output, layout)
        return
    if dest is None:
        raise typer.BadParameter(
            "give the directory of the mirror tree (or --oci-layout DIR)", param_hint="DEST"
        )
    report = api.export_mirror(
        dest,
        names or (),
        manifest=requirements,
        all_cached=all_cached,
        cache_dir=st.cache_dir,
        registry=st.registry,
    )
    if as_json:
        st.output.json(report)
    else:
        render_export(st.output, report)


@app.command()
def push(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="Repository: oci://HOST[:PORT]/REPOSITORY (oci+http:// for a plain-http registry).",
            show_default=False,
        ),
    ],
    names: NamesArg = None,
    requirements: ManifestOpt = None,
    mount_from: Annotated[
        str | None,
        typer.Option(
            "--mount-from",
            metavar="REPO",
            help="A repository of the same registry to mount blobs from instead of sending them.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Push cached, verified models to a registry as OCI artifacts, each tagged with its name.

    Blobs the registry has are not sent again; an interrupted push resumes. Credentials come from the files
    that docker, podman, skopeo and oras read (REGISTRY_AUTH_FILE, ~/.docker/config.json, ...).
    """
    if not (names or requirements):
        raise typer.BadParameter("name at least one model, or use -r FILE", param_hint="NAMES")
    st = _state(ctx)
    with _stop_on_signals() as stop, Bars(st.output, label="pushed") as bars:
        report = api.push(
            target,
            names or (),
            manifest=requirements,
            mount_from=mount_from,
            cache_dir=st.cache_dir,
            registry=st.registry,
            progress=bars,
            stop=stop.is_set,
        )
    if as_json:
        st.output.json(report)
    else:
        render_push(st.output, report)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by the first Ctrl-C, SIGTERM or SIGHUP, so that a push ends its chunk cleanly and can
    resume; a second one interrupts at once."""
    stop = threading.Event()

    def first(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is not threading.main_thread():  # a test runner's thread: no signals
        yield stop
        return
    names = ("SIGINT", "SIGTERM", "SIGHUP")  # SIGHUP: the terminal or SSH session went away
    saved = {
        sig: signal.signal(sig, first) for sig in (getattr(signal, n) for n in names if hasattr(signal, n))
    }
    try:
        yield stop
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@app.command("rm")
def rm(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Model names, or names of files in the cache.")],
    as_json: JsonOpt = False,
) -> None:
    """Remove models from the cache: file, partial download, stamp and lock. Reports the bytes freed."""
    st = _state(ctx)
    report = api.remove_models(names, cache_dir=st.cache_dir, registry=st.registry)
    if as_json:
        st.output.json(report)
    else:
        render_remove(st.output, report)


@app.command()
def prune(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only report what would go.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove stale partial downloads, stamps of gone files, unheld locks; never models or unknown files."""
    st = _state(ctx)
    report = api.prune(dry_run=dry_run, cache_dir=st.cache_dir, registry=st.registry)
    if as_json:
        st.output.json(report)
    else:
        render_prune(st.output, report)


@app.command()
def du(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Bytes used in the cache, per model (partial downloads included) and in all."""
    st = _state(ctx)
    usage = api.disk_usage(cache_dir=st.cache_dir, registry=st.registry)
    if as_json:
        st.output.json(usage)
    else:
        render_du(st.output, usage)


@app.command("cache-key")
def cache_key(
    ctx: typer.Context, names: NamesArg = None, requirements: ManifestOpt = None, as_json: JsonOpt = False
) -> None:
    """Print a short key that changes exactly when a model's digest changes: for CI caches and build args."""
    st = _state(ctx)
    key = api.cache_key(names or (), manifest=requirements, registry=st.registry)
    if as_json:
        st.output.json(key)
    else:
        st.output.line(key.key)


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="whisperctl")
    except SystemExit as exc:
        if "torch" in sys.modules:
            _exit_now(exc.code)
        raise
    finally:
        # The command is over: spare the interpreter's shutdown a garbage collection through every object of
        # typer, rich, httpx and pydantic (50-100 ms, a sixth of a short `download`). Files and sockets are
        # closed by now, and sys.stdout and sys.stderr are flushed by the shutdown itself.
        gc.freeze()


def _exit_now(code: object) -> None:
    """End the process without the interpreter's shutdown, once a command that imported torch is over.

    Tearing down torch's modules takes about 0.5 s (more than the whole load of a small model); the kernel
    frees the memory either way. By now every file is closed, every lock released and every thread idle;
    only the standard streams need flushing. If they cannot be flushed, the ordinary shutdown reports it.
    """
    status = 0 if code is None else code if isinstance(code, int) else 1
    if not isinstance(code, int | None):
        print(code, file=sys.stderr)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(status)

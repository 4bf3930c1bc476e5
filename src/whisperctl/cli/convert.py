"""``whisperctl convert SRC OUT --to FORMAT``: one command, kept beside the app it registers on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from whisperctl import api
from whisperctl.cli.render import Bars, Output, human_bytes
from whisperctl.cli.state import JsonOpt, MirrorOpt, OfflineOpt, state_of

__all__ = ["convert", "render_convert"]


def convert(
    ctx: typer.Context,
    src: Annotated[
        str,
        typer.Argument(
            help="Model name (downloaded first if needed) or the path of a model: a .pt or ggml file, a "
            "Hugging Face or CTranslate2 directory.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Argument(
            help="Where to write: a file for openai and ggml, a directory for hf and ct2.", show_default=False
        ),
    ],
    to: Annotated[str, typer.Option("--to", help="openai, hf, ct2 or ggml.", show_default=False)],
    dtype: Annotated[str, typer.Option("--dtype", help="fp16 (as the official files) or fp32.")] = "fp16",
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing OUT (once the new one is complete).")
    ] = False,
    mirror: MirrorOpt = None,
    offline: OfflineOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Convert a model to another format, written atomically, with the SHA-256 of every file.

    The output is built beside OUT under a hidden temporary name, read back and compared with the source,
    then renamed into place (a directory gets a SHA256SUMS). Exit 2 for an existing OUT without --force or a
    missing extra, 4 for a source that is no readable model.
    """
    st = state_of(ctx)
    with Bars(st.output) as bars:
        record = api.convert(
            src,
            out,
            to,
            dtype=dtype,
            force=force,
            cache_dir=st.cache_dir,
            registry=st.registry,
            mirrors=mirror or None,
            offline=offline or None,  # None: WHISPERCTL_OFFLINE decides
            progress=bars,
        )
    render_convert(st.output, record, as_json=as_json)


def render_convert(output: Output, record: api.ConvertRecord, *, as_json: bool) -> None:
    if as_json:
        output.json(record)
        return
    if output.quiet:
        return
    source = record.name or str(record.source_path)
    files = f"{len(record.files)} file" + ("s" if len(record.files) != 1 else "")
    output.out.print(
        f"{source} ({record.source_format}) -> {record.out} ({record.format}, {record.dtype}): "
        f"{files}, {human_bytes(record.size_bytes)} in {record.seconds['total']:.2f} s, "
        f"peak RSS {human_bytes(record.peak_rss_bytes)}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    phases = ", ".join(f"{k} {v:.2f}" for k, v in record.seconds.items() if k != "total")
    output.out.print(f"seconds: {phases}", markup=False, highlight=False, soft_wrap=True)
    for f in record.files:  # as sha256sum prints them, with the size between
        output.out.print(f"{f.sha256}  {f.size_bytes:>15,}  {f.path}", markup=False, highlight=False)

"""Rendering: rich tables and progress bars for people, JSON for programs. The only module that prints.

Data goes to stdout, diagnostics to stderr, so ``whisperctl path tiny`` and ``--json`` can be piped.
Colours are off when ``NO_COLOR`` is set or the stream is not a terminal (rich decides both).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from whisperctl.api import Status, format_manifest
from whisperctl.cli.records import to_json
from whisperctl.models.dims import count_parameters
from whisperctl.models.formats.assets import is_multilingual

if TYPE_CHECKING:
    from whisperctl.api import (
        CacheEntry,
        CheckpointInfo,
        DiskUsage,
        ExportReport,
        Freeze,
        LayoutReport,
        PruneReport,
        PushReport,
        RemoveReport,
        VerifyRecord,
    )
    from whisperctl.fetch.download import DownloadRecord
    from whisperctl.models.formats import ModelFile
    from whisperctl.models.loader import LoadReport

__all__ = [
    "Bars",
    "Output",
    "human_bytes",
    "human_count",
    "render_du",
    "render_export",
    "render_freeze",
    "render_info",
    "render_layout",
    "render_prune",
    "render_push",
    "render_remove",
]

_STATUS_STYLE = {
    Status.VERIFIED: "green",
    Status.PRESENT: "cyan",
    Status.PARTIAL: "yellow",
    Status.CORRUPT: "bold red",
    Status.MISSING: "dim",
}


def human_bytes(n: int | None) -> str:
    """Decimal units, as model sizes are usually quoted (75.6 MB, 3.09 GB)."""
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_count(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1_000_000_000:
        return f"{n / 1e9:.2f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    return f"{n:,}"


@dataclass
class Output:
    """The CLI's two consoles and its verbosity."""

    quiet: bool = False
    verbose: bool = False
    out: Console = field(default_factory=lambda: Console(soft_wrap=True, highlight=False))
    err: Console = field(default_factory=lambda: Console(stderr=True, soft_wrap=True, highlight=False))

    # -- diagnostics (stderr) -------------------------------------------------------------------------
    def error(self, message: str) -> None:
        """Errors are printed whatever ``--quiet`` says."""
        self.err.print(Text("error: ", style="bold red") + Text(message))

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(Text(message))

    def debug(self, message: str) -> None:
        if self.verbose and not self.quiet:
            self.err.print(Text(message, style="dim"))

    # -- data (stdout) -----------------------------------------------------------------------------------
    def json(self, data: Any) -> None:
        """Any record, or list of records, through the one conversion (:func:`.records.to_json`)."""
        # Plain print: no wrapping, no markup, exactly one JSON document.
        self.out.file.write(json.dumps(to_json(data), indent=2) + "\n")
        self.out.file.flush()

    def line(self, text: str) -> None:
        self.text(text + "\n")

    def text(self, text: str) -> None:
        """Text as it is (a manifest, a path): no wrapping, no markup."""
        self.out.file.write(text)
        self.out.file.flush()

    def verify_lines(self, records: Sequence[VerifyRecord]) -> None:
        for record in records:
            self.verify_line(record)

    def verify_line(self, record: VerifyRecord) -> None:
        text = Text(f"{record.name}: ") + Text(record.status, style=_STATUS_STYLE[record.status])
        if record.status is Status.CORRUPT:
            actual = record.sha256_actual or "unreadable"
            text.append(
                f" (expected SHA-256 {record.sha256_expected}, got {actual}); run `whisperctl verify "
                f"--repair {record.name}` or `whisperctl download --force {record.name}`"
            )
            if record.error:
                text.append(f" ({record.error})")
        elif record.status is Status.VERIFIED:
            text.append(f" {record.path}", style="dim")
        elif record.status is Status.PARTIAL:
            text.append(f" (unfinished download); run `whisperctl download {record.name}` to finish it")
        else:
            text.append(f" (not in the cache); run `whisperctl download {record.name}`")
        self.out.print(text)

    def model_table(self, entries: Sequence[CacheEntry], *, cache_root: str) -> None:
        table = Table(title=None, caption=self._caption(entries, cache_root), caption_justify="left")
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("aliases", no_wrap=True)
        table.add_column("parameters", justify="right", no_wrap=True)
        table.add_column("size", justify="right", no_wrap=True)
        table.add_column("languages", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("path", overflow="fold", min_width=24)
        for e in entries:
            spec = e.spec
            params = spec.parameters
            table.add_row(
                spec.name + ("" if spec.source == "official" else " *"),
                ", ".join(spec.aliases),
                human_count(params.total if params else None),
                human_bytes(spec.size_bytes),
                spec.languages,
                Text(e.status, style=_STATUS_STYLE[e.status]),
                str(e.path) if e.exists else (str(e.partial_path) if e.partial_path else ""),
            )
        self.out.print(table)

    @staticmethod
    def _caption(entries: Sequence[CacheEntry], cache_root: str) -> str:
        on_disk = sum(e.size_on_disk or 0 for e in entries)
        files = sum(1 for e in entries if e.exists)
        user = any(e.spec.source == "registry" for e in entries)
        note = "; * = from your registry file" if user else ""
        return f"cache: {cache_root} ({files} files, {human_bytes(on_disk)}){note}"

    def model_details(self, entry: CacheEntry, model: ModelFile | None = None) -> None:
        """A registry model's facts; what the registry leaves unknown is taken from its file, when read."""
        spec = entry.spec
        params = spec.parameters
        languages = spec.languages
        if spec.english_only is None and model is not None:
            english = not is_multilingual(model.dims.n_vocab)
            languages = (
                f"{'English' if english else 'multilingual'} (n_vocab {model.dims.n_vocab} in the file)"
            )
        rows: list[tuple[str, str | Text]] = [
            ("name", spec.name + (f" (aliases: {', '.join(spec.aliases)})" if spec.aliases else "")),
            ("source", spec.source + (f" ({spec.registry_file})" if spec.registry_file else "")),
            ("languages", languages),
        ]
        if params is not None:
            total = f"{params.total:,} total = {params.encoder:,} encoder + {params.decoder:,} decoder"
            rows.append(("parameters", total))
        elif model is not None:
            p = count_parameters(model.dims)
            total = f"{p.total:,} total = {p.encoder:,} encoder + {p.decoder:,} decoder (from the file)"
            rows.append(("parameters", total))
        else:
            rows.append(("parameters", "unknown until the checkpoint is read"))
        if spec.dims is not None:
            rows.append(("dims", ", ".join(f"{k}={v}" for k, v in spec.dims.as_dict().items())))
        rows += [("url", spec.url), ("sha256", spec.sha256)]
        size = f"{spec.size_bytes:,} bytes ({human_bytes(spec.size_bytes)})" if spec.size_bytes else None
        rows.append(("size", size or "unknown (not published)"))
        heads = spec.alignment_heads
        if heads is None:
            rows.append(("alignment heads", "default (all heads of the last half of the decoder layers)"))
        else:
            rows.append(("alignment heads", f"{len(heads)}: " + " ".join(f"({a},{b})" for a, b in heads)))
        status = Text(entry.status, style=_STATUS_STYLE[entry.status])
        if entry.stamp is not None and entry.status in (Status.VERIFIED, Status.CORRUPT):
            status.append(f" (SHA-256 {entry.stamp.sha256} measured)", style="dim")
        rows += [("status", status), ("path", str(entry.path))]
        self._rows(rows)

    def _rows(self, rows: Sequence[tuple[str, str | Text]]) -> None:
        # One line per field, never folded: digests, paths and URLs must survive copy and paste.
        for key, value in rows:
            self.out.print(
                Text(f"{key:<16} ", style="bold") + (value if isinstance(value, Text) else Text(value))
            )

    def checkpoint_details(self, info: CheckpointInfo) -> None:
        """The model file's own facts, in any format (after :meth:`model_details` for a name)."""
        model = info.checkpoint
        rows: list[tuple[str, str | Text]] = []
        if info.entry is None:
            rows.append(("path", str(info.path)))
        if info.error is not None:
            rows.append(("checkpoint", Text(info.error, style="red")))
        if model is not None:
            dtypes = ", ".join(f"{n} {dtype}" for dtype, n in model.dtypes.items())
            rows.append(("format", _FORMAT_NAMES.get(model.format, model.format)))
            if len(model.files) > 1 or model.files[0] != model.path:
                names = [_relative(f, model.path) for f in model.files]
                rows.append(("files", ", ".join(names)))
            rows += [
                ("file size", f"{model.size_bytes:,} bytes ({human_bytes(model.size_bytes)})"),
                ("file dims", ", ".join(f"{k}={v}" for k, v in model.dims.as_dict().items())),
                (
                    "tensors",
                    f"{len(model.tensors)} ({dtypes}), {model.elements:,} values, "
                    f"{human_bytes(model.tensor_bytes)}",
                ),
            ]
            if info.entry is None:  # for a name, model_details shows them
                p = count_parameters(model.dims)
                rows.append(
                    ("parameters", f"{p.total:,} total = {p.encoder:,} encoder + {p.decoder:,} decoder")
                )
            if model.alignment_heads is not None:
                pairs = " ".join(f"({a},{b})" for a, b in model.alignment_heads)
                origin = model.heads_origin or "the file"
                rows.append(("alignment heads", f"{len(model.alignment_heads)} from {origin}: {pairs}"))
            elif info.entry is None:
                rows.append(("alignment heads", "none in the file (the registry's or the default apply)"))
            rows += [(key, value) for key, value in model.details]
        for problem in info.problems:
            rows.append(("problem", Text(problem, style="red")))
        if info.entry is None:
            if info.sha256 is None:
                rows.append(("sha256", "not checked (--verify hashes it)"))
            else:
                known = f" = {', '.join(info.matches)}" if info.matches else " (no registry model has it)"
                rows.append(("sha256", info.sha256 + known))
        elif info.sha256 is not None:
            if info.sha256 == info.entry.spec.sha256:
                rows.append(("sha256 measured", f"{info.sha256} (matches the registry)"))
            else:
                rows.append(("sha256 measured", Text(f"{info.sha256} (not the registry's)", style="red")))
        self._rows(rows)

    def load_report(self, report: LoadReport) -> None:
        p = report.parameters
        rows: list[tuple[str, str | Text]] = [
            ("model", report.name or "(a checkpoint file)"),
            ("path", str(report.path)),
            ("integrity", report.integrity),
            ("device", report.device),
            (
                "dtype",
                report.dtype
                + (f" (checkpoint {report.checkpoint_dtype})" if report.checkpoint_dtype else ""),
            ),
            ("parameters", f"{p.total:,} total = {p.encoder:,} encoder + {p.decoder:,} decoder"),
        ]
        for part in report.parts:
            rows.append(
                (
                    f"  {part.name}",
                    f"{part.parameters:,} parameters on {part.device}, {part.dtype}, "
                    f"{human_bytes(part.bytes)} with buffers",
                )
            )
        rows.insert(2, ("format", report.format))
        rows.append(("alignment heads", f"{report.alignment_heads} ({report.alignment_heads_source})"))
        phases = ", ".join(f"{k} {v:.3f}" for k, v in report.seconds.items() if k != "total")
        rows.append(("seconds", f"{report.seconds['total']:.3f} ({phases})"))
        rows.append(("peak host RSS", human_bytes(report.peak_rss_bytes)))
        if report.peak_gpu_bytes is not None:
            rows.append(("peak GPU memory", human_bytes(report.peak_gpu_bytes)))
        if report.mapped:
            rows.append(("note", "weights are mapped from the file, copy-on-write (no copy was made)"))
        self._rows(rows)


def render_info(output: Output, found: CheckpointInfo, *, as_json: bool) -> None:
    """A model's facts then its file's, or a checkpoint file's alone; in JSON, a model's object holds its
    file's as ``checkpoint`` (null when there is no file)."""
    entry = found.entry
    if as_json:
        if entry is None:
            output.json(found)
        else:
            output.json({**_object(entry), "checkpoint": to_json(found) if entry.exists else None})
        return
    if entry is not None:
        output.model_details(entry, found.checkpoint)
    output.checkpoint_details(found)


_FORMAT_NAMES = {
    "openai": "openai (openai-whisper .pt)",
    "hf": "hf (Hugging Face transformers directory)",
    "ct2": "ct2 (CTranslate2 directory)",
    "ggml": "ggml (whisper.cpp file)",
}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _object(record: object) -> dict[str, Any]:
    data = to_json(record)
    if not isinstance(data, dict):
        raise TypeError(f"{type(record).__name__} is not a record")
    return data


class Bars:
    """Progress of downloads or hashing: a rich bar per file plus a total on a terminal; on anything else
    (a CI log, a pipe) no bars, and one line per finished file. Nothing at all with ``--quiet``.

    Implements the library's ``DownloadProgress`` protocol.
    """

    def __init__(self, output: Output, *, label: str = "total") -> None:
        self.output = output
        self.live = output.err.is_terminal and not output.quiet
        self.tasks: dict[str, TaskID] = {}
        self.done: dict[str, int] = {}
        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(bar_width=None),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=output.err,
            disable=not self.live,
            expand=True,
        )
        self.total = self.progress.add_task(f"[bold]{label}", total=0, visible=False)

    def __enter__(self) -> Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.progress.stop()

    def start(self, name: str, total: int | None, completed: int) -> None:
        task = self.tasks.get(name)
        if task is None:
            self.tasks[name] = self.progress.add_task(name, total=total, completed=completed)
        else:  # a transfer that started over
            self.progress.reset(task, total=total, completed=completed)
        self.done[name] = completed
        self._update_total()

    def advance(self, name: str, nbytes: int) -> None:
        self.progress.advance(self.tasks[name], nbytes)
        self.progress.advance(self.total, nbytes)
        self.done[name] = self.done.get(name, 0) + nbytes

    def _update_total(self) -> None:
        totals = [self.progress.tasks[t].total or 0 for t in self.tasks.values()]
        self.progress.update(
            self.total, total=sum(totals), completed=sum(self.done.values()), visible=len(self.tasks) > 1
        )

    def note(self, name: str, message: str) -> None:
        if not self.output.quiet:
            self.progress.console.print(Text(f"{name}: {message}", style="yellow"))

    def finish(self, record: DownloadRecord) -> None:
        if not record.ok or self.output.quiet:
            return  # the CLI reports failures once, at the end
        from whisperctl.fetch.download import DownloadStatus  # loaded already: a download is running

        if record.status is DownloadStatus.CACHED:
            line = f"{record.name}: cached, verified ({record.path})"
        else:
            size = record.size_bytes or 0
            rate = size / record.seconds if record.seconds > 0 else 0.0
            resumed = f", resumed at {human_bytes(record.resumed_from)}" if record.resumed_from else ""
            line = (
                f"{record.name}: downloaded {human_bytes(size)} in {record.seconds:.1f} s "
                f"({human_bytes(int(rate))}/s{resumed}) from {record.source}"
            )
        self.progress.console.print(Text(line, style="green" if self.live else ""))


# -- fleets and CI: freeze, export, rm, prune, du ------------------------------------------------------------
def render_freeze(output: Output, frozen: Freeze, *, as_json: bool) -> None:
    """The manifest (or the JSON array of its models) on stdout; the models left out on stderr."""
    for name in frozen.corrupt:
        output.error(
            f"{name}: left out, its file failed verification; run `whisperctl verify --repair {name}`"
        )
    if as_json:
        output.json(frozen.models)
    else:
        output.text(format_manifest(frozen.models))


def render_export(output: Output, report: ExportReport) -> None:
    for r in report.records:
        output.line(f"{r.name}: {r.method} {r.path}")
    n = len(report.records)
    output.info(
        f"wrote {report.sums} ({n} model{'' if n == 1 else 's'}); serve {report.root} with any static web "
        f"server and use `--mirror URL`, or use `--mirror {report.root}` as it is"
    )


def render_layout(output: Output, report: LayoutReport) -> None:
    for r in report.records:
        output.line(f"{r.name}: {r.method} {r.path} (manifest {r.manifest_digest})")
    n = len(report.records)
    output.info(
        f"wrote {report.index} ({n} model{'' if n == 1 else 's'}); copy it to a registry with "
        f"`skopeo copy oci:{report.root}:NAME docker://...`, or use `--mirror {report.root}` as it is"
    )


def render_push(output: Output, report: PushReport) -> None:
    for m in report.models:
        output.line(
            f"{m.reference}: {m.layer}, {human_bytes(m.bytes_sent)} sent, {human_bytes(m.bytes_skipped)} "
            f"skipped (manifest {m.manifest_digest})"
        )
    output.info(
        f"pushed {len(report.models)} to {report.registry}: {human_bytes(report.bytes_sent)} sent, "
        f"{human_bytes(report.bytes_skipped)} already there"
    )


def render_remove(output: Output, report: RemoveReport) -> None:
    for r in report.models:
        if r.files:
            output.line(f"{r.name}: removed {len(r.files)} files, {human_bytes(r.bytes_freed)}")
        else:
            output.line(f"{r.name}: nothing in the cache")
    output.info(f"freed {human_bytes(report.bytes_freed)}")


def render_prune(output: Output, report: PruneReport) -> None:
    verb = "would remove" if report.dry_run else "removed"
    for i in report.items:
        output.line(f"{verb} {i.path} ({human_bytes(i.size_bytes)}): {i.reason}")
    for path in report.in_use:
        output.line(f"kept {path}: a process is downloading it")
    for path in report.unknown:
        output.line(
            f"left alone {path}: not attributable to a model (`whisperctl rm NAME` removes it by name)"
        )
    freed = "would free" if report.dry_run else "freed"
    output.info(f"{freed} {human_bytes(report.bytes_freed)} in {report.root}")


def render_du(output: Output, usage: DiskUsage) -> None:
    table = Table(caption=f"cache: {usage.root}", caption_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for column in ("file", "partial", "total"):
        table.add_column(column, justify="right", no_wrap=True)
    for m in usage.models:
        partial = human_bytes(m.partial_bytes) if m.partial_bytes else ""
        status = Text(m.status, style=_STATUS_STYLE[m.status])
        table.add_row(m.name, status, human_bytes(m.file_bytes), partial, human_bytes(m.total_bytes))
    table.add_row(".whisperctl", "state", "", "", human_bytes(usage.state_bytes))
    for path, size in usage.unknown:
        table.add_row(path.name, Text("unknown", style="dim"), human_bytes(size), "", human_bytes(size))
    table.add_section()
    table.add_row("total", "", "", "", human_bytes(usage.total_bytes), style="bold")
    output.out.print(table)

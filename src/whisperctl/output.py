"""Rendering: rich tables for people, JSON for programs. The only module that prints.

Data goes to stdout, diagnostics to stderr, so ``whisperctl path tiny`` and ``--json`` can be piped.
Colours are off when ``NO_COLOR`` is set or the stream is not a terminal (rich decides both).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .cache import CacheEntry

__all__ = ["Output", "entry_info_json", "entry_list_json", "human_bytes", "human_count"]

_STATUS_STYLE = {
    "verified": "green",
    "present": "cyan",
    "partial": "yellow",
    "corrupt": "bold red",
    "missing": "dim",
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


def entry_list_json(entry: CacheEntry) -> dict[str, Any]:
    spec = entry.spec
    params = spec.parameters
    return {
        "name": spec.name,
        "aliases": list(spec.aliases),
        "filename": spec.filename,
        "url": spec.url,
        "sha256": spec.sha256,
        "size_bytes": spec.size_bytes,
        "parameters": params.total if params else None,
        "english_only": spec.english_only,
        "status": entry.status,
        "path": str(entry.path),
        "source": spec.source,
    }


def entry_info_json(entry: CacheEntry) -> dict[str, Any]:
    spec = entry.spec
    params = spec.parameters
    heads = spec.alignment_heads
    return {
        "name": spec.name,
        "aliases": list(spec.aliases),
        "source": spec.source,
        "filename": spec.filename,
        "english_only": spec.english_only,
        "dims": spec.dims.as_dict() if spec.dims else None,
        "parameters": params.as_dict() if params else None,
        "sha256": spec.sha256,
        "url": spec.url,
        "size_bytes": spec.size_bytes,
        "alignment_heads": (
            {"count": len(heads), "pairs": [list(p) for p in heads], "source": spec.source}
            if heads is not None
            else None
        ),
        "status": entry.status,
        "path": str(entry.path),
        "size_on_disk": entry.size_on_disk,
        "sha256_measured": entry.stamp.sha256 if entry.stamp else None,
    }


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
        # Plain print: no wrapping, no markup, exactly one JSON document.
        self.out.file.write(json.dumps(data, indent=2) + "\n")
        self.out.file.flush()

    def line(self, text: str) -> None:
        self.out.file.write(text + "\n")
        self.out.file.flush()

    def model_table(self, entries: Sequence[CacheEntry], *, cache_root: str) -> None:
        table = Table(title=None, caption=self._caption(entries, cache_root), caption_justify="left")
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("aliases")
        table.add_column("parameters", justify="right")
        table.add_column("size", justify="right")
        table.add_column("languages")
        table.add_column("status")
        table.add_column("path", overflow="fold")
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

    def model_details(self, entry: CacheEntry) -> None:
        spec = entry.spec
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column(overflow="fold")
        params = spec.parameters
        grid.add_row("name", spec.name + (f" (aliases: {', '.join(spec.aliases)})" if spec.aliases else ""))
        grid.add_row("source", spec.source + (f" ({spec.registry_file})" if spec.registry_file else ""))
        grid.add_row("languages", spec.languages)
        if params is not None:
            grid.add_row(
                "parameters",
                f"{params.total:,} total = {params.encoder:,} encoder + {params.decoder:,} decoder",
            )
        else:
            grid.add_row("parameters", "unknown until the checkpoint is read")
        if spec.dims is not None:
            grid.add_row("dims", ", ".join(f"{k}={v}" for k, v in spec.dims.as_dict().items()))
        grid.add_row("url", spec.url)
        grid.add_row("sha256", spec.sha256)
        size = human_bytes(spec.size_bytes)
        grid.add_row(
            "size", f"{spec.size_bytes:,} bytes ({size})" if spec.size_bytes else "unknown (not published)"
        )
        heads = spec.alignment_heads
        if heads is None:
            grid.add_row("alignment heads", "default (all heads of the last half of the decoder layers)")
        else:
            pairs = " ".join(f"({layer},{head})" for layer, head in heads)
            grid.add_row("alignment heads", f"{len(heads)}: {pairs}")
        status = Text(entry.status, style=_STATUS_STYLE[entry.status])
        if entry.stamp is not None and entry.status in ("verified", "corrupt"):
            status.append(f" (SHA-256 {entry.stamp.sha256[:16]}... measured)", style="dim")
        grid.add_row("status", status)
        grid.add_row("path", str(entry.path))
        self.out.print(grid)

"""Mirror trees: verified models laid out as ``<root>/<sha256>/<filename>`` beside a ``SHA256SUMS`` file,
the official layout that any static web server (or the bare directory) serves as a mirror for
``download --mirror``.

A file reaches its name in the tree only by ``os.replace`` of a private temporary file whose SHA-256 matched.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from whisperctl.errors import CacheError, IntegrityError
from whisperctl.models.registry import ModelSpec
from whisperctl.store.files import atomic_write_text, copy_to_new, fsync_path
from whisperctl.store.hashing import sha256_file
from whisperctl.store.layout import temporary_path
from whisperctl.store.stamps import Stamp

__all__ = [
    "SUMS_NAME",
    "ExportMethod",
    "ExportRecord",
    "ExportReport",
    "export_file",
    "place_file",
    "write_sums",
]

SUMS_NAME = "SHA256SUMS"
_SUMS_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64}) [ *](?P<path>[0-9a-f]{64}/[^/]+)$")

ExportMethod = Literal["linked", "copied", "present"]


@dataclass(frozen=True)
class ExportRecord:
    """One model in a mirror tree: ``linked`` (a hard link to the cached file), ``copied``, or ``present``
    (already there, verified)."""

    name: str
    sha256: str
    size_bytes: int
    path: Path
    method: ExportMethod


@dataclass(frozen=True)
class ExportReport:
    root: Path
    sums: Path
    records: list[ExportRecord]

    @property
    def bytes_copied(self) -> int:
        return sum(r.size_bytes for r in self.records if r.method == "copied")


def export_file(spec: ModelSpec, source: Path, stamp: Stamp | None, root: Path) -> ExportRecord:
    """Put the cached file ``source`` of ``spec`` into the tree at ``root``: a hard link where the filesystem
    allows, else a copy. ``stamp``: the cached file's, when it said verified; a file that is still the one it
    describes (same device, inode, size and mtime) is not read again."""
    return place_file(spec, source, stamp, root / spec.sha256 / spec.filename)


def place_file(spec: ModelSpec, source: Path, stamp: Stamp | None, target: Path) -> ExportRecord:
    """Put the cached file ``source`` of ``spec`` at ``target`` (its folder created), as :func:`export_file`
    does: linked or copied, verified, by ``os.replace``; ``present`` when a verified copy is there."""
    src = source.stat()

    def stamped(st: os.stat_result) -> bool:
        return stamp is not None and stamp.matches(st, device=src.st_dev)

    def record(method: ExportMethod) -> ExportRecord:
        return ExportRecord(spec.name, spec.sha256, src.st_size, target, method)

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(target, follow_symlinks=False)
            if stamped(st):
                return record("present")  # the cached file itself, and its stamp says verified
            if stat.S_ISREG(st.st_mode) and st.st_size == src.st_size and sha256_file(target) == spec.sha256:
                return record("present")
        tmp = temporary_path(target)
        try:
            method: ExportMethod = "linked"
            try:
                os.link(source, tmp)
            except OSError:  # another filesystem, FAT/exFAT, no hard links: copy
                method = "copied"
                with open(source, "rb", buffering=0) as f:
                    digest, _ = copy_to_new(f.fileno(), tmp)
            else:
                # The cached file itself, still as its stamp describes it: not read again.
                digest = spec.sha256 if stamped(os.stat(tmp)) else sha256_file(tmp)
            if digest != spec.sha256:
                raise IntegrityError(
                    f"{spec.name}: {source} has SHA-256 {digest}, expected {spec.sha256}; it changed since "
                    f"it was verified and was not exported; run `whisperctl verify --repair {spec.name}`"
                )
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        with contextlib.suppress(OSError):  # not every platform or filesystem can fsync a directory
            fsync_path(target.parent)
    except OSError as exc:
        raise CacheError(
            f"{target}: cannot write the export ({exc.strerror or exc}); check the destination's permissions "
            "and free space"
        ) from exc
    return record(method)


def write_sums(root: Path, records: Sequence[ExportRecord]) -> Path:
    """Write ``<root>/SHA256SUMS`` (atomically) for ``records``, keeping the lines of earlier exports whose
    files remain, so that a tree can be filled model by model; ``sha256sum -c SHA256SUMS`` checks it."""
    sums = root / SUMS_NAME
    lines: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError, UnicodeDecodeError):
        for line in sums.read_text("utf-8").splitlines():
            m = _SUMS_LINE.fullmatch(line)
            if m and (root / m["path"]).is_file():
                lines[m["path"]] = m["digest"]
    for r in records:
        lines[f"{r.sha256}/{r.path.name}"] = r.sha256
    try:
        atomic_write_text(sums, "".join(f"{digest}  {path}\n" for path, digest in sorted(lines.items())))
    except OSError as exc:
        raise CacheError(f"{sums}: cannot write ({exc.strerror or exc}); check the destination") from exc
    return sums

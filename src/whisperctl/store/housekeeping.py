"""Removing models from the cache, and measuring it: ``rm`` and ``du`` below the library face.

Only files that can be attributed to a model are ever removed: a model's file, partial file, sidecar, stamp,
owner note and lock (see :func:`files_of`), and only under that model's lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from whisperctl.errors import CacheError
from whisperctl.models.registry import ModelSpec
from whisperctl.store.cache import Cache, Status
from whisperctl.store.layout import STATE_DIRNAME
from whisperctl.store.locks import lock_unless_busy

__all__ = [
    "DiskUsage",
    "RemoveRecord",
    "RemovedFile",
    "UsageEntry",
    "disk_usage",
    "files_of",
    "has_files",
    "path_size",
    "remove_files",
    "unlink",
]


def files_of(cache: Cache, filename: str) -> list[Path]:
    """Every path whisperctl may keep for a model file: the file, partial file, sidecar and stamp, then the
    owner note and the lock (last, so that it can be removed while it is still held)."""
    return [
        cache.path_for(filename),
        cache.partial_path(filename),
        cache.partial_state_path(filename),
        cache.stamp_path(filename),
        cache.owner_path(filename),
        cache.lock_path(filename),
    ]


def has_files(cache: Cache, filename: str) -> bool:
    """Whether the cache holds the file, partial file, sidecar or stamp of ``filename``."""
    return any(p.exists() for p in files_of(cache, filename)[:4])


def path_size(path: Path) -> int | None:
    """The size of ``path`` itself (a symlink is not followed), or None when there is nothing there."""
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except FileNotFoundError:
        return None


def unlink(path: Path) -> None:
    """Remove ``path`` (a symlink itself, never its target); gone already is fine; else :class:`CacheError`
    (exit 6)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CacheError(f"{path}: cannot remove ({exc.strerror or exc}); check its permissions") from exc


# -- rm ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemovedFile:
    path: Path
    size_bytes: int


@dataclass(frozen=True)
class RemoveRecord:
    """What ``rm`` removed for one name: its file, partial file, sidecar, stamp and lock."""

    name: str
    files: list[RemovedFile]

    @property
    def bytes_freed(self) -> int:
        return sum(f.size_bytes for f in self.files)

    @property
    def status(self) -> Literal["removed", "absent"]:
        return "removed" if self.files else "absent"


def remove_files(cache: Cache, filenames: Sequence[str]) -> list[RemoveRecord]:
    """Remove every file of each model file named (see :func:`files_of`); one record per name.

    Every model's lock is taken before anything is removed, none waited for: when another process holds one,
    :class:`CacheError` (exit 6), and nothing is removed.
    """
    cache.check_readable()
    cache.check_state_dirs()  # stamps and locks are removed too: never through a link out of the cache
    targets = list(dict.fromkeys(filenames))
    # What there is to report, looked at before the locks are taken (taking one may create its file).
    found = {
        filename: [
            RemovedFile(p, size) for p in files_of(cache, filename) if (size := path_size(p)) is not None
        ]
        for filename in targets
    }
    with contextlib.ExitStack() as held:
        for filename in targets:
            holder = held.enter_context(lock_unless_busy(cache, filename, create=cache.root.is_dir()))
            if holder is not None:
                raise CacheError(
                    f"{filename}: {holder} is downloading it; nothing was removed: let it finish, then run "
                    "`whisperctl rm` again"
                )
        for filename in targets:
            for path in files_of(cache, filename):  # the lock last, and while it is still held
                unlink(path)
    return [RemoveRecord(filename.removesuffix(".pt"), found[filename]) for filename in targets]


# -- du ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UsageEntry:
    """Bytes of one model in the cache: its file and its unfinished download (partial file and sidecar)."""

    name: str
    filename: str
    status: Status
    file_bytes: int
    partial_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.file_bytes + self.partial_bytes


@dataclass(frozen=True)
class DiskUsage:
    """Bytes per model (those with anything in the cache), whisperctl's state, and files of no known model."""

    root: Path
    models: list[UsageEntry]
    state_bytes: int
    unknown: list[tuple[Path, int]]

    @property
    def total_bytes(self) -> int:
        return sum(m.total_bytes for m in self.models) + self.state_bytes + sum(n for _, n in self.unknown)


def disk_usage(cache: Cache, specs: Iterable[ModelSpec]) -> DiskUsage:
    """Bytes used in the cache by ``specs`` and the rest (apparent sizes; a partial file counts its full
    preallocated size)."""
    cache.check_readable()
    models = []
    attributed = {STATE_DIRNAME}
    for spec in specs:
        entry = cache.entry(spec)
        partials = (cache.partial_path(spec), cache.partial_state_path(spec))
        part = sum(path_size(p) or 0 for p in partials)
        attributed.update({spec.filename, *(p.name for p in partials)})
        if entry.size_on_disk is not None or part:
            models.append(UsageEntry(spec.name, spec.filename, entry.status, entry.size_on_disk or 0, part))
    state = 0
    for dirpath, _dirs, files in os.walk(cache.state_dir):
        state += sum(path_size(Path(dirpath, f)) or 0 for f in files)
    unknown = []
    if cache.root.is_dir():
        for path in sorted(cache.root.iterdir()):
            if path.name not in attributed and path.is_file():
                unknown.append((path, path.stat().st_size))
    return DiskUsage(cache.root, models, state, unknown)

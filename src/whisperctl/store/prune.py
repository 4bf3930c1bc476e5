"""Cache housekeeping as a plan, then its execution (as huggingface_hub's scan -> delete strategy -> execute).

:func:`scan` scans the cache and writes nothing: it finds partial downloads that no process is writing
(with their sidecars and locks), stamps of files that are gone, locks that no process holds and temporary
files whose writer is gone, and lists whatever else it finds as *unknown* (never removed). The plan says the
bytes it would free; printed, it is the dry run. :meth:`PrunePlan.execute` removes it model by model, each
under that model's lock, checking each file again there: what a process took up or finished since the scan
stays.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from whisperctl.store.cache import Cache
from whisperctl.store.housekeeping import path_size, unlink
from whisperctl.store.layout import (
    LOCK_SUFFIX,
    OWNER_SUFFIX,
    PARTIAL_SUFFIX,
    SIDECAR_SUFFIX,
    STAMP_SUFFIX,
    STATE_DIRNAME,
    temporary_target,
)
from whisperctl.store.locks import lock_unless_busy, probe

__all__ = [
    "STALE_TMP_SECONDS",
    "PruneItem",
    "PruneKind",
    "PrunePlan",
    "PruneReport",
    "PruneStep",
    "scan",
]

STALE_TMP_SECONDS = 3600.0  # a temporary file this old has lost its writer

PruneKind = Literal["partial", "stamp", "lock", "temporary"]
_ORDER: tuple[PruneKind, ...] = ("partial", "temporary", "stamp", "lock")  # a step's lock last


@dataclass(frozen=True)
class PruneItem:
    path: Path
    size_bytes: int
    kind: PruneKind
    reason: str


@dataclass(frozen=True)
class PruneReport:
    """What ``prune`` removed (or would remove, with ``dry_run``), what it left because a process is using it,
    and the files it cannot attribute to a model (never removed)."""

    root: Path
    dry_run: bool
    items: list[PruneItem]
    in_use: list[Path]
    unknown: list[Path]

    @property
    def bytes_freed(self) -> int:
        return sum(i.size_bytes for i in self.items)


@dataclass(frozen=True)
class PruneStep:
    """What goes of one model file, removed under its lock. ``download``: an unfinished download's files,
    for which the lock is taken even where its file is missing (and removed afterwards, while still held)."""

    filename: str
    items: tuple[PruneItem, ...]
    download: bool


@dataclass(frozen=True)
class PrunePlan:
    """What :meth:`execute` will remove, step by step; ``in_use`` and ``unknown`` stay."""

    cache: Cache
    steps: tuple[PruneStep, ...]
    in_use: tuple[Path, ...]
    unknown: tuple[Path, ...]
    now: float

    @property
    def items(self) -> list[PruneItem]:
        return [item for step in self.steps for item in step.items]

    @property
    def bytes_to_free(self) -> int:
        return sum(i.size_bytes for i in self.items)

    def report(self) -> PruneReport:
        """The plan as a dry run's report: what would go, and what would stay."""
        return PruneReport(self.cache.root, True, self.items, list(self.in_use), list(self.unknown))

    def execute(self) -> PruneReport:
        """Remove the plan's files, each model's under its lock, each file only if it is still stale then."""
        report = PruneReport(self.cache.root, False, [], list(self.in_use), list(self.unknown))
        if not self.steps:
            return report
        self.cache.check_state_dirs()  # it removes stamps and locks: never through a link out of the cache
        for step in self.steps:
            with lock_unless_busy(self.cache, step.filename, create=step.download) as holder:
                if holder is not None:  # a process took it up since the scan
                    report.in_use.extend(
                        i.path for i in step.items if i.kind == "partial" and i.path.exists()
                    )
                    continue
                for item in step.items:
                    size = path_size(item.path)
                    if size is not None and self._still_stale(item, step.filename):
                        unlink(item.path)
                        report.items.append(replace(item, size_bytes=size))
                if step.download:  # the lock file this run made to check, removed while still held
                    for path in (self.cache.owner_path(step.filename), self.cache.lock_path(step.filename)):
                        unlink(path)
        return report

    def _still_stale(self, item: PruneItem, filename: str) -> bool:
        if item.kind == "stamp":
            return not self.cache.path_for(filename).exists()
        if item.kind == "temporary":
            return _is_old(item.path, self.now)
        return True  # a partial file or lock, and this process holds the model's lock (or none works here)


def scan(cache: Cache, known: Iterable[str], *, now: float | None = None) -> PrunePlan:
    """Scan the cache for what no model needs; ``known``: the file names of the registry's models (only their
    partial downloads and temporary files are attributable). Nothing is written, not even a lock file."""
    cache.check_readable()
    cache.check_state_dirs()
    scan = _Scan(cache, set(known), time.time() if now is None else now)
    if cache.root.is_dir():
        scan.downloads()
        scan.top_level()
        scan.stamps()
        scan.locks()
    steps = tuple(
        PruneStep(
            filename, tuple(sorted(items, key=lambda i: _ORDER.index(i.kind))), filename in scan.download
        )
        for filename, items in sorted(scan.found.items())
    )
    return PrunePlan(cache, steps, tuple(scan.in_use), tuple(scan.unknown), scan.now)


class _Scan:
    """The findings of one scan, per model file name."""

    def __init__(self, cache: Cache, known: set[str], now: float) -> None:
        self.cache, self.known, self.now = cache, known, now
        self.found: dict[str, list[PruneItem]] = {}
        self.download: set[str] = set()  # models whose partial files (and lock) were looked at under probe
        self.in_use: list[Path] = []
        self.unknown: list[Path] = []

    def add(self, filename: str, path: Path, kind: PruneKind, reason: str) -> None:
        size = path_size(path)
        if size is not None:
            self.found.setdefault(filename, []).append(PruneItem(path, size, kind, reason))

    def temporary(self, filename: str, path: Path) -> None:
        if _is_old(path, self.now):
            self.add(filename, path, "temporary", "a temporary file whose writer is gone")

    def downloads(self) -> None:
        cache = self.cache
        for filename in sorted(self.known):
            partials = [
                p for p in (cache.partial_path(filename), cache.partial_state_path(filename)) if p.exists()
            ]
            if not partials:
                continue
            self.download.add(filename)
            if probe(cache, filename) is not None:
                self.in_use.extend(partials)
                continue
            for path in partials:
                self.add(filename, path, "partial", "an unfinished download that no process is writing")
            for path in (cache.owner_path(filename), cache.lock_path(filename)):
                self.add(filename, path, "lock", "the lock of that download")

    def top_level(self) -> None:
        for path in sorted(self.cache.root.iterdir()):
            name = path.name
            if name == STATE_DIRNAME or name in self.known:
                continue
            if (
                name.removesuffix(PARTIAL_SUFFIX) in self.known
                or name.removesuffix(SIDECAR_SUFFIX) in self.known
            ):
                continue
            target = temporary_target(name)  # of a model's file, or of its sidecar
            model = target.removesuffix(SIDECAR_SUFFIX) if target is not None else None
            if model is not None and model in self.known:
                self.temporary(model, path)  # a fresh one has a writer: kept, and not unknown either
            else:
                self.unknown.append(path)

    def stamps(self) -> None:
        stamps = self.cache.stamps_dir
        for path in sorted(stamps.iterdir()) if stamps.is_dir() else []:
            target = temporary_target(path.name)
            if target is not None:
                self.temporary(target.removesuffix(STAMP_SUFFIX), path)
            elif path.name.endswith(STAMP_SUFFIX) and not path.name.startswith("."):
                filename = path.name.removesuffix(STAMP_SUFFIX)
                if not self.cache.path_for(filename).exists():
                    self.add(filename, path, "stamp", "the stamp of a file that is gone")
            else:
                self.unknown.append(path)

    def locks(self) -> None:
        cache = self.cache
        locks = cache.locks_dir
        for path in sorted(locks.iterdir()) if locks.is_dir() else []:
            filename, dot, suffix = path.name.rpartition(".")
            if f"{dot}{suffix}" not in (LOCK_SUFFIX, OWNER_SUFFIX) or not filename:
                self.unknown.append(path)
            elif filename in self.download:
                continue
            elif path.name.endswith(OWNER_SUFFIX):
                if not cache.lock_path(filename).exists():
                    self.add(filename, path, "lock", "the owner note of a lock that is gone")
            elif probe(cache, filename) is None:
                self.add(
                    filename,
                    cache.owner_path(filename),
                    "lock",
                    "the owner note of a lock that no process holds",
                )
                self.add(filename, path, "lock", "a lock that no process holds")


def _is_old(path: Path, now: float) -> bool:
    try:
        return now - path.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS
    except FileNotFoundError:
        return False

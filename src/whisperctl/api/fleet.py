"""Fleets and CI: manifests, mirror trees that any web server can serve, cache housekeeping, CI cache keys.

A *manifest* is a text file of model names, one a line, with ``#`` comments and blank lines; :func:`freeze`
writes one for what the cache holds, each digest as a comment. :func:`export_mirror` lays verified models out
in the official ``<dir>/<sha256>/<filename>`` layout with a ``SHA256SUMS`` file, so that any static web server
serving the directory, or the bare directory, is a mirror for ``download --mirror``.

Housekeeping never deletes a file it cannot attribute to a model: :func:`remove_models` takes a model's file,
partial file, sidecar, stamp and lock; :func:`prune` takes partial files that no process is writing, stamps of
files that are gone, unheld locks and stale temporary files, and only lists whatever else it finds;
:func:`plan_prune` is its plan (what the dry run prints), which ``execute()`` carries out. The mechanics
(mirror trees, removals, the scan, usage) are the store's: ``whisperctl.store.{mirror,housekeeping,prune}``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from whisperctl.api.manifest import check_cached, parse_manifest, read_manifest, select_cached, select_models
from whisperctl.api.models import PathLike, open_context
from whisperctl.errors import (
    CacheError,
    UnknownModelError,
    UsageError,
)
from whisperctl.models.registry import NAME_PATTERN, Registry, load_registry
from whisperctl.store.cache import LAYOUT_VERSION, Cache, Status
from whisperctl.store.housekeeping import (
    DiskUsage,
    RemovedFile,
    RemoveRecord,
    UsageEntry,
    has_files,
    remove_files,
)
from whisperctl.store.housekeeping import disk_usage as measure_usage
from whisperctl.store.mirror import SUMS_NAME, ExportRecord, ExportReport, export_file, write_sums
from whisperctl.store.prune import PruneItem, PrunePlan, PruneReport, scan
from whisperctl.store.verify import verify_models

__all__ = [
    "KEY_PREFIX",
    "SUMS_NAME",
    "CacheKey",
    "DiskUsage",
    "ExportRecord",
    "ExportReport",
    "Freeze",
    "FrozenModel",
    "PruneItem",
    "PrunePlan",
    "PruneReport",
    "RemoveRecord",
    "RemoveReport",
    "RemovedFile",
    "UsageEntry",
    "cache_key",
    "disk_usage",
    "export_mirror",
    "format_manifest",
    "freeze",
    "parse_manifest",
    "plan_prune",
    "prune",
    "read_manifest",
    "remove_models",
]

KEY_PREFIX = "whisper"


# -- freeze --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrozenModel:
    """A model whose file in the cache is verified."""

    name: str
    filename: str
    sha256: str
    size_bytes: int
    path: Path


@dataclass(frozen=True)
class Freeze:
    """The verified models of a cache, and those whose file failed verification (left out)."""

    models: list[FrozenModel]
    corrupt: list[str]


def freeze(
    *, cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None, jobs: int = 4
) -> Freeze:
    """The cached, verified models; files never hashed (openai-whisper's) are hashed and stamped first."""
    reg, cache = open_context(cache_dir, registry)
    entries = [cache.entry(spec) for spec in reg]
    unhashed = [e.spec for e in entries if e.status == "present"]
    hashed = {r.name: r.status for r in verify_models(unhashed, cache, jobs=jobs)} if unhashed else {}
    models, corrupt = [], []
    for e in entries:
        status = hashed.get(e.spec.name, e.status)
        if status is Status.VERIFIED:
            size = e.size_on_disk if e.size_on_disk is not None else e.path.stat().st_size
            models.append(FrozenModel(e.spec.name, e.spec.filename, e.spec.sha256, size, e.path))
        elif status is Status.CORRUPT:
            corrupt.append(e.spec.name)
    return Freeze(models, corrupt)


def format_manifest(models: Sequence[FrozenModel]) -> str:
    """A manifest of ``models``, digests and sizes as comments; no paths, no dates, so that it diffs well."""
    width = max((len(m.name) for m in models), default=0)
    lines = [
        "# whisperctl freeze: the verified models of a cache, with their SHA-256 and size as comments.",
        "# `whisperctl download -r FILE` fetches them; `whisperctl cache-key -r FILE` keys a CI cache.",
    ]
    lines += [f"{m.name:<{width}}  # sha256:{m.sha256} {m.size_bytes} bytes" for m in models]
    return "\n".join(lines) + "\n"


# -- export --------------------------------------------------------------------------------------------------
def export_mirror(
    dest: PathLike,
    names: Sequence[str] = (),
    *,
    manifest: PathLike | None = None,
    all_cached: bool = False,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
) -> ExportReport:
    """Write cached models to ``dest`` in the official layout ``<dest>/<sha256>/<filename>`` + ``SHA256SUMS``.

    Each file is a hard link to the cached one where the filesystem allows, else a copy, and reaches its name
    only after its SHA-256 matched. Every model must be cached first (:class:`NotCachedError` otherwise,
    raised before anything is written). ``manifest`` adds the models of a manifest file to ``names``.
    ``SHA256SUMS`` keeps the lines of earlier exports whose files remain,
    so that a tree can be filled model by model; ``sha256sum -c SHA256SUMS`` checks it.
    """
    reg, cache = open_context(cache_dir, registry)
    specs = select_cached(reg, cache, names, manifest=manifest, all_cached=all_cached, verb="export")
    entries = [cache.entry(spec) for spec in specs]
    check_cached(entries, verified_only=False)
    root = Path(dest).expanduser().absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"{root}: cannot create the export directory ({exc.strerror or exc}); check its permissions"
        ) from exc
    records: list[ExportRecord] = []
    try:
        for e in entries:
            stamp = e.stamp if e.status is Status.VERIFIED else None
            records.append(export_file(e.spec, e.path, stamp, root))
    finally:
        sums = write_sums(root, records)
    return ExportReport(root, sums, records)


# -- rm and prune --------------------------------------------------------------------------------------------
def _cache_file_name(reg: Registry, cache: Cache, name: str) -> str:
    """The file name in the cache that ``name`` means: a model's, or a file asked for by its own name."""
    try:
        return reg.get(name).filename
    except UnknownModelError:
        for candidate in (name, f"{name}.pt"):
            plain = NAME_PATTERN.fullmatch(candidate) and ".." not in candidate
            if plain and has_files(cache, candidate):
                return candidate
        raise


@dataclass(frozen=True)
class RemoveReport:
    """What ``rm`` removed, one record per name."""

    models: list[RemoveRecord]

    @property
    def bytes_freed(self) -> int:
        return sum(r.bytes_freed for r in self.models)


def remove_models(
    names: Sequence[str], *, cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None
) -> RemoveReport:
    """Remove models from the cache: file, partial file, sidecar, stamp and lock; one record per name.

    A name that is not in the registry may name a file in the cache itself (``old`` or ``old.pt``), so
    that files of models dropped from the registry can go too. Every name is checked, and every model's lock
    taken, before anything is removed: a model that another process is downloading is a
    :class:`CacheError` (exit 6), and nothing is removed then.
    """
    reg, cache = open_context(cache_dir, registry)
    cache.check_readable()
    return RemoveReport(remove_files(cache, [_cache_file_name(reg, cache, name) for name in names]))


def plan_prune(
    *,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
    now: float | None = None,
) -> PrunePlan:
    """What :func:`prune` would remove, and what it would leave (in use, or not attributable to a model);
    scanning writes nothing. ``plan.execute()`` removes it, checking each file again under its model's
    lock."""
    reg, cache = open_context(cache_dir, registry)
    return scan(cache, (spec.filename for spec in reg), now=now)


def prune(
    *,
    dry_run: bool = False,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
    now: float | None = None,
) -> PruneReport:
    """Remove what no model needs: partial files that no process is writing (with their sidecars), stamps of
    files that are gone, locks that no process holds, and temporary files whose writer is gone (an hour old).

    Model files are never removed (that is :func:`remove_models`), nor files that cannot be attributed to a
    model: those are listed in ``unknown``. ``dry_run`` reports the same without removing anything.
    """
    plan = plan_prune(cache_dir=cache_dir, registry=registry, now=now)
    return plan.report() if dry_run else plan.execute()


# -- du ------------------------------------------------------------------------------------------------------
def disk_usage(
    *, cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None
) -> DiskUsage:
    """Bytes used in the cache (apparent sizes; a partial file counts its full preallocated size)."""
    reg, cache = open_context(cache_dir, registry)
    return measure_usage(cache, reg)


# -- CI cache keys -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheKey:
    """``whisper-<layout>-<16 hex>``: the first 16 hex digits of the SHA-256 of the sorted lines
    ``"<name> <sha256>\\n"`` of the models (aliases resolved), behind the cache layout version."""

    key: str
    layout: int
    models: list[tuple[str, str]]


def cache_key(
    names: Sequence[str] = (),
    *,
    manifest: PathLike | None = None,
    registry: Registry | PathLike | None = None,
) -> CacheKey:
    """A short key that changes exactly when a model's digest (or whisperctl's cache layout) changes.

    It depends on no path, host name or order, so every machine computes the same key for the same models:
    ``printf 'tiny 6514...\\n' | sha256sum | cut -c1-16`` gives its hex part. ``manifest`` adds the models
    of a manifest file to ``names``.
    """
    if not names and manifest is None:
        raise UsageError("cache-key: name at least one model, or give a manifest with -r")
    reg = registry if isinstance(registry, Registry) else load_registry(registry)
    models = sorted((spec.name, spec.sha256) for spec in select_models(reg, names, manifest=manifest))
    text = "".join(f"{name} {digest}\n" for name, digest in models)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return CacheKey(f"{KEY_PREFIX}-{LAYOUT_VERSION}-{digest}", LAYOUT_VERSION, models)

"""Fleets and CI: manifests, mirror trees that any web server can serve, cache housekeeping, CI cache keys.

A *manifest* is a text file of model names, one a line, with ``#`` comments and blank lines; :func:`freeze`
writes one for what the cache holds, each digest as a comment. :func:`export_mirror` lays verified models out
in the official ``<dir>/<sha256>/<filename>`` layout with a ``SHA256SUMS`` file, so that any static web server
serving the directory, or the bare directory, is a mirror for ``download --mirror``.

Housekeeping never deletes a file it cannot attribute to a model: :func:`remove_models` takes a model's file,
partial file, sidecar, stamp and lock; :func:`prune` takes partial files that no process is writing, stamps of
files that are gone, unheld locks and stale temporary files, and only lists whatever else it finds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from whisperctl.api.manifest import parse_manifest, read_manifest, select_models
from whisperctl.api.models import PathLike, open_context
from whisperctl.errors import (
    CacheError,
    IntegrityError,
    NotCachedError,
    UnknownModelError,
    UsageError,
)
from whisperctl.models.registry import NAME_PATTERN, ModelSpec, Registry, load_registry
from whisperctl.store.cache import (
    LAYOUT_VERSION,
    STATE_DIRNAME,
    Cache,
    Stamp,
    Status,
    atomic_write_text,
    fsync_dir,
    new_file_mode,
)
from whisperctl.store.hashing import copy_hashing, sha256_file
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
    "prune",
    "read_manifest",
    "remove_models",
]

SUMS_NAME = "SHA256SUMS"
KEY_PREFIX = "whisper"
STALE_TMP_SECONDS = 3600.0  # a temporary file this old has lost its writer
_TMP = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{12}\.tmp$")  # atomic_write_text's and _finalize's names
_SUMS_LINE = re.compile(r"^(?P<digest>[0-9a-f]{64}) [ *](?P<path>[0-9a-f]{64}/[^/]+)$")


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
    if all_cached:
        specs = [e.spec for e in (cache.entry(s) for s in reg) if e.exists and e.status != "corrupt"]
        if not specs:
            raise NotCachedError(
                f"{cache.root}: no model in the cache to export; run `whisperctl download` first"
            )
    elif names or manifest is not None:
        specs = select_models(reg, names, manifest=manifest)
    else:
        raise UsageError("export: name at least one model, or use --all-cached or -r FILE")
    entries = [cache.entry(spec) for spec in specs]
    for e in entries:
        if e.status in ("missing", "partial"):
            raise NotCachedError(
                f"{e.spec.name}: not in the cache ({e.path}); run `whisperctl download {e.spec.name}` first"
            )
        if e.status == "corrupt":
            raise IntegrityError(
                f"{e.spec.name}: {e.path} failed verification; run `whisperctl verify --repair "
                f"{e.spec.name}` first"
            )
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
            records.append(_export_one(e.spec, e.path, e.stamp if e.status == "verified" else None, root))
    finally:
        sums = _write_sums(root, records)
    return ExportReport(root, sums, records)


def _export_one(spec: ModelSpec, source: Path, stamp: Stamp | None, root: Path) -> ExportRecord:
    """``stamp``: the cached file's, when it said verified; a file that is still the one it describes (same
    device, inode, size and mtime) is not read again."""
    target = root / spec.sha256 / spec.filename
    src = source.stat()

    def stamped(st: os.stat_result) -> bool:
        return stamp is not None and (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
            src.st_dev,
            stamp.inode,
            stamp.size,
            stamp.mtime_ns,
        )

    def record(method: ExportMethod) -> ExportRecord:
        return ExportRecord(spec.name, spec.sha256, src.st_size, target, method)

    try:
        target.parent.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(target, follow_symlinks=False)
            if stamped(st):
                return record("present")  # the cached file itself, and its stamp says verified
            if stat.S_ISREG(st.st_mode) and st.st_size == src.st_size and sha256_file(target) == spec.sha256:
                return record("present")
        tmp = target.parent / f".{spec.filename}.{secrets.token_hex(6)}.tmp"
        try:
            method: ExportMethod = "linked"
            try:
                os.link(source, tmp)
            except OSError:  # another filesystem, FAT/exFAT, no hard links: copy
                method = "copied"
                digest = _copy_hashing(source, tmp)
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
            fsync_dir(target.parent)
    except OSError as exc:
        raise CacheError(
            f"{target}: cannot write the export ({exc.strerror or exc}); check the destination's permissions "
            "and free space"
        ) from exc
    return record(method)


def _copy_hashing(source: Path, dest: Path) -> str:
    """Copy ``source`` to a new file ``dest`` (fsynced), hashing the bytes written; their SHA-256."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with open(source, "rb", buffering=0) as src, os.fdopen(os.open(dest, flags, 0o666), "wb") as out:
        digest, _ = copy_hashing(src.fileno(), out.fileno())
        os.fsync(out.fileno())
    return digest


def _write_sums(root: Path, records: Sequence[ExportRecord]) -> Path:
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


# -- rm and prune --------------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class RemoveReport:
    """What ``rm`` removed, one record per name."""

    models: list[RemoveRecord]

    @property
    def bytes_freed(self) -> int:
        return sum(r.bytes_freed for r in self.models)


def _files_of(cache: Cache, filename: str) -> list[Path]:
    """Every path whisperctl may keep for a model file, the lock last."""
    return [
        cache.path_for(filename),
        cache.partial_path(filename),
        cache.partial_state_path(filename),
        cache.stamp_path(filename),
        cache.owner_path(filename),
        cache.lock_path(filename),
    ]


@contextlib.contextmanager
def _unless_locked(cache: Cache, filename: str, *, create: bool = True) -> Iterator[str | None]:
    """Hold a model's lock while the body runs; yields None, or who holds it when another process does.

    Where locks do not work the body runs without one: a download that loses its partial file to it still
    finishes from its open descriptor, and the digest decides what reaches a final name.
    """
    import filelock

    path = cache.lock_path(filename)
    lock: filelock.BaseFileLock | None = None
    holder: str | None = None
    if create or path.exists():  # nobody can hold a lock whose file does not exist
        lock = filelock.FileLock(str(path), mode=new_file_mode())
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            lock, holder = None, cache.lock_holder(filename)
        except (OSError, NotImplementedError):
            lock = None
    try:
        yield holder
    finally:
        if lock is not None:
            lock.release()


def _size(path: Path) -> int | None:
    try:
        return os.stat(path, follow_symlinks=False).st_size
    except FileNotFoundError:
        return None


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise CacheError(f"{path}: cannot remove ({exc.strerror or exc}); check its permissions") from exc


def _cache_file_name(reg: Registry, cache: Cache, name: str) -> str:
    """The file name in the cache that ``name`` means: a model's, or a file asked for by its own name."""
    try:
        return reg.get(name).filename
    except UnknownModelError:
        for candidate in (name, f"{name}.pt"):
            plain = NAME_PATTERN.fullmatch(candidate) and ".." not in candidate
            if plain and any(p.exists() for p in _files_of(cache, candidate)[:4]):
                return candidate
        raise


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
    cache.check_state_dirs()  # stamps and locks are removed too: never through a link out of the cache
    targets = list(dict.fromkeys(_cache_file_name(reg, cache, name) for name in names))
    records = []
    # What there is to report, looked at before the locks are taken (taking one may create its file).
    found = {
        filename: [(path, size) for path in _files_of(cache, filename) if (size := _size(path)) is not None]
        for filename in targets
    }
    with contextlib.ExitStack() as held:
        # Every lock first (none is waited for), so that a model being downloaded leaves all untouched.
        for filename in targets:
            holder = held.enter_context(_unless_locked(cache, filename, create=cache.root.is_dir()))
            if holder is not None:
                raise CacheError(
                    f"{filename}: {holder} is downloading it; nothing was removed: let it finish, then run "
                    "`whisperctl rm` again"
                )
        for filename in targets:
            for path in _files_of(cache, filename):  # the lock last, and while it is still held
                _unlink(path)
            removed = [RemovedFile(path, size) for path, size in found[filename]]
            records.append(RemoveRecord(filename.removesuffix(".pt"), removed))
    return RemoveReport(records)


PruneKind = Literal["partial", "stamp", "lock", "temporary"]


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
    reg, cache = open_context(cache_dir, registry)
    cache.check_readable()
    cache.check_state_dirs()  # it removes stamps and locks: never through a link out of the cache
    report = PruneReport(cache.root, dry_run, [], [], [])
    if not cache.root.is_dir():
        return report
    clock = time.time() if now is None else now
    known = {spec.filename for spec in reg}
    handled: set[str] = set()  # models whose partial files (and lock) were dealt with under their lock

    def take(path: Path, kind: PruneKind, reason: str) -> None:
        size = _size(path)
        if size is not None:
            if not dry_run:
                _unlink(path)
            report.items.append(PruneItem(path, size, kind, reason))

    def stale_tmp(path: Path, targets: set[str] | None) -> bool:
        m = _TMP.fullmatch(path.name)
        if m is None or (targets is not None and m["target"] not in targets):
            return False
        size = _size(path)
        if size is not None and clock - path.stat().st_mtime > STALE_TMP_SECONDS:
            take(path, "temporary", "a temporary file whose writer is gone")
        return True

    for filename in sorted(known):
        partials = [cache.partial_path(filename), cache.partial_state_path(filename)]
        if not any(p.exists() for p in partials):
            continue
        lock_files = [cache.owner_path(filename), cache.lock_path(filename)]
        had_lock = [p for p in lock_files if p.exists()]
        with _unless_locked(cache, filename, create=not dry_run) as holder:
            handled.add(filename)
            if holder is not None:
                report.in_use.extend(p for p in partials if p.exists())
                continue
            for path in partials:
                take(path, "partial", "an unfinished download that no process is writing")
            for path in had_lock:
                take(path, "lock", "the lock of that download")
            if not dry_run:  # the lock file this run made to check, removed while still held
                for path in lock_files:
                    _unlink(path)

    for path in sorted(cache.root.iterdir()):
        name = path.name
        if name == STATE_DIRNAME or name in known:
            continue
        if name.removesuffix(".part") in known or name.removesuffix(".part.json") in known:
            continue
        if not stale_tmp(path, known | {f"{filename}.part.json" for filename in known}):  # and sidecars
            report.unknown.append(path)

    stamps, locks = cache.state_dir / "stamps", cache.state_dir / "locks"
    for path in sorted(stamps.iterdir()) if stamps.is_dir() else []:
        if stale_tmp(path, None):
            continue
        if path.name.endswith(".json") and not path.name.startswith("."):
            if not (cache.root / path.name[:-5]).exists():
                take(path, "stamp", "the stamp of a file that is gone")
            continue
        report.unknown.append(path)
    for path in sorted(locks.iterdir()) if locks.is_dir() else []:
        filename, _, suffix = path.name.rpartition(".")
        if suffix not in ("lock", "owner") or not filename:
            report.unknown.append(path)
        elif filename in handled:
            continue
        elif suffix == "owner":
            if not cache.lock_path(filename).exists():
                take(path, "lock", "the owner note of a lock that is gone")
        else:
            with _unless_locked(cache, filename, create=False) as holder:
                if holder is None:
                    take(cache.owner_path(filename), "lock", "the owner note of a lock that no process holds")
                    take(path, "lock", "a lock that no process holds")
    return report


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


def disk_usage(
    *, cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None
) -> DiskUsage:
    """Bytes used in the cache (apparent sizes; a partial file counts its full preallocated size)."""
    reg, cache = open_context(cache_dir, registry)
    cache.check_readable()
    models = []
    attributed = {STATE_DIRNAME}
    for spec in reg:
        entry = cache.entry(spec)
        part = sum(_size(p) or 0 for p in (cache.partial_path(spec), cache.partial_state_path(spec)))
        attributed.update({spec.filename, f"{spec.filename}.part", f"{spec.filename}.part.json"})
        if entry.size_on_disk is not None or part:
            models.append(UsageEntry(spec.name, spec.filename, entry.status, entry.size_on_disk or 0, part))
    state = 0
    for dirpath, _dirs, files in os.walk(cache.state_dir):
        state += sum(_size(Path(dirpath, f)) or 0 for f in files)
    unknown = []
    if cache.root.is_dir():
        for path in sorted(cache.root.iterdir()):
            if path.name not in attributed and path.is_file():
                unknown.append((path, path.stat().st_size))
    return DiskUsage(cache.root, models, state, unknown)


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

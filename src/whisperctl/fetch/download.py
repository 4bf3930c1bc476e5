"""Downloading models into the cache: sources, locks, verification, the final rename.

For each model: a file whose stamp says *verified* costs nothing; a file already there but never hashed
(openai-whisper's, say) is hashed once and stamped; otherwise the model is fetched from the mirrors in order,
then from its official URL, under a per-model lock so that concurrent processes download it once.

"The lock is for efficiency, the hash is for correctness": whatever the locks did, a file reaches its final
name only by ``os.replace`` after its SHA-256 matched and its data was fsynced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import httpx

from whisperctl.errors import (
    CacheError,
    ExitCode,
    IntegrityError,
    NetworkError,
    NotCachedError,
    UsageError,
    WhisperctlError,
    quoted,
)
from whisperctl.fetch.http.client import make_client
from whisperctl.fetch.transfer import TransferOptions, fetch_url
from whisperctl.models.registry import ModelSpec
from whisperctl.store.cache import Cache
from whisperctl.store.files import create_partial, write_error
from whisperctl.store.hashing import copy_hashing, sha256_file
from whisperctl.store.locks import model_lock
from whisperctl.store.place import place_verified, remove_stale_temporaries, stale_temporaries

__all__ = [
    "MIRROR_ENV",
    "OFFLINE_ENV",
    "DownloadProgress",
    "DownloadRecord",
    "DownloadStatus",
    "Mirror",
    "download_models",
    "env_offline",
    "parse_mirrors",
]

MIRROR_ENV = "WHISPERCTL_MIRROR"
OFFLINE_ENV = "WHISPERCTL_OFFLINE"


class DownloadStatus(str, Enum):
    """What ``download`` did for a model; its file is ``verified`` after the first two."""

    DOWNLOADED = "downloaded"  # fetched (or copied from a mirror directory), its digest matched
    CACHED = "cached"  # already in the cache and verified: no transfer
    FAILED = "failed"  # see the record's ``error`` and ``exit_code``

    def __str__(self) -> str:  # the word, on every Python (3.10's f-strings and 3.11's str() differ)
        return self.value


@dataclass(frozen=True)
class DownloadRecord:
    """What happened to one model."""

    name: str
    path: Path
    sha256: str | None  # the digest measured (equal to the registry's unless failed)
    size_bytes: int | None
    status: DownloadStatus
    seconds: float
    source: str | None  # the URL, mirror directory or "cache"
    error: str | None = None
    exit_code: ExitCode = ExitCode.OK
    resumed_from: int = 0
    warnings: tuple[str, ...] = ()  # what went wrong on the way without failing it (a mirror skipped, say)

    @property
    def ok(self) -> bool:
        return self.status is not DownloadStatus.FAILED


class DownloadProgress(Protocol):
    """Progress of a whole run; ``output.py`` implements it with rich."""

    def start(self, name: str, total: int | None, completed: int) -> None: ...

    def advance(self, name: str, nbytes: int) -> None: ...

    def note(self, name: str, message: str) -> None: ...

    def finish(self, record: DownloadRecord) -> None: ...


@dataclass(frozen=True)
class Mirror:
    """A base URL or a local directory laid out as ``<base>/<sha256>/<filename>``."""

    location: str
    directory: Path | None = None

    def locate(self, spec: ModelSpec) -> str:
        if self.directory is not None:
            return str(self.directory / spec.sha256 / spec.filename)
        return f"{self.location.rstrip('/')}/{spec.sha256}/{spec.filename}"


def parse_mirrors(values: Sequence[str]) -> tuple[Mirror, ...]:
    """Mirrors from ``--mirror`` values or ``$WHISPERCTL_MIRROR`` (each may hold a comma-separated list)."""
    mirrors = []
    for value in values:
        for item in (v.strip() for v in value.split(",")):
            if not item:
                continue
            try:
                scheme = urlsplit(item).scheme.lower()
            except ValueError as exc:  # "http://[::1": an unclosed IPv6 bracket
                raise UsageError(
                    f"mirror {quoted(item)}: not a URL ({exc}); give an http(s) URL or a directory"
                ) from None
            if scheme in ("http", "https"):
                mirrors.append(Mirror(item))
            elif scheme == "file":
                mirrors.append(Mirror(item, Path(unquote(urlsplit(item).path))))
            elif scheme and len(scheme) > 1:  # "c:" is a Windows drive, not a scheme
                raise UsageError(
                    f"mirror {item!r}: unsupported scheme {scheme!r}; use http(s)://, file:// or a path"
                )
            else:
                path = Path(item).expanduser()
                if not path.is_dir():
                    raise UsageError(
                        f"mirror {item!r}: not a directory; give an http(s) URL or the path of a mirror tree"
                    )
                mirrors.append(Mirror(item, path.absolute()))
    return tuple(mirrors)


def env_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class _NamedProgress:
    """Binds a model name to the engine's per-transfer progress calls."""

    def __init__(self, progress: DownloadProgress | None, name: str) -> None:
        self.progress = progress
        self.name = name

    def start(self, total: int | None, completed: int) -> None:
        if self.progress is not None:
            self.progress.start(self.name, total, completed)

    def advance(self, nbytes: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.name, nbytes)


@dataclass
class _Run:
    cache: Cache
    client: httpx.AsyncClient | None
    mirrors: tuple[Mirror, ...]
    offline: bool
    force: bool
    options: TransferOptions
    progress: DownloadProgress | None
    lock_poll: float = 0.25


async def _hash_existing(run: _Run, spec: ModelSpec, path: Path) -> str | None:
    """Hash a file found in place (e.g. left by openai-whisper) and stamp it; its digest, or None if gone."""
    named = _NamedProgress(run.progress, spec.name)
    try:
        st = path.stat()
        named.start(st.st_size, 0)
        loop = asyncio.get_running_loop()

        def advance(n: int) -> None:
            loop.call_soon_threadsafe(named.advance, n)

        digest = await asyncio.to_thread(sha256_file, path, on_bytes=advance)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"{path}: cannot read the cached file ({exc.strerror or exc})") from exc
    if path.stat().st_mtime_ns == st.st_mtime_ns:
        # A read-only cache still serves its files: the stamp only spares the next run this hashing.
        with contextlib.suppress(OSError):
            run.cache.write_stamp(spec, st, digest)
    return digest


def _lock(run: _Run, spec: ModelSpec) -> contextlib.AbstractAsyncContextManager[bool]:
    """The model's lock (see :func:`model_lock`), its waits and its absence said as notes."""

    def note(message: str) -> None:
        if run.progress is not None:
            run.progress.note(spec.name, message)

    return model_lock(
        run.cache,
        spec,
        poll=run.lock_poll,
        on_wait=lambda who: note(f"waiting for {who}, which is downloading it"),
        on_unlockable=note,
    )


async def _copy_from_directory(
    run: _Run, spec: ModelSpec, source: Path, part: Path, state: Path
) -> tuple[str, int, int]:
    """Copy a file from a local mirror tree into ``part``, hashing as it goes.

    Returns (digest, size, descriptor of the partial file, left open for :func:`place_verified`).
    """
    named = _NamedProgress(run.progress, spec.name)
    loop = asyncio.get_running_loop()

    def copy() -> tuple[str, int, int]:
        try:
            src = open(source, "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NetworkError(f"{source}: not in the mirror directory") from None
        except OSError as exc:
            raise NetworkError(f"{source}: cannot read the mirror ({exc.strerror or exc})") from exc
        with src:
            size = os.fstat(src.fileno()).st_size
            if spec.size_bytes is not None and size != spec.size_bytes:
                raise IntegrityError(
                    f"{source}: {size:,} bytes, expected {spec.size_bytes:,}; the mirror holds another file"
                )
            fd = create_partial(part, state, size)
            try:
                loop.call_soon_threadsafe(named.start, size, 0)
                digest, copied = copy_hashing(
                    src.fileno(), fd, on_bytes=lambda n: loop.call_soon_threadsafe(named.advance, n)
                )
                os.fsync(fd)
            except OSError as exc:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                raise write_error(exc, part) from exc
            except BaseException:
                os.close(fd)
                raise
        return digest, copied, fd

    return await asyncio.to_thread(copy)


def _sources(run: _Run, spec: ModelSpec) -> list[tuple[str, Path | None]]:
    found: list[tuple[str, Path | None]] = []
    for mirror in run.mirrors:
        found.append((mirror.locate(spec), Path(mirror.locate(spec)) if mirror.directory else None))
    if not run.offline:
        found.append((spec.url, None))
    return found


async def _fetch(run: _Run, spec: ModelSpec, warn: Callable[[str], None]) -> tuple[str, str, int, int, int]:
    """Try each source in turn: (source, digest, size, resumed_from, open descriptor) of the first that gives
    the file; each source that failed before it is passed to ``warn``."""
    cache = run.cache
    part, state = cache.partial_path(spec), cache.partial_state_path(spec)
    failures: list[tuple[str, WhisperctlError]] = []
    for location, directory in _sources(run, spec):
        try:
            if directory is not None:
                digest, size, fd = await _copy_from_directory(run, spec, directory, part, state)
                resumed = 0
            else:
                if run.client is None:  # pragma: no cover - offline runs never get here
                    raise NetworkError("no HTTP client")
                result = await fetch_url(
                    run.client,
                    location,
                    part,
                    state,
                    expected_sha256=spec.sha256,
                    expected_size=spec.size_bytes,
                    options=run.options,
                    progress=_NamedProgress(run.progress, spec.name),
                )
                digest, size, resumed, fd = result.sha256, result.size, result.resumed_from, result.fd
            if digest != spec.sha256:
                os.close(fd)
                for path in (part, state):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                raise IntegrityError(
                    f"{spec.filename}: SHA-256 mismatch from {location} (expected {spec.sha256}, "
                    f"got {digest}); the partial file was removed; run `whisperctl download {spec.name}` "
                    "again or check the mirror"
                )
            return location, digest, size, resumed, fd
        except (NetworkError, IntegrityError) as exc:
            failures.append((location, exc))
            if len(failures) < len(_sources(run, spec)):
                warn(f"{exc}; trying the next source")
    if len(failures) == 1:
        raise failures[0][1]
    last = failures[-1][1]
    detail = "; ".join(str(exc) for _, exc in failures)
    error = type(last)(f"{spec.name}: every source failed: {detail}")
    raise error


async def _download_one(run: _Run, spec: ModelSpec) -> DownloadRecord:
    t0 = time.monotonic()
    cache = run.cache
    final = cache.path_for(spec)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        if run.progress is not None:
            run.progress.note(spec.name, message)

    def record(
        status: DownloadStatus, source: str | None, digest: str | None, resumed: int = 0
    ) -> DownloadRecord:
        size = final.stat().st_size if final.exists() else None
        return DownloadRecord(
            spec.name,
            final,
            digest,
            size,
            status,
            round(time.monotonic() - t0, 3),
            source,
            resumed_from=resumed,
            warnings=tuple(warnings),
        )

    async def cached(locked: bool, *, before_lock: bool = False) -> DownloadRecord | None:
        entry = cache.entry(spec)
        if entry.status != "verified" and not (
            entry.status == "present" and await _hash_existing(run, spec, final) == spec.sha256
        ):
            return None
        # A partial download left next to a good file (a run killed after its rename, or a --force run
        # cut short) is of no use any more: remove it, but only under the lock, where no other process
        # is writing it.
        leftovers = [p for p in (cache.partial_path(spec), cache.partial_state_path(spec)) if p.exists()]
        leftovers += stale_temporaries(cache, spec)  # (a run killed between its two renames)
        if leftovers and before_lock:
            return None  # take the lock, then look again
        if locked:  # without the lock (none can be taken here), they stay: the file is good all the same
            for path in leftovers:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return record(DownloadStatus.CACHED, "cache", spec.sha256)

    cache.ensure()
    if not run.force and (done := await cached(locked=False, before_lock=True)) is not None:
        return done
    offline_hint = (
        f"{spec.name}: not in the cache ({final}) and offline mode is on; run `whisperctl download "
        f"{spec.name}` with network access, or give a --mirror directory that holds it"
    )
    if run.offline and not run.mirrors:
        raise NotCachedError(offline_hint)
    async with _lock(run, spec) as locked:
        if locked:
            remove_stale_temporaries(cache, spec)
        # Another process may have finished it while this one waited for the lock.
        if not run.force and (done := await cached(locked=locked)) is not None:
            return done
        try:
            source, digest, _size, resumed, fd = await _fetch(run, spec, warn)
        except NetworkError as exc:
            if run.offline:  # only directory mirrors were tried, and none holds it
                raise NotCachedError(f"{offline_hint} ({exc})") from exc
            raise
        try:
            warning = await asyncio.to_thread(place_verified, cache, spec, digest, fd)
        finally:
            os.close(fd)
        if warning is not None:
            warn(warning)
        return record(DownloadStatus.DOWNLOADED, source, digest, resumed)


def _offline_mirrors_only(mirrors: tuple[Mirror, ...]) -> tuple[Mirror, ...]:
    return tuple(m for m in mirrors if m.directory is not None)


async def download_models(
    specs: Sequence[ModelSpec],
    cache: Cache,
    *,
    mirrors: tuple[Mirror, ...] = (),
    offline: bool = False,
    force: bool = False,
    jobs: int = 4,
    options: TransferOptions | None = None,
    progress: DownloadProgress | None = None,
    client: httpx.AsyncClient | None = None,
) -> list[DownloadRecord]:
    """Download several models at once (``jobs`` at a time); one record per model, failures included.

    Offline, only the cache and local mirror directories are used: a model found in neither fails with exit
    code 5 without touching the network.
    """
    if jobs < 1:
        raise UsageError(f"--jobs {jobs}: must be at least 1")
    options = options or TransferOptions()
    if options.connections < 1:
        raise UsageError(f"--connections {options.connections}: must be at least 1")
    own_client = client is None and not offline
    if own_client:
        client = make_client(options, max_connections=jobs * options.connections + jobs)
    run = _Run(
        cache=cache,
        client=client,
        mirrors=_offline_mirrors_only(mirrors) if offline else mirrors,
        offline=offline,
        force=force,
        options=options,
        progress=progress,
    )
    semaphore = asyncio.Semaphore(jobs)

    async def one(spec: ModelSpec) -> DownloadRecord:
        t0 = time.monotonic()
        async with semaphore:
            try:
                rec = await _download_one(run, spec)
            except WhisperctlError as exc:
                rec = DownloadRecord(
                    spec.name,
                    cache.path_for(spec),
                    None,
                    None,
                    DownloadStatus.FAILED,
                    round(time.monotonic() - t0, 3),
                    None,
                    error=str(exc),
                    exit_code=exc.exit_code,
                )
        if progress is not None:
            progress.finish(rec)
        return rec

    try:
        return list(await asyncio.gather(*(one(spec) for spec in specs)))
    finally:
        if own_client and client is not None:
            await client.aclose()

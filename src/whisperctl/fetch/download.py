"""Downloading models into the cache: the decision, the sources in order, the lock, the final rename.

For each model, :func:`.decision.decide` says what to do from what is on disk and what is asked: a file whose
stamp says *verified* costs nothing; a file already there but never hashed (openai-whisper's) is hashed once
and stamped; otherwise the model is fetched from its sources in order (the mirrors, then its official URL,
see :mod:`.sources`), under a per-model lock so that concurrent processes download it once.

"The lock is for efficiency, the hash is for correctness": whatever the locks did, a file reaches its final
name only by ``os.replace`` after its SHA-256 matched and its data was fsynced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Protocol

import httpx

from whisperctl.errors import (
    CacheError,
    ExitCode,
    IntegrityError,
    NetworkError,
    NotCachedError,
    UsageError,
    WhisperctlError,
)
from whisperctl.fetch.decision import Action, Ask, Decision, FileState, OnDisk, decide
from whisperctl.fetch.http.client import make_client
from whisperctl.fetch.sources import (
    MIRROR_ENV,
    Fetched,
    Mirror,
    Network,
    OfficialSource,
    Request,
    Source,
    parse_mirrors,
)
from whisperctl.fetch.transfer import TransferOptions
from whisperctl.models.registry import ModelSpec
from whisperctl.store.cache import Cache
from whisperctl.store.hashing import sha256_file
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
    """Progress of a whole run; the CLI implements it with rich."""

    def start(self, name: str, total: int | None, completed: int) -> None: ...

    def advance(self, name: str, nbytes: int) -> None: ...

    def note(self, name: str, message: str) -> None: ...

    def finish(self, record: DownloadRecord) -> None: ...


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


@dataclass(frozen=True)
class _Run:
    """What the model lock and the final rename need: the cache and whom to tell."""

    cache: Cache
    progress: DownloadProgress | None
    lock_poll: float = 0.25


@dataclass
class _Outcome:
    """One model's download as it goes: the warnings met on the way, for its record."""

    spec: ModelSpec
    path: Path
    progress: DownloadProgress | None
    t0: float = field(default_factory=time.monotonic)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.progress is not None:
            self.progress.note(self.spec.name, message)

    def record(
        self, status: DownloadStatus, source: str | None, digest: str | None, resumed: int = 0
    ) -> DownloadRecord:
        size = self.path.stat().st_size if self.path.exists() else None
        return DownloadRecord(
            self.spec.name,
            self.path,
            digest,
            size,
            status,
            round(time.monotonic() - self.t0, 3),
            source,
            resumed_from=resumed,
            warnings=tuple(self.warnings),
        )


async def _hash_existing(cache: Cache, spec: ModelSpec, progress: DownloadProgress | None) -> str | None:
    """Hash a file found in place (e.g. left by openai-whisper) and stamp it; its digest, or None if gone."""
    path = cache.path_for(spec)
    named = _NamedProgress(progress, spec.name)
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
            cache.write_stamp(spec, st, digest)
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


def _leftovers(cache: Cache, spec: ModelSpec) -> list[Path]:
    found = [p for p in (cache.partial_path(spec), cache.partial_state_path(spec)) if p.exists()]
    return found + stale_temporaries(cache, spec)  # (a run killed between its two renames)


def _on_disk(cache: Cache, spec: ModelSpec) -> OnDisk:
    status = cache.entry(spec).status
    file: FileState = "verified" if status == "verified" else "unhashed" if status == "present" else "absent"
    partial = cache.partial_path(spec).is_file()
    return OnDisk(file, partial=partial, leftovers=file != "absent" and bool(_leftovers(cache, spec)))


async def _settle(
    cache: Cache, spec: ModelSpec, ask: Ask, progress: DownloadProgress | None
) -> tuple[Decision, OnDisk]:
    """Look at the cache and decide, hashing an unhashed file first when the decision needs it."""
    disk = _on_disk(cache, spec)
    decision = decide(disk, ask)
    if decision.action is Action.HASH:
        disk = replace(disk, matched=await _hash_existing(cache, spec, progress) == spec.sha256)
        decision = decide(disk, ask)
    return decision, disk


def _remove_files(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _fetch(
    spec: ModelSpec,
    sources: Sequence[Source],
    request: Request,
    network: Network,
    warn: Callable[[str], None],
) -> tuple[Source, Fetched]:
    """Try each source in turn: the first that gives the file, with what it gave; each source that failed
    before it is passed to ``warn``."""
    failures: list[WhisperctlError] = []
    for source in sources:
        location = source.locate(spec)
        try:
            fetched = await source.fetch(request, network)
            if fetched.digest != spec.sha256:
                os.close(fetched.fd)
                _remove_files(request.part, request.state)
                raise IntegrityError(
                    f"{spec.filename}: SHA-256 mismatch from {location} (expected {spec.sha256}, "
                    f"got {fetched.digest}); the partial file was removed; run `whisperctl download "
                    f"{spec.name}` again or check the mirror"
                )
            return source, fetched
        except (NetworkError, IntegrityError) as exc:
            failures.append(exc)
            if len(failures) < len(sources):
                warn(f"{exc}; trying the next source")
    if len(failures) == 1:
        raise failures[0]
    detail = "; ".join(str(exc) for exc in failures)
    raise type(failures[-1])(f"{spec.name}: every source failed: {detail}")


@dataclass(frozen=True)
class _Plan:
    """What a run does for every model."""

    cache: Cache
    sources: tuple[Source, ...]  # in order; offline, only those that work without the network
    network: Network
    ask: Ask
    progress: DownloadProgress | None
    lock_poll: float = 0.25


async def _download_one(plan: _Plan, spec: ModelSpec) -> DownloadRecord:
    cache = plan.cache
    outcome = _Outcome(spec, cache.path_for(spec), plan.progress)
    cache.ensure()
    decision, _ = await _settle(cache, spec, plan.ask, plan.progress)
    offline_hint = (
        f"{spec.name}: not in the cache ({outcome.path}) and offline mode is on; run `whisperctl download "
        f"{spec.name}` with network access, or give a --mirror directory that holds it"
    )
    if decision.action is Action.SERVE:
        return outcome.record(DownloadStatus.CACHED, "cache", spec.sha256)
    if decision.action is Action.NOT_CACHED:
        raise NotCachedError(offline_hint)
    run = _Run(cache, plan.progress, plan.lock_poll)
    async with _lock(run, spec) as locked:
        if locked:
            remove_stale_temporaries(cache, spec)
        # Another process may have finished it while this one waited for the lock.
        decision, _ = await _settle(cache, spec, replace(plan.ask, locked=locked), plan.progress)
        if decision.action is Action.SERVE:
            if decision.clean:
                _remove_files(*_leftovers(cache, spec))
            return outcome.record(DownloadStatus.CACHED, "cache", spec.sha256)
        if decision.action is not Action.FETCH:  # pragma: no cover - under the lock: serve or fetch
            raise NotCachedError(offline_hint)
        request = Request(
            spec,
            cache.partial_path(spec),
            cache.partial_state_path(spec),
            _NamedProgress(plan.progress, spec.name),
            decision.resume,
        )
        try:
            source, fetched = await _fetch(spec, plan.sources, request, plan.network, outcome.warn)
        except NetworkError as exc:
            if plan.ask.offline:  # only directory mirrors were tried, and none holds it
                raise NotCachedError(f"{offline_hint} ({exc})") from exc
            raise
        try:
            warning = await asyncio.to_thread(place_verified, cache, spec, fetched.digest, fd := fetched.fd)
        finally:
            os.close(fd)
        if warning is not None:
            outcome.warn(warning)
        return outcome.record(
            DownloadStatus.DOWNLOADED, source.locate(spec), fetched.digest, fetched.resumed_from
        )


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
        client = make_client(
            timeout=options.timeout(),
            max_connections=jobs * options.connections + jobs,
            lean_http=options.lean_http,
        )
    sources = (*mirrors, OfficialSource())
    if offline:
        sources = tuple(s for s in sources if s.offline)
    plan = _Plan(
        cache=cache,
        sources=sources,
        network=Network(client, options),
        ask=Ask(force=force, offline=offline, offline_sources=bool(sources)),
        progress=progress,
    )
    semaphore = asyncio.Semaphore(jobs)

    async def one(spec: ModelSpec) -> DownloadRecord:
        t0 = time.monotonic()
        async with semaphore:
            try:
                rec = await _download_one(plan, spec)
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

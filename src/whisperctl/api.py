"""The library's entry points: each composes the registry and the cache, and returns data, never prints."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .cache import Cache, CacheEntry, resolve_cache_dir
from .errors import DownloadError, IntegrityError, NotCachedError
from .registry import ModelSpec, Registry, load_registry
from .verify import VerifyRecord, verify_models

if TYPE_CHECKING:
    # httpx and the engine are imported when a download starts, so that `list` and `path` start fast.
    import httpx

    from .download import DownloadProgress, DownloadRecord, Mirror
    from .transfer import TransferOptions

__all__ = ["download", "list_models", "model_info", "model_path", "open_context", "verify"]

PathLike = Path | str


def open_context(
    cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None
) -> tuple[Registry, Cache]:
    """The registry (official + user file) and the cache that the other functions work on."""
    reg = registry if isinstance(registry, Registry) else load_registry(registry)
    return reg, Cache(resolve_cache_dir(cache_dir))


def list_models(
    *, cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None, cached: bool = False
) -> list[CacheEntry]:
    """Every known model with its cache status; with ``cached=True`` only those with a file in the cache."""
    reg, cache = open_context(cache_dir, registry)
    entries = [cache.entry(spec) for spec in reg]
    return [e for e in entries if e.exists] if cached else entries


def model_info(
    name: str, *, cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None
) -> CacheEntry:
    """The spec of one model (name or alias) and its cache status."""
    reg, cache = open_context(cache_dir, registry)
    return cache.entry(reg.get(name))


def model_path(
    name: str, *, cache_dir: PathLike | None = None, registry: Registry | PathLike | None = None
) -> Path:
    """The absolute path of a model's cached file.

    Raises :class:`NotCachedError` when the file is not there (or only partly downloaded), and
    :class:`IntegrityError` when its last verification failed.
    """
    entry = model_info(name, cache_dir=cache_dir, registry=registry)
    spec = entry.spec
    if entry.status == "missing":
        raise NotCachedError(
            f"{spec.name}: not in the cache ({entry.path}); run `whisperctl download {spec.name}`"
        )
    if entry.status == "partial":
        raise NotCachedError(
            f"{spec.name}: only a partial download is in the cache ({entry.partial_path}); "
            f"run `whisperctl download {spec.name}` to finish it"
        )
    if entry.status == "corrupt":
        actual = entry.stamp.sha256 if entry.stamp else "unknown"
        raise IntegrityError(
            f"{spec.name}: {entry.path} failed verification (expected SHA-256 {spec.sha256}, got {actual}); "
            f"run `whisperctl download --force {spec.name}`"
        )
    return entry.path


def _mirrors(mirrors: Sequence[str] | None) -> tuple[Mirror, ...]:
    from .download import MIRROR_ENV, parse_mirrors

    if mirrors is None:
        env = os.environ.get(MIRROR_ENV, "")
        return parse_mirrors([env]) if env else ()
    return parse_mirrors(list(mirrors))


def download(
    names: Sequence[str],
    *,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
    mirrors: Sequence[str] | None = None,
    offline: bool | None = None,
    force: bool = False,
    jobs: int = 4,
    connections: int = 8,
    options: TransferOptions | None = None,
    progress: DownloadProgress | None = None,
    client: httpx.AsyncClient | None = None,
    check: bool = True,
) -> list[DownloadRecord]:
    """Download models into the cache, verified; one :class:`DownloadRecord` per model.

    ``mirrors`` (URLs or directories in the official ``<base>/<sha256>/<filename>`` layout) are tried in order
    before the official URL; ``None`` reads ``$WHISPERCTL_MIRROR``. ``offline=None`` reads
    ``$WHISPERCTL_OFFLINE``. With ``check=True`` a failure raises :class:`DownloadError` (after every model
    was tried), which carries the records; with ``check=False`` failures are records with ``status="failed"``.
    """
    import asyncio

    from .download import download_models, env_offline
    from .transfer import TransferOptions

    reg, cache = open_context(cache_dir, registry)
    specs = reg.resolve(list(names))
    opts = options or TransferOptions(connections=connections)
    records = asyncio.run(
        download_models(
            specs,
            cache,
            mirrors=_mirrors(mirrors),
            offline=env_offline() if offline is None else offline,
            force=force,
            jobs=jobs,
            options=opts,
            progress=progress,
            client=client,
        )
    )
    failed = [r for r in records if not r.ok]
    if check and failed:
        raise DownloadError("; ".join(str(r.error) for r in failed), failed[0].exit_code, records)
    return records


def verify(
    names: Sequence[str] | None = None,
    *,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
    jobs: int = 4,
    on_start: Callable[[ModelSpec, int], None] | None = None,
    on_bytes: Callable[[ModelSpec, int], None] | None = None,
) -> list[VerifyRecord]:
    """Re-hash cached models in full and update their stamps (with no ``names``: every model on disk)."""
    reg, cache = open_context(cache_dir, registry)
    if names:
        specs = reg.resolve(list(names))
    else:
        specs = [e.spec for e in (cache.entry(s) for s in reg) if e.status != "missing"]
    return verify_models(specs, cache, jobs=jobs, on_start=on_start, on_bytes=on_bytes)

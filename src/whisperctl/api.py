"""The library's entry points: each composes the registry and the cache, and returns data, never prints."""

from __future__ import annotations

from pathlib import Path

from .cache import Cache, CacheEntry, resolve_cache_dir
from .errors import IntegrityError, NotCachedError
from .registry import Registry, load_registry

__all__ = ["list_models", "model_info", "model_path", "open_context"]

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

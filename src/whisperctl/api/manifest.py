"""Which models a command is about: names, a manifest file (``-r FILE``), or every model of the registry.

A *manifest* is a text file of model names, one a line, with ``#`` comments and blank lines; ``freeze``
writes one for what the cache holds. Every line is checked before anything starts, and one
:class:`ManifestError` names every bad line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from whisperctl.errors import IntegrityError, ManifestError, NotCachedError, UnknownModelError, UsageError
from whisperctl.models.registry import ModelSpec, Registry, load_registry
from whisperctl.store.cache import Cache, CacheEntry, Status

__all__ = ["check_cached", "parse_manifest", "read_manifest", "select_cached", "select_models"]


def parse_manifest(text: str, registry: Registry, *, source: str = "manifest") -> list[ModelSpec]:
    """The models a manifest names, in order, each once; one :class:`ManifestError` names every bad line."""
    specs: dict[str, ModelSpec] = {}
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 1:
            problems.append(f"line {lineno}: {' '.join(words)!r} is not one model name")
            continue
        try:
            spec = registry.get(words[0])
        except UnknownModelError as exc:
            hint = (
                f" (did you mean {', '.join(repr(s) for s in exc.suggestions)}?)" if exc.suggestions else ""
            )
            problems.append(f"line {lineno}: unknown model {words[0]!r}{hint}")
            continue
        specs.setdefault(spec.name, spec)
    if problems:
        raise ManifestError(
            f"{source}: {'; '.join(problems)}; write one model name a line (`whisperctl list` shows them), "
            "or add the model to your registry file"
        )
    if not specs:
        raise ManifestError(
            f"{source}: names no model (only comments and blank lines); write one name a line"
        )
    return list(specs.values())


def read_manifest(path: Path | str, *, registry: Registry | Path | str | None = None) -> list[ModelSpec]:
    """The models named in a manifest file (``-`` is standard input); see :func:`parse_manifest`."""
    reg = registry if isinstance(registry, Registry) else load_registry(registry)
    if os.fspath(path) == "-":
        return parse_manifest(sys.stdin.read(), reg, source="<stdin>")
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ManifestError(
            f"{path}: cannot read the manifest ({exc.strerror or exc}); check the path given to -r"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        ) from exc
    return parse_manifest(text, reg, source=str(path))


def select_models(
    registry: Registry,
    names: Sequence[str] = (),
    *,
    manifest: Path | str | None = None,
    all_models: bool = False,
) -> list[ModelSpec]:
    """The models named (aliases resolved), then those of ``manifest``, each once, in that order; with
    ``all_models``, every model of the registry first.

    Every name and manifest line is checked before anything is returned (:class:`UnknownModelError`,
    :class:`ManifestError`, both exit 2).
    """
    specs = {spec.name: spec for spec in registry} if all_models else {}
    for spec in registry.resolve(list(names)):
        specs.setdefault(spec.name, spec)
    if manifest is not None:
        for spec in read_manifest(manifest, registry=registry):
            specs.setdefault(spec.name, spec)
    return list(specs.values())


def select_cached(
    registry: Registry,
    cache: Cache,
    names: Sequence[str],
    *,
    manifest: Path | str | None,
    all_cached: bool,
    verb: str,
) -> list[ModelSpec]:
    """The models a command that publishes cached files (``export``, ``push``) is about: those named and in
    ``manifest``, or with ``all_cached`` every model in the cache that is not known to be corrupt."""
    if all_cached:
        specs = [
            e.spec for e in (cache.entry(s) for s in registry) if e.exists and e.status is not Status.CORRUPT
        ]
        if not specs:
            raise NotCachedError(
                f"{cache.root}: no model in the cache to {verb}; run `whisperctl download` first"
            )
        return specs
    if names or manifest is not None:
        return select_models(registry, names, manifest=manifest)
    ways = "--all-cached or -r FILE" if verb == "export" else "-r FILE"  # push publishes named models only
    raise UsageError(f"{verb}: name at least one model, or use {ways}")


def check_cached(entries: Sequence[CacheEntry], *, verified_only: bool) -> None:
    """Every entry's file is there (:class:`NotCachedError`, exit 5) and not known to be corrupt, or with
    ``verified_only`` verified (:class:`IntegrityError`, exit 4): checked for all before any work."""
    for e in entries:
        if e.status in (Status.MISSING, Status.PARTIAL):
            raise NotCachedError(
                f"{e.spec.name}: not in the cache ({e.path}); run `whisperctl download {e.spec.name}` first"
            )
        if e.status is Status.CORRUPT or (
            verified_only and (e.status is not Status.VERIFIED or e.stamp is None)
        ):
            raise IntegrityError(
                f"{e.spec.name}: {e.path} failed verification; run `whisperctl verify --repair "
                f"{e.spec.name}` first"
            )

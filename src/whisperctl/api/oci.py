"""OCI registries and layouts as a fleet's source: :func:`push` uploads cached models to a registry as OCI
artifacts (one layer, the ``.pt`` file; after the CNCF ModelPack spec), tagged with their names;
:func:`export_oci_layout` writes them as an OCI image layout directory (what skopeo and oras copy to and from
registries), which is itself a mirror for ``download --mirror DIR``.

Both take only cached, verified models: a file never hashed (openai-whisper's) is hashed first, and a corrupt
or missing one stops the run before anything is sent or written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from whisperctl.api.manifest import check_cached, select_cached
from whisperctl.api.models import PathLike, open_context
from whisperctl.errors import CacheError, UsageError
from whisperctl.fetch.oci.artifact import ARTIFACT_TYPE, MANIFEST_MEDIA_TYPE, build_artifact
from whisperctl.models.registry import ModelSpec, Registry
from whisperctl.store.cache import Cache, CacheEntry, Status
from whisperctl.store.layout import STATE_DIRNAME
from whisperctl.store.oci_layout import LayoutModel, LayoutRecord, LayoutReport, write_layout
from whisperctl.store.verify import verify_models

if TYPE_CHECKING:
    import httpx

    from whisperctl.fetch.oci.push import BlobPush, PushOptions

__all__ = [
    "LayoutRecord",
    "LayoutReport",
    "PushProgress",
    "PushRecord",
    "PushReport",
    "export_oci_layout",
    "push",
]

UPLOADS_DIRNAME = "uploads"


class PushProgress(Protocol):
    """What :func:`push` reports of each model's file (the CLI's progress bars implement it)."""

    def start(self, name: str, total: int | None, completed: int) -> None: ...

    def advance(self, name: str, nbytes: int) -> None: ...


@dataclass(frozen=True)
class PushRecord:
    """One model pushed: its tag, manifest digest, and the bytes of its blobs sent now or skipped (the
    registry had them, they were mounted, or an earlier upload had sent them)."""

    name: str
    reference: str  # oci://host:port/repository:name
    manifest_digest: str
    sha256: str
    size_bytes: int
    layer: str  # sent, resumed, present or mounted
    bytes_sent: int
    bytes_skipped: int


@dataclass(frozen=True)
class PushReport:
    registry: str
    models: list[PushRecord]

    @property
    def bytes_sent(self) -> int:
        return sum(m.bytes_sent for m in self.models)

    @property
    def bytes_skipped(self) -> int:
        return sum(m.bytes_skipped for m in self.models)


def _verified(
    reg: Registry,
    cache: Cache,
    names: Sequence[str],
    manifest: PathLike | None,
    all_cached: bool,
    verb: str,
) -> list[CacheEntry]:
    """The entries of the models asked for, every one cached and verified (hashed first when never hashed);
    :class:`NotCachedError` or :class:`IntegrityError` for the first that is not, before any work."""
    specs = select_cached(reg, cache, names, manifest=manifest, all_cached=all_cached, verb=verb)
    unhashed = [e.spec for e in (cache.entry(s) for s in specs) if e.status == Status.PRESENT]
    if unhashed:
        verify_models(unhashed, cache)
    entries = [cache.entry(spec) for spec in specs]
    check_cached(entries, verified_only=True)
    return entries


def export_oci_layout(
    dest: PathLike,
    names: Sequence[str] = (),
    *,
    manifest: PathLike | None = None,
    all_cached: bool = False,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
) -> LayoutReport:
    """Write cached models to ``dest`` as an OCI image layout: ``oci-layout``, ``index.json`` (one manifest
    per model, tagged with its name) and ``blobs/sha256/<hex>`` (the model's file hard-linked where the
    filesystem allows, else copied and verified). A layout already there keeps its other tags."""
    reg, cache = open_context(cache_dir, registry)
    entries = _verified(reg, cache, names, manifest, all_cached, "export")
    root = Path(dest).expanduser().absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"{root}: cannot create the layout directory ({exc.strerror or exc}); check its permissions"
        ) from exc
    models = []
    for e in entries:
        artifact = build_artifact(e.spec, e.stamp.size if e.stamp else e.path.stat().st_size)
        models.append(
            LayoutModel(
                e.spec,
                e.path,
                e.stamp,
                artifact.config,
                artifact.manifest,
                MANIFEST_MEDIA_TYPE,
                ARTIFACT_TYPE,
            )
        )
    return write_layout(root, models)


def push(
    target: str,
    names: Sequence[str] = (),
    *,
    manifest: PathLike | None = None,
    mount_from: str | None = None,
    chunk_size: int | None = None,
    cache_dir: PathLike | None = None,
    registry: Registry | PathLike | None = None,
    client: httpx.AsyncClient | None = None,
    progress: PushProgress | None = None,
    stop: Callable[[], bool] | None = None,
) -> PushReport:
    """Push cached, verified models to the repository ``target`` (``oci://HOST[:PORT]/REPOSITORY``, or
    ``oci+http://`` for a plain-http registry), each tagged with its name.

    Blobs the registry has are not sent; with ``mount_from`` (a repository of the same registry) they are
    mounted from it where the registry offers that. The model's file goes in chunks of ``chunk_size`` bytes
    (64 MiB by default); an interrupted push resumes where the registry says it stopped. Credentials come
    from the container tools' auth files. ``progress`` follows each model's file. ``stop()`` is
    checked between reads: once true, the chunk in flight ends there, the upload is recorded for the next
    push to resume, and :class:`KeyboardInterrupt` is raised (the CLI sets it on Ctrl-C, SIGTERM, SIGHUP)."""
    from whisperctl.fetch.oci.push import DEFAULT_CHUNK, PushOptions
    from whisperctl.fetch.oci.reference import parse_oci_url

    ref = parse_oci_url(target)
    if chunk_size is not None and chunk_size < 1:
        raise UsageError(f"chunk size {chunk_size}: must be at least 1 byte")
    if mount_from is not None:
        parse_oci_url(f"oci://{ref.netloc}/{mount_from}")  # the repository name's grammar, checked
    reg, cache = open_context(cache_dir, registry)
    entries = _verified(reg, cache, names, manifest, False, "push")
    options = PushOptions(
        state_dir=cache.root / STATE_DIRNAME / UPLOADS_DIRNAME,
        chunk_size=chunk_size or DEFAULT_CHUNK,
        mount_from=mount_from,
        stop=stop,
    )
    import asyncio  # here: `whisperctl --help`, `list` and `path` never start an event loop's imports

    records = asyncio.run(_push_all(ref.display, entries, options, client, progress))
    return PushReport(ref.display, records)


async def _push_all(
    target: str,
    entries: list[CacheEntry],
    options: PushOptions,
    client: httpx.AsyncClient | None,
    progress: PushProgress | None,
) -> list[PushRecord]:
    from whisperctl.fetch.http.client import make_client
    from whisperctl.fetch.oci.client import RegistryClient
    from whisperctl.fetch.oci.push import push_artifact
    from whisperctl.fetch.oci.reference import parse_oci_url
    from whisperctl.fetch.transfer import TransferOptions

    ref = parse_oci_url(target)
    http = client or make_client(timeout=TransferOptions().timeout(), max_connections=2, lean_http=False)
    try:
        registry_client = RegistryClient(ref, http)
        records = []
        for e in entries:
            size = e.stamp.size if e.stamp else e.path.stat().st_size
            artifact = build_artifact(e.spec, size)
            step = options if progress is None else _following(options, progress, e.spec.name)
            blobs = await push_artifact(registry_client, artifact, e.path, step)
            records.append(_record(ref.display, e.spec, size, artifact.manifest_digest, blobs))
        return records
    finally:
        if client is None:
            await http.aclose()


def _following(options: PushOptions, progress: PushProgress, name: str) -> PushOptions:
    return replace(
        options,
        on_start=lambda total, completed: progress.start(name, total, completed),
        on_bytes=lambda n: progress.advance(name, n),
    )


def _record(
    target: str, spec: ModelSpec, size: int, manifest_digest: str, blobs: list[BlobPush]
) -> PushRecord:
    return PushRecord(
        name=spec.name,
        reference=f"{target}:{spec.name}",
        manifest_digest=manifest_digest,
        sha256=spec.sha256,
        size_bytes=size,
        layer=blobs[0].how,
        bytes_sent=sum(b.bytes_sent for b in blobs),
        bytes_skipped=sum(b.bytes_skipped for b in blobs),
    )

"""Push a cached model to a registry as an OCI artifact (:mod:`.artifact`), tagged with its name.

Each blob (the model's file, its config) is looked for first (``HEAD``): one the registry has is not sent
again; the model's file is mounted (``POST ...?mount=&from=``) where the registry offers it, from the
repository given (``--mount-from``) or else from the last repository of the same registry it was pushed to
(remembered beside the cache). Otherwise it goes up in chunks (streamed ``PATCH`` requests, then
``PUT ?digest=``), read from the cache in a thread with one reused buffer. After each chunk the upload's
location and offset are kept in a small state file beside the cache; the next run asks the registry (``GET``
on the upload, whose ``Range`` header says what it holds) and goes on from there. A stop asked for (Ctrl-C)
ends the chunk in flight cleanly, so the upload resumes at that byte. A process killed in the middle of a
chunk leaves the registry holding bytes past the recorded location: the CNCF distribution registry then
cancels that upload when asked, and the blob starts anew. The manifest goes last, so a tag never names a
blob the registry lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urljoin

import httpx

from whisperctl.errors import IntegrityError, NetworkError, sanitized
from whisperctl.fetch.oci.artifact import MANIFEST_MEDIA_TYPE, Artifact
from whisperctl.fetch.oci.client import RegistryClient
from whisperctl.store.files import atomic_write_text

__all__ = ["DEFAULT_CHUNK", "READ_BUFFER", "BlobPush", "PushOptions", "push_artifact", "upload_state_path"]

MiB = 1024 * 1024
DEFAULT_CHUNK = 64 * MiB  # one PATCH; what an interruption can cost at most
READ_BUFFER = 4 * MiB  # one read from the cache, sent as it is read
_RANGE = re.compile(r"^(?:bytes=)?0-(\d+)$")
_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")

BlobHow = Literal["sent", "resumed", "present", "mounted"]


@dataclass(frozen=True)
class BlobPush:
    """What became of one blob: ``sent`` (all of it), ``resumed`` (the rest of an earlier upload),
    ``present`` (the registry had it) or ``mounted`` (from another repository of the registry)."""

    digest: str
    size: int
    how: BlobHow
    bytes_sent: int

    @property
    def bytes_skipped(self) -> int:
        return self.size - self.bytes_sent


@dataclass(frozen=True)
class PushOptions:
    """``chunk_size``: bytes per PATCH; ``mount_from``: a repository of the same registry to mount blobs
    from; ``state_dir``: where unfinished uploads are recorded; ``on_start(total, completed)`` when the
    model's file starts (``completed``: what the registry has), ``on_bytes(nbytes)`` as it goes up;
    ``stop()``: checked between reads; once true, the chunk in flight ends there, the upload is recorded, and
    :class:`KeyboardInterrupt` is raised (the next push resumes at that byte)."""

    state_dir: Path
    chunk_size: int = DEFAULT_CHUNK
    mount_from: str | None = None
    on_start: Callable[[int, int], None] | None = None
    on_bytes: Callable[[int], None] | None = None
    stop: Callable[[], bool] | None = None
    # Seconds after which a chunk is preceded by a request without a body (a GET on the upload), so that an
    # expired token is renewed there: a streamed chunk cannot be sent again after a 401.
    reauthorize_after: float = 30.0


def upload_state_path(state_dir: Path, registry: RegistryClient, digest: str) -> Path:
    """The state file of an upload of ``digest`` to ``registry``'s repository."""
    where = f"{registry.ref.base_url}/{registry.ref.repository}".encode()
    return state_dir / f"{digest.removeprefix('sha256:')}.{hashlib.sha256(where).hexdigest()[:16]}.json"


async def push_artifact(
    registry: RegistryClient, artifact: Artifact, model_file: Path, options: PushOptions
) -> list[BlobPush]:
    """Push ``artifact`` (the model's file at ``model_file``), then tag its manifest with the model's name."""
    scope = registry.push_scope()
    blobs = [
        await _push_blob(registry, scope, artifact.layer.digest, artifact.layer.size, model_file, options),
        await _push_bytes(registry, scope, artifact.config_descriptor.digest, artifact.config),
    ]
    url = registry.manifest_path(artifact.name)
    response = await _send(
        registry, "PUT", url, scope, headers={"Content-Type": MANIFEST_MEDIA_TYPE}, content=artifact.manifest
    )
    _expect(registry, response, (201,), f"the manifest of {artifact.name}")
    return blobs


async def _push_bytes(registry: RegistryClient, scope: str, digest: str, data: bytes) -> BlobPush:
    """A small blob (the config): in one ``POST`` then ``PUT`` with the bytes, unless the registry has it."""
    if await _has_blob(registry, scope, digest):
        return BlobPush(digest, len(data), "present", 0)
    location = await _start_upload(registry, scope, digest)
    response = await _send(
        registry,
        "PUT",
        _with_digest(location, digest),
        scope,
        headers={"Content-Type": "application/octet-stream"},
        content=data,
    )
    _expect(registry, response, (201,), f"blob {digest}")
    return BlobPush(digest, len(data), "sent", len(data))


async def _push_blob(
    registry: RegistryClient, scope: str, digest: str, size: int, path: Path, options: PushOptions
) -> BlobPush:
    state_path = upload_state_path(options.state_dir, registry, digest)
    if await _has_blob(registry, scope, digest):
        with contextlib.suppress(FileNotFoundError):
            state_path.unlink()  # an earlier upload that finished, or that another client completed
        _remember(options.state_dir, registry, digest)
        _started(options, size, size)
        return BlobPush(digest, size, "present", 0)
    location, offset = await _resume(registry, scope, state_path, size)
    resumed = offset > 0
    if location is None:
        location = await _mount_or_start(registry, scope, digest, options)
        if location is None:
            _remember(options.state_dir, registry, digest)
            _started(options, size, size)
            return BlobPush(digest, size, "mounted", 0)
        _save_state(state_path, registry, digest, location, 0)
    start = offset
    _started(options, size, offset)
    checked = time.monotonic()
    while offset < size:
        if time.monotonic() - checked > options.reauthorize_after:
            response = await _send(registry, "GET", location, scope)
            _expect(registry, response, (204,), f"the upload of blob {digest}")
            checked = time.monotonic()
        body = _FileBody(path, offset, min(options.chunk_size, size - offset), options)
        # A streamed PATCH (no Content-Length): a stop asked for mid-chunk ends the body cleanly, so that
        # the registry's record of the upload and the location it answers agree, and the next run resumes.
        response = await _send(
            registry,
            "PATCH",
            location,
            scope,
            headers={"Content-Type": "application/octet-stream"},
            content=body.chunks(),
        )
        _expect(registry, response, (202,), f"a chunk of blob {digest}")
        location = _location(registry, response, location)
        offset = _confirmed(registry, response, offset + body.sent, digest)
        _save_state(state_path, registry, digest, location, offset)
        if body.stopped:
            raise KeyboardInterrupt(f"push of {digest} stopped at byte {offset:,}; it resumes there")
    response = await _send(registry, "PUT", _with_digest(location, digest), scope, content=b"")
    _expect(registry, response, (201,), f"blob {digest}")
    with contextlib.suppress(FileNotFoundError):
        state_path.unlink()
    _remember(options.state_dir, registry, digest)
    return BlobPush(digest, size, "resumed" if resumed else "sent", size - start)


def _confirmed(registry: RegistryClient, response: httpx.Response, offset: int, digest: str) -> int:
    """The offset after a chunk, as the registry's ``Range`` says (when it says it, it must agree)."""
    value = response.headers.get("Range")
    m = _RANGE.fullmatch(value.strip()) if value else None
    # "0-0" is what distribution says both of an empty upload and of one byte.
    if m is None or int(m[1]) + 1 == offset or (m[1] == "0" and offset == 0):
        return offset
    raise NetworkError(
        f"{registry.ref.display}: the registry holds {int(m[1]) + 1:,} bytes of blob {digest} after a chunk, "
        f"expected {offset:,}; push again (the upload starts anew)"
    )


def _started(options: PushOptions, total: int, completed: int) -> None:
    if options.on_start is not None:
        options.on_start(total, completed)


async def _has_blob(registry: RegistryClient, scope: str, digest: str) -> bool:
    response = await _send(registry, "HEAD", registry.blob_path(digest), scope)
    if response.status_code == 404:
        return False
    # A redirect (to blob storage) says the registry has it as surely as a 200.
    _expect(registry, response, (200, 302, 303, 307), f"blob {digest}")
    return True


async def _start_upload(registry: RegistryClient, scope: str, digest: str) -> str:
    """A new upload's location."""
    response = await _send(registry, "POST", registry.uploads_path(), scope, content=b"")
    _expect(registry, response, (202,), f"an upload of blob {digest}")
    return _location(registry, response, None)


async def _mount_or_start(
    registry: RegistryClient, scope: str, digest: str, options: PushOptions
) -> str | None:
    """Mount the blob from ``--mount-from``, else from a repository of this registry that it was pushed to
    before (remembered beside the cache; a refusal there only means a plain upload); None when mounted,
    else the location of the upload."""
    if options.mount_from:
        return await _mount(registry, scope, digest, options.mount_from)
    source = _remembered(options.state_dir, registry, digest)
    if source is not None:
        with contextlib.suppress(NetworkError):
            return await _mount(registry, scope, digest, source)
    return await _start_upload(registry, scope, digest)


def _pushed_path(state_dir: Path, digest: str) -> Path:
    return state_dir / f"{digest.removeprefix('sha256:')}.pushed.json"


def _remembered(state_dir: Path, registry: RegistryClient, digest: str) -> str | None:
    """The repository of this registry that ``digest`` was last pushed to, other than this one."""
    known = _read_state(_pushed_path(state_dir, digest)) or {}
    repositories = known.get(registry.ref.base_url)
    for name in reversed(repositories if isinstance(repositories, list) else []):
        if isinstance(name, str) and name != registry.ref.repository and _REPOSITORY.fullmatch(name):
            return name
    return None


def _remember(state_dir: Path, registry: RegistryClient, digest: str) -> None:
    """Record that this registry's repository holds ``digest`` (the last 16 repositories per registry)."""
    path = _pushed_path(state_dir, digest)
    known = _read_state(path) or {}
    before = known.get(registry.ref.base_url)
    kept = [r for r in (before if isinstance(before, list) else []) if r != registry.ref.repository]
    known[registry.ref.base_url] = [*kept[-15:], registry.ref.repository]
    with contextlib.suppress(OSError):  # only a later mount is lost
        atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True) + "\n")


async def _mount(registry: RegistryClient, scope: str, digest: str, source: str) -> str | None:
    """None when the blob was mounted from the repository ``source``; else the location of the upload that
    a registry which does not offer mounts (or lacks the blob there) starts instead."""
    url = f"{registry.uploads_path()}?mount={quote(digest, safe='')}&from={quote(source, safe='/')}"
    response = await _send(registry, "POST", url, scope, content=b"")
    if response.status_code == 201:
        return None
    _expect(registry, response, (202,), f"an upload of blob {digest}")
    return _location(registry, response, None)


async def _resume(
    registry: RegistryClient, scope: str, state_path: Path, size: int
) -> tuple[str | None, int]:
    """The location and offset of an earlier, unfinished upload that the registry still holds."""
    state = _read_state(state_path)
    if state is None or state.get("registry") != registry.ref.base_url:
        return None, 0
    location = state.get("location")
    if not isinstance(location, str):
        return None, 0
    response = await _send(registry, "GET", location, scope)
    if response.status_code != 204:  # gone, expired or refused: a new upload
        with contextlib.suppress(FileNotFoundError):
            state_path.unlink()
        return None, 0
    m = _RANGE.fullmatch(response.headers.get("Range", "").strip())
    end = int(m[1]) + 1 if m and int(m[1]) > 0 else 0
    if end > size:
        return None, 0
    return _location(registry, response, location), end


class _FileBody:
    """Up to ``length`` bytes of ``path`` from ``offset``, ``READ_BUFFER`` at a time, each read in a thread
    (the event loop never waits on the disk) straight into the bytes that are sent, the next read under
    way while one is being sent; ends early once ``stop()`` says so."""

    def __init__(self, path: Path, offset: int, length: int, options: PushOptions) -> None:
        self.path, self.offset, self.length = path, offset, length
        self.stop, self.on_bytes = options.stop, options.on_bytes
        self.sent = 0
        self.stopped = False

    async def chunks(self) -> AsyncIterator[bytes]:
        fd = await asyncio.to_thread(os.open, self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

        def read(at: int) -> bytes:
            return os.pread(fd, min(READ_BUFFER, self.length - at), self.offset + at)

        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whisperctl-push-read")
        ahead: Future[bytes] | None = reader.submit(read, 0) if self.length > 0 else None
        try:
            while ahead is not None:
                if self.stop is not None and self.stop():
                    self.stopped = True
                    return
                data = await asyncio.wrap_future(ahead)
                ahead = None
                if not data:
                    raise IntegrityError(
                        f"{self.path}: shorter than when it was verified; run `whisperctl verify --repair`"
                    )
                following = self.sent + len(data)
                if following < self.length:
                    ahead = reader.submit(read, following)
                yield data
                self.sent = following
                if self.on_bytes is not None:
                    self.on_bytes(len(data))
        finally:
            reader.shutdown(wait=False, cancel_futures=True)
            if ahead is None:
                os.close(fd)
            else:  # closed once the read under way (if any) has ended, never under it
                ahead.add_done_callback(lambda _: os.close(fd))


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data: Any = json.loads(f.read(64 * 1024))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _save_state(path: Path, registry: RegistryClient, digest: str, location: str, offset: int) -> None:
    state = {
        "registry": registry.ref.base_url,
        "repository": registry.ref.repository,
        "digest": digest,
        "location": location,
        "offset": offset,
    }
    with contextlib.suppress(OSError):  # without it the next run starts the blob anew: slower, not wrong
        atomic_write_text(path, json.dumps(state, indent=1) + "\n")


def _location(registry: RegistryClient, response: httpx.Response, fallback: str | None) -> str:
    value: str = response.headers.get("Location", "")
    if value:
        return urljoin(f"{registry.ref.base_url}/", value)
    if fallback is None:
        raise NetworkError(
            f"{registry.ref.display}: the registry started an upload without saying where "
            "(no Location header); check that it is an OCI distribution registry"
        )
    return fallback


def _with_digest(location: str, digest: str) -> str:
    return f"{location}{'&' if '?' in location else '?'}digest={quote(digest, safe='')}"


async def _send(
    registry: RegistryClient,
    method: str,
    url: str,
    scope: str,
    *,
    headers: dict[str, str] | None = None,
    content: bytes | AsyncIterator[bytes] | None = None,
) -> httpx.Response:
    try:
        response = await registry.request(method, url, scope=scope, headers=headers, content=content)
    except httpx.TransportError as exc:
        raise NetworkError(
            f"{registry.ref.display}: {type(exc).__name__} during {method}: "
            f"{sanitized(str(exc) or 'no detail', 120)}; check that the registry is up and try again "
            "(an upload resumes)"
        ) from exc
    return response


def _expect(registry: RegistryClient, response: httpx.Response, codes: tuple[int, ...], what: str) -> None:
    if response.status_code in codes:
        return
    body = sanitized(response.content[:2000] if response.content else b"", 160)
    raise NetworkError(
        f"{registry.ref.display}: HTTP {response.status_code} for {what} ({response.request.method}); "
        f"{body or 'no detail'}; check the repository and your push permission"
    )

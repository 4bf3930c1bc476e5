"""The HTTP transfer engine: one URL into one ``.part`` file, in parallel ranges, resumable, hashed live.

A transfer asks for ``Range: bytes=0-`` first. A 206 answer tells the size and that ranges work: the file is
then split into pieces of at most ``piece_size`` that several connections take in order, each written in place
with ``pwrite`` into one preallocated file. A worker that finds no piece left takes half of the largest
remaining one, so a slow connection does not hold up the end. A :class:`~store.hashing.FollowingHasher`
hashes the contiguous prefix as it grows; since pieces are taken in order, that prefix grows steadily and the
digest is ready moments after the last byte lands.

On direct connections the bodies are read by :mod:`.wire`, a lean HTTP/1.1 reader, straight into a
reusable buffer; through a proxy (or with a client passed in by the caller), by httpx.

Every few seconds the data is flushed (``fdatasync``) and then a small JSON sidecar records which bytes are
on disk, so an interrupted transfer (network failure, Ctrl-C, ``kill -9``, power loss) resumes only what is
missing, after checking that the server still has the same file (size, and ETag / Last-Modified via
``If-Range``). The sidecar never claims bytes that are not durable.

This module moves bytes; it neither knows model names nor renames anything: the caller compares the digest
and decides.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import os
import random
import shutil
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import httpx

from whisperctl.errors import CacheError, IntegrityError, NetworkError, quoted
from whisperctl.fetch.http.client import describe_transport_error
from whisperctl.fetch.http.wire import EngineClient, WireBody, WirePool
from whisperctl.store.cache import atomic_write_text
from whisperctl.store.files import create_partial, write_at, write_error
from whisperctl.store.hashing import FollowingHasher

__all__ = [
    "TransferOptions",
    "TransferProgress",
    "TransferResult",
    "fetch_url",
]

MiB = 1024 * 1024
STATE_VERSION = 1
_REDIRECTS = {301, 302, 303, 307, 308}
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class TransferProgress(Protocol):
    """What the engine reports; ``output.py`` draws it with rich."""

    def start(self, total: int | None, completed: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...


@dataclass(frozen=True)
class TransferOptions:
    """Knobs of the engine; the defaults suit a CDN over the internet."""

    connections: int = 8  # CDNs cap each connection; against a local nginx, 1, 2 or 4 were no faster
    split_threshold: int = 64 * MiB  # smaller files go in one stream
    min_segment: int = 4 * MiB  # never split below this
    # Larger files are cut into pieces of about this size, taken in order (one request each, on kept-alive
    # connections): the hashed prefix then follows the download instead of waiting for its last segment.
    # 32 MiB takes over a second on a 20 MB/s connection, so a round trip per piece costs little.
    piece_size: int = 32 * MiB
    lean_http: bool = True  # bodies of direct connections through wire.py rather than httpx
    retries: int = 5  # consecutive failed attempts of one segment, without progress, before giving up
    backoff: float = 0.5  # first retry delay; doubles each time, with full jitter
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    stall_timeout: float = 30.0  # no byte for this long: drop the connection and resume the range
    connect_timeout: float = 15.0
    max_redirects: int = 5
    checkpoint_interval: float = 2.0
    max_unknown_size: int = 64 * 1024 * MiB  # cap for a body of unknown size (no registry size, no length)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.stall_timeout, connect=self.connect_timeout)


@dataclass(frozen=True)
class TransferResult:
    sha256: str
    size: int
    url: str  # after redirects
    resumed_from: int  # bytes already on disk when this run started
    fd: int  # still open and fsynced; the caller closes it after the rename


class _Retry(Exception):
    """A transient failure: back off and resume from the bytes already on disk."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Restart(Exception):
    """The partial data cannot be continued (no Range support any more, the file changed): start over."""


@dataclass
class _Segment:
    start: int
    end: int | None  # exclusive; None while the size is unknown (one stream, no Content-Length)
    done: int = 0
    busy: bool = False

    @property
    def pos(self) -> int:
        return self.start + self.done

    @property
    def remaining(self) -> int:
        return math.inf if self.end is None else self.end - self.pos  # type: ignore[return-value]


@dataclass
class _Validator:
    total: int | None
    etag: str | None
    last_modified: str | None
    ranges: bool

    @classmethod
    def from_response(cls, response: httpx.Response) -> _Validator:
        etag = response.headers.get("etag")
        ranges = response.status_code == 206
        if ranges:
            total = _content_range_total(response)
        else:
            length = response.headers.get("content-length")
            total = int(length) if length and length.isdigit() else None
        return cls(total, etag, response.headers.get("last-modified"), ranges)

    def if_range(self) -> str | None:
        # Only a strong ETag or a Last-Modified date may be used in If-Range (RFC 9110, 13.1.5).
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


def _content_range_total(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    try:
        unit, _, rest = value.partition(" ")
        total = rest.partition("/")[2]
        if unit != "bytes" or total == "*":
            return None
        return int(total)
    except ValueError:
        return None


def _content_range_start(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    try:
        span = value.partition(" ")[2].partition("/")[0]
        return int(span.partition("-")[0])
    except ValueError:
        return None


def _range_length_problem(response: httpx.Response) -> str | None:
    """Why a 206's Content-Length disagrees with its Content-Range; None if they agree (or one is absent)."""
    length = response.headers.get("content-length", "")
    value = response.headers.get("content-range", "")
    span = value.partition(" ")[2].partition("/")[0]
    first, _, last = span.partition("-")
    if not (length.isdigit() and first.isdigit() and last.isdigit()):
        return None
    if int(length) != int(last) - int(first) + 1:
        return f"Content-Length {int(length):,} disagrees with Content-Range {value!r}"
    return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    with contextlib.suppress(TypeError, ValueError, IndexError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    return None


READ_SIZE = 1024 * 1024  # the wire path's read buffer


def _tls_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class _Transfer:
    """One URL into one partial file. Not reusable."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        part: Path,
        state_path: Path,
        *,
        expected_sha256: str,
        expected_size: int | None,
        options: TransferOptions,
        progress: TransferProgress | None,
    ) -> None:
        self.client = client
        self.url = url
        self.origin_url = url
        self.part = part
        self.state_path = state_path
        self.expected_sha256 = expected_sha256
        self.expected_size = expected_size
        self.opt = options
        self.progress = progress
        self.fd = -1
        self.segments: list[_Segment] = []
        self.validator: _Validator | None = None
        self.hasher: FollowingHasher | None = None
        self.resumed_from = 0
        self._writing: asyncio.Task[None] | None = None  # the sidecar write in flight, if any
        self._front = 0  # index of the first segment not complete: the hashed prefix ends in it
        self._unreported = 0  # bytes written but not told to the progress yet
        self._report_at = 0.0
        self._buffers: list[memoryview] = []  # read buffers of the wire path, reused across pieces
        wire = client.wire if isinstance(client, EngineClient) else None
        self.wire: WirePool | None = wire

    # -- HTTP ----------------------------------------------------------------------------------------------
    async def _open(self, start: int, end: int | None, *, validate: bool) -> httpx.Response:
        """GET ``bytes=start-(end-1)``, following redirects ourselves (bounded, never https -> http)."""
        headers = {"Range": f"bytes={start}-{'' if end is None else end - 1}", "Accept-Encoding": "identity"}
        if validate and self.validator is not None and (value := self.validator.if_range()):
            headers["If-Range"] = value
        url = self.url
        for _ in range(self.opt.max_redirects + 1):
            try:
                request = self.client.build_request("GET", url, headers=headers)
                if self.wire is not None and self.wire.handles(request.url):
                    response = await self.wire.send(
                        request, connect_timeout=self.opt.connect_timeout, read_timeout=self.opt.stall_timeout
                    )
                else:
                    response = await self.client.send(request, stream=True, follow_redirects=False)
            except httpx.TransportError as exc:
                raise self._transport_error(url, exc) from exc
            except httpx.InvalidURL as exc:
                # httpx parses a redirect's Location even when it does not follow it (`data:...`, `https:x`).
                raise NetworkError(
                    f"{url}: refused a redirect to an unusable address ({exc}); check the URL or the mirror"
                ) from exc
            if response.status_code not in _REDIRECTS:
                break
            location = response.headers.get("location")
            await response.aclose()
            if not location:
                raise NetworkError(f"{url}: redirect without a Location header; check the URL or the mirror")
            try:
                target = urljoin(url, location)
                scheme = urlsplit(target).scheme
            except ValueError as exc:  # "http://[::1" and the like
                raise NetworkError(f"{url}: refused a redirect to {quoted(location)} ({exc})") from None
            if scheme not in ("http", "https"):
                raise NetworkError(f"{url}: refused a redirect to {quoted(target)} (not http or https)")
            if urlsplit(url).scheme == "https" and scheme == "http":
                raise NetworkError(
                    f"{url}: refused a redirect from https to plain http ({target}); "
                    "use a mirror that stays on https"
                )
            url = target
        else:
            raise NetworkError(
                f"{self.url}: more than {self.opt.max_redirects} redirects; check the URL or the mirror"
            )
        self.url = url  # later ranges go straight to the final location
        status = response.status_code
        if status == 206 and (problem := _range_length_problem(response)):
            # Otherwise the extra bytes would be rejected or silently skipped depending on how the socket
            # happened to split the body: decide once, before the body, that the answer is not trusted.
            await response.aclose()
            raise IntegrityError(f"{url}: {problem}; the response was rejected (check the URL or the mirror)")
        if status in (200, 206):
            return response
        await response.aclose()
        if status in _RETRY_STATUS or status >= 500:
            raise _Retry(f"HTTP {status} from {url}", _retry_after(response))
        if status == 416:
            raise _Restart(f"HTTP 416 from {url}: the server's file is not the one being resumed")
        raise NetworkError(
            f"{url}: HTTP {status} {response.reason_phrase}; check the URL, the mirror, or your access to it"
        )

    def _transport_error(self, url: str, exc: httpx.TransportError) -> Exception:
        tls = _tls_failure(exc)
        if tls is not None:
            return NetworkError(
                f"{url}: TLS certificate verification failed ({tls.verify_message or tls}); "
                "if you use a private CA, point SSL_CERT_FILE at its bundle"
            )
        described = describe_transport_error(self.client, url, exc)  # names a proxy that failed
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.ProxyError):
            return described
        return _Retry(str(described))

    # -- file and state -------------------------------------------------------------------------------------
    def _load_state(self) -> bool:
        """Adopt the sidecar of an earlier run, when it describes this file."""
        try:
            data: Any = json.loads(self.state_path.read_text("utf-8"))
            if data.get("version") != STATE_VERSION or data.get("sha256") != self.expected_sha256:
                return False
            total = int(data["total"])
            if self.expected_size is not None and total != self.expected_size:
                return False
            segments = [_Segment(int(s), int(e), int(d)) for s, e, d in data["segments"]]
            st = os.stat(self.part, follow_symlinks=False)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        import stat

        if not stat.S_ISREG(st.st_mode) or st.st_size != total:
            return False
        # The segments must tile [0, total) exactly, each with a plausible amount done.
        pos = 0
        for seg in sorted(segments, key=lambda s: s.start):
            if (
                seg.start != pos
                or seg.end is None
                or seg.end <= seg.start
                or not 0 <= seg.done <= seg.end - seg.start
            ):
                return False
            pos = seg.end
        if pos != total:
            return False
        same_url = data.get("url") in (self.origin_url, self.url)
        self.validator = _Validator(
            total,
            data.get("etag") if same_url else None,
            data.get("last_modified") if same_url else None,
            True,
        )
        self.segments = sorted(segments, key=lambda s: s.start)
        return True

    def _state_payload(self) -> str:
        v = self.validator
        assert v is not None and v.total is not None
        return json.dumps(
            {
                "version": STATE_VERSION,
                "sha256": self.expected_sha256,
                "url": self.origin_url,
                "total": v.total,
                "etag": v.etag,
                "last_modified": v.last_modified,
                "segments": [[s.start, s.end, s.done] for s in self.segments],
            }
        )

    async def _checkpoint(self) -> None:
        """Flush the data, then record it: the sidecar never claims bytes that are not durable."""
        if self.validator is None or not self.validator.ranges or self.validator.total is None or self.fd < 0:
            return
        payload = self._state_payload()
        fd = self.fd

        def write() -> None:
            os.fdatasync(fd)
            atomic_write_text(self.state_path, payload)

        # Shielded: cancelling the checkpointer cannot stop the thread, so _run_workers awaits the write.
        self._writing = asyncio.ensure_future(asyncio.to_thread(write))
        await asyncio.shield(self._writing)

    def _create_part(self, total: int | None) -> None:
        self._discard()
        self.fd = create_partial(self.part, self.state_path, total)

    def _open_part(self) -> None:
        flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(self.part, flags)

    def _close_fd(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def _remove_files(self) -> None:
        for path in (self.part, self.state_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _discard(self) -> None:
        if self.hasher is not None:
            self.hasher.abort()
            self.hasher = None
        self._close_fd()
        self._remove_files()
        self.segments = []
        self._front = 0

    def _check_space(self, needed: int) -> None:
        try:
            free = shutil.disk_usage(self.part.parent).free
        except OSError:
            return
        if needed > free:
            raise CacheError(
                f"{self.part.parent}: not enough free space ({free:,} bytes free, {needed:,} to download); "
                "free some space or use another --cache-dir"
            )

    def _frontier(self) -> int:
        pos = 0
        for seg in self.segments:  # kept sorted by start
            if seg.start != pos:
                break
            pos = seg.pos
            if seg.remaining > 0:
                break
        return pos

    def _advance_frontier(self) -> None:
        """Tell the hasher where the contiguous prefix ends, from the first incomplete segment on.

        Segments tile the file and a split only inserts after a busy (so incomplete) segment: the complete
        ones before ``_front`` never change, and each call walks only what completed since the last one.
        """
        segs, i = self.segments, self._front
        while i < len(segs) and segs[i].remaining <= 0:
            i += 1
        self._front = i
        if self.hasher is not None and segs:
            self.hasher.advance(segs[i].pos if i < len(segs) else segs[-1].pos)

    # -- the transfer --------------------------------------------------------------------------------------
    async def run(self) -> TransferResult:
        restarts = 0
        while True:
            try:
                return await self._attempt()
            except _Restart:
                restarts += 1
                self._discard()
                if restarts > self.opt.retries:
                    raise NetworkError(
                        f"{self.url}: the transfer had to start over {restarts} times (the server dropped "
                        "the connection without range support, or kept changing the file); try again later"
                    ) from None
                await self.opt.sleep(self._delay(restarts, None))

    async def _attempt(self) -> TransferResult:
        first: httpx.Response | None = None
        if self._load_state():
            self._open_part()
            self.resumed_from = sum(s.done for s in self.segments)
            pending = next((s for s in self.segments if s.remaining > 0), None)
            if pending is not None:
                first = await self._with_retries(lambda: self._open(pending.pos, pending.end, validate=True))
                v = self.validator
                assert v is not None
                if first.status_code != 206 or _content_range_total(first) != v.total:
                    # A 200 to an If-Range request means the file changed (or ranges are gone): start over.
                    await first.aclose()
                    raise _Restart("the server's file changed since the partial download")
                v.etag = first.headers.get("etag", v.etag)
                v.last_modified = first.headers.get("last-modified", v.last_modified)
                first_segment: _Segment | None = pending
            else:
                first_segment = None
        else:
            self._discard()
            self.resumed_from = 0  # a restart after a resume: nothing of the old partial file is used
            first = await self._with_retries(lambda: self._open(0, None, validate=False))
            self.validator = v = _Validator.from_response(first)
            if first.status_code == 206 and v.total is None:
                v.ranges = False
            if v.total is not None and self.expected_size is not None and v.total != self.expected_size:
                await first.aclose()
                raise IntegrityError(
                    f"{self.url}: the server's file is {v.total:,} bytes, expected {self.expected_size:,}; "
                    "it is not this model (check the URL or the mirror)"
                )
            total = v.total if v.total is not None else self.expected_size
            try:
                if total is not None:
                    self._check_space(total)
                self._create_part(v.total)
            except BaseException:
                # Not enough space, or no partial file: close the probe, or its connection stays checked
                # out of the caller's client while the server keeps pushing the body into it.
                await first.aclose()
                raise
            self.segments = self._plan(v)
            first_segment = self.segments[0]
        v = self.validator
        assert v is not None
        if self.progress is not None:
            self.progress.start(v.total if v.total is not None else self.expected_size, self.resumed_from)
        self.hasher = FollowingHasher(self.fd)
        self._front = 0
        self._advance_frontier()
        await self._run_workers(first, first_segment)
        total = self._frontier()
        if v.total is not None and total != v.total:  # pragma: no cover - guarded by the workers
            raise NetworkError(f"{self.url}: transfer ended at byte {total:,} of {v.total:,}")
        # The hasher's catching up and the flush to disk overlap: both wait on something other than the CPU
        # that the other does not need (the hasher reads from the page cache).
        digest, synced = await asyncio.gather(
            asyncio.to_thread(self.hasher.finish, total),
            asyncio.to_thread(os.fsync, self.fd),
            return_exceptions=True,
        )
        for outcome in (digest, synced):
            if isinstance(outcome, OSError):
                # The bytes cannot be read back or made durable (a full disk at fsync, an I/O error): nothing
                # here can be trusted enough to rename, nor resumed from.
                raise CacheError(
                    f"{self.part}: cannot read back or flush the downloaded data "
                    f"({outcome.strerror or outcome}); the partial file was removed; "
                    "free some space or check the disk, then download again"
                ) from outcome
            if isinstance(outcome, BaseException):
                raise outcome
        assert isinstance(digest, str)
        return TransferResult(
            sha256=digest, size=total, url=self.url, resumed_from=self.resumed_from, fd=self.fd
        )

    def _plan(self, v: _Validator) -> list[_Segment]:
        total = v.total
        if not v.ranges or total is None or total < self.opt.split_threshold or self.opt.connections < 2:
            return [_Segment(0, total)]
        n = max(1, min(self.opt.connections, total // self.opt.min_segment))
        n = max(n, math.ceil(total / max(self.opt.piece_size, self.opt.min_segment)))
        size = math.ceil(total / n)
        return [_Segment(i * size, min(total, (i + 1) * size)) for i in range(n) if i * size < total]

    async def _run_workers(self, first: httpx.Response | None, first_segment: _Segment | None) -> None:
        v = self.validator
        assert v is not None
        n_workers = min(self.opt.connections, max(1, len([s for s in self.segments if s.remaining > 0])))
        if not v.ranges:
            n_workers = 1
        checkpointer = asyncio.create_task(self._checkpoint_loop())
        tasks: list[asyncio.Task[None]] = []
        finished = False
        try:
            tasks.append(asyncio.create_task(self._worker(first, first_segment)))
            for _ in range(n_workers - 1):
                tasks.append(asyncio.create_task(self._worker(None, None)))
            # The first fatal error cancels the other workers (asyncio.TaskGroup is 3.11+ only).
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if (exc := task.exception()) is not None:
                    raise exc
            finished = True
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            checkpointer.cancel()
            await asyncio.gather(checkpointer, return_exceptions=True)
            if self._writing is not None:
                # A write that the cancelled checkpointer left running in its thread must land now, before
                # the final record: later, it could recreate the sidecar after the rename or the discard.
                await asyncio.gather(self._writing, return_exceptions=True)
            if first is not None:
                await first.aclose()
            if not finished and self.fd >= 0 and self.validator is not None and self.validator.ranges:
                # Whatever went wrong (error, Ctrl-C), leave an exact record of what is on disk. After a
                # complete transfer the record would be removed moments later: its flush is left to the
                # final fsync, which overlaps the hash's catching up.
                with contextlib.suppress(OSError, asyncio.CancelledError):
                    await asyncio.shield(self._checkpoint())

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.opt.checkpoint_interval)
            await self._checkpoint()

    def _take(self) -> _Segment | None:
        """The next segment to work on: an idle one, else the second half of the largest busy one."""
        for seg in self.segments:
            if not seg.busy and seg.remaining > 0:
                return seg
        victim = max((s for s in self.segments if s.busy), key=lambda s: s.remaining, default=None)
        if victim is None or victim.end is None or victim.remaining < 2 * self.opt.min_segment:
            return None
        mid = victim.pos + victim.remaining // 2
        new = _Segment(mid, victim.end)
        victim.end = mid  # its stream stops at the new end
        self.segments.append(new)
        self.segments.sort(key=lambda s: s.start)
        return new

    async def _worker(self, response: httpx.Response | None, seg: _Segment | None) -> None:
        while True:
            if seg is None:
                seg = self._take()
                if seg is None:
                    return
            seg.busy = True
            try:
                await self._fetch_segment(seg, response)
            finally:
                seg.busy = False
                response = None
            seg = None

    async def _fetch_segment(self, seg: _Segment, response: httpx.Response | None) -> None:
        failures = 0
        while seg.remaining > 0:
            before = seg.done
            try:
                if response is None:
                    response = await self._open(seg.pos, seg.end, validate=True)
                    self._check_range_response(response, seg)
                await self._stream(response, seg)
                if seg.end is None:
                    # A body of unknown length ends when the server closes it; short of the registry's
                    # size, that close was a failure, not the end.
                    if self.expected_size is not None and seg.pos < self.expected_size:
                        raise _Retry(f"{self.url}: the body ended early at byte {seg.pos:,}")
                    # Its size is now known: close the segment, or its infinite `remaining` would make the
                    # worker take it again and ask for bytes past the end (a server without ranges then
                    # sends the whole file once more, rejected as an oversized body).
                    seg.end = seg.pos
                    return
                if seg.remaining > 0:
                    raise _Retry(f"{self.url}: the body ended early at byte {seg.pos:,}")
            except _Retry as exc:
                if not self.validator or not self.validator.ranges:
                    raise _Restart(str(exc)) from exc  # nothing to resume from without ranges
                failures = 0 if seg.done > before else failures + 1
                if failures > self.opt.retries:
                    raise NetworkError(
                        f"{exc}; gave up after {self.opt.retries} retries (the partial file is kept: "
                        "run the same command again to resume)"
                    ) from None
                await self.opt.sleep(self._delay(failures, exc.retry_after))
            finally:
                if response is not None:
                    await response.aclose()
                response = None

    def _check_range_response(self, response: httpx.Response, seg: _Segment) -> None:
        v = self.validator
        assert v is not None
        if not v.ranges:
            return
        if response.status_code != 206:
            raise _Restart(f"{self.url}: the server stopped honouring byte ranges (or the file changed)")
        if _content_range_start(response) != seg.pos or _content_range_total(response) != v.total:
            raise _Restart(f"{self.url}: the server answered a different byte range than asked")

    async def _stream(self, response: httpx.Response, seg: _Segment) -> None:
        limit = seg.end if seg.end is not None else (self.expected_size or self.opt.max_unknown_size)
        body = response.stream
        try:
            if isinstance(body, WireBody) and body.spliceable and seg.end is not None:
                await self._splice(response, body, seg)
            elif isinstance(body, WireBody):
                view = self._buffers.pop() if self._buffers else memoryview(bytearray(READ_SIZE))
                try:
                    while n := await body.read_into(view):
                        if self._take_chunk(response, seg, view[:n], limit):
                            return
                finally:
                    self._buffers.append(view)
            else:
                async for chunk in response.aiter_raw():
                    # A range read to its end is also read to the end of its message (no byte more is
                    # allowed), so that httpx keeps the connection for the next piece.
                    done = self._take_chunk(response, seg, chunk, limit)
                    if done and seg.end != self._requested_end(response):
                        return  # the rest of this range went to another worker: drop the connection
        except httpx.TransportError as exc:
            error = self._transport_error(self.url, exc)
            raise error from exc
        finally:
            self._report(force=True)

    async def _splice(self, response: httpx.Response, body: WireBody, seg: _Segment) -> None:
        """The body straight from the socket into the file (Linux, plain http, a Content-Length)."""
        while (room := seg.remaining) > 0:
            if (body.remaining or 0) > room and seg.end in self._natural_ends(response):
                # The same verdict as for a chunk past the end, given before the bytes are taken.
                raise IntegrityError(
                    f"{self.url}: the server sent more than the expected {seg.end:,} bytes; "
                    "the body was cut off and rejected (check the URL or the mirror)"
                )
            try:
                n = await body.splice_into(self.fd, seg.pos, room)
            except OSError as exc:
                raise write_error(exc, self.part) from exc
            if n == 0:
                return
            # While the splice waited for the socket, another worker may have taken this segment's tail:
            # the bytes past its new end are the same bytes that worker writes, but not this segment's.
            self._wrote(seg, min(n, seg.remaining))

    def _natural_ends(self, response: httpx.Response) -> tuple[int | None, int | None]:
        """Where a segment ends unless a worker took its tail: the file's end or the range asked for."""
        return (self.validator.total if self.validator else None), self._requested_end(response)

    def _wrote(self, seg: _Segment, n: int) -> None:
        seg.done += n
        if self.segments[self._front] is seg:
            self._advance_frontier()
        self._unreported += n
        self._report()

    def _take_chunk(
        self, response: httpx.Response, seg: _Segment, chunk: bytes | memoryview, limit: int
    ) -> bool:
        """Write one piece of a body at its place; True once the segment is complete."""
        end = seg.end if seg.end is not None else limit
        room = end - seg.pos
        if len(chunk) > room:
            if seg.end is None or seg.end in self._natural_ends(response):
                raise IntegrityError(
                    f"{self.url}: the server sent more than the expected {end:,} bytes; "
                    "the body was cut off and rejected (check the URL or the mirror)"
                )
            chunk = chunk[:room]  # the rest of this range was handed to another worker
        if chunk:
            self._write(chunk, seg.pos)
            self._wrote(seg, len(chunk))
        return seg.end is not None and seg.pos >= seg.end

    def _report(self, *, force: bool = False) -> None:
        """Progress, at most 20 times a second: a rich update per read would cost more than the read."""
        if self.progress is None or not self._unreported:
            return
        now = time.monotonic()
        if force or now >= self._report_at:
            self._report_at = now + 0.05
            self.progress.advance(self._unreported)
            self._unreported = 0

    @staticmethod
    def _requested_end(response: httpx.Response) -> int | None:
        value = response.request.headers.get("range", "")
        end = value.rpartition("-")[2]
        return int(end) + 1 if end.isdigit() else None

    def _write(self, chunk: bytes | memoryview, offset: int) -> None:
        write_at(self.fd, chunk, offset, self.part)

    def _delay(self, failures: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.opt.max_retry_after)
        cap = min(self.opt.max_backoff, self.opt.backoff * 2 ** (failures - 1))
        return self.opt.rng.uniform(0, cap)  # full jitter: many clients do not retry in lockstep

    async def _with_retries(self, open_: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        failures = 0
        while True:
            try:
                return await open_()
            except _Retry as exc:
                failures += 1
                if failures > self.opt.retries:
                    raise NetworkError(f"{exc}; gave up after {self.opt.retries} retries") from None
                await self.opt.sleep(self._delay(failures, exc.retry_after))


async def fetch_url(
    client: httpx.AsyncClient,
    url: str,
    part: Path,
    state_path: Path,
    *,
    expected_sha256: str,
    expected_size: int | None,
    options: TransferOptions | None = None,
    progress: TransferProgress | None = None,
) -> TransferResult:
    """Download ``url`` into ``part`` (resuming what an earlier run left) and return its digest.

    On success the file is complete and fsynced, and its descriptor is returned open in the result. On a
    transient failure the partial file and its sidecar are kept for a later resume; on a disk-full error,
    an oversized body or a size mismatch they are removed.
    """
    transfer = _Transfer(
        client,
        url,
        part,
        state_path,
        expected_sha256=expected_sha256,
        expected_size=expected_size,
        options=options or TransferOptions(),
        progress=progress,
    )
    try:
        return await transfer.run()
    except (IntegrityError, CacheError):
        transfer._discard()
        raise
    except BaseException:
        if transfer.hasher is not None:
            transfer.hasher.abort()
        transfer._close_fd()
        raise

"""A response body into its place in the partial file.

Three ways, fastest first: on the lean path over plain http, ``splice(2)`` from the socket into the file;
on the lean path otherwise, reads into one reused buffer, written with ``pwrite``; through httpx, its chunks.
Writes run in a thread, never on the event loop that reads the other connections. Every read also checks
the transfer's minimum pace (:mod:`.pace`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from whisperctl.errors import IntegrityError
from whisperctl.fetch.http.wire import WireBody
from whisperctl.fetch.transfer.answers import requested_end
from whisperctl.fetch.transfer.options import TransferProgress
from whisperctl.fetch.transfer.pace import Pace, Window
from whisperctl.fetch.transfer.plan import Plan, Segment
from whisperctl.fetch.transfer.request import Retry, shown, transport_error
from whisperctl.store.files import write_at, write_error
from whisperctl.store.hashing import FollowingHasher

__all__ = ["Sink", "stream_body"]

READ_SIZE = 1024 * 1024  # the wire path's read buffer
_GATHER = 256 * 1024  # reads gathered into one write: a thread hop per small read would cost the speed
_GATHER_TIME = 0.25  # ... but on a slow link, written (and shown) at least this often


class _Reporter:
    """Progress, at most 20 times a second: a rich update per read would cost more than the read."""

    def __init__(self, progress: TransferProgress | None) -> None:
        self._progress = progress
        self._unreported = 0
        self._at = 0.0

    def add(self, n: int, *, force: bool = False) -> None:
        self._unreported += n
        if self._progress is None or not self._unreported:
            return
        now = time.monotonic()
        if force or now >= self._at:
            self._at = now + 0.05
            self._progress.advance(self._unreported)
            self._unreported = 0


@dataclass
class Sink:
    """Where bodies land: the open partial file, its plan, the live hasher, the pace and the progress."""

    fd: int
    part: Path
    plan: Plan
    total: int | None  # the file's size, when known
    cap: int  # the most bytes a body of unknown length may have
    hasher: FollowingHasher
    pace: Pace
    progress: TransferProgress | None
    _reporter: _Reporter = field(init=False)
    buffers: list[memoryview] = field(default_factory=list)  # read buffers of the wire path, reused

    def __post_init__(self) -> None:
        self._reporter = _Reporter(self.progress)

    def wrote(self, seg: Segment, n: int) -> None:
        """``n`` bytes of ``seg`` are written (not yet flushed): count them everywhere."""
        seg.done += n
        if self.plan.is_front(seg):
            self.hasher.advance(self.plan.frontier())
        self._reporter.add(n)

    def flush_progress(self) -> None:
        self._reporter.add(0, force=True)

    async def write(self, data: bytes | memoryview, offset: int) -> None:
        await asyncio.to_thread(write_at, self.fd, data, offset, self.part)


def _too_long(url: str, end: int) -> IntegrityError:
    return IntegrityError(
        f"{shown(url)}: the server sent more than the expected {end:,} bytes; "
        "the body was cut off and rejected (check the URL or the mirror)"
    )


def _natural_ends(sink: Sink, response: httpx.Response) -> tuple[int | None, int | None]:
    """Where a segment ends unless a worker took its tail: the file's end or the range asked for."""
    return sink.total, requested_end(response.request.headers.get("range", ""))


async def _take(
    sink: Sink, response: httpx.Response, seg: Segment, data: bytes | memoryview, url: str
) -> bool:
    """Write one piece of a body at its place; True once the segment is complete."""
    end = seg.end if seg.end is not None else sink.cap
    room = end - seg.pos
    if len(data) > room:
        if seg.end is None or seg.end in _natural_ends(sink, response):
            raise _too_long(url, end)
        data = data[:room]  # the rest of this range was handed to another worker
    if data:
        await sink.write(data, seg.pos)
        # While the write ran in its thread, another worker may have taken this segment's tail: the bytes
        # past its new end are the same bytes that worker writes, but not this segment's.
        sink.wrote(seg, len(data) if seg.end is None else max(0, min(len(data), seg.end - seg.pos)))
    return seg.end is not None and seg.pos >= seg.end


def _received(sink: Sink, window: Window, n: int, url: str) -> None:
    """``n`` bytes came in: count them for the pace (received, not written: a slow link's bytes gathered
    for a write count from their arrival), and apply the minimum."""
    sink.pace.moved += n
    if (why := window.shortfall()) is not None:
        raise Retry(f"{shown(url)}: {why}")


async def stream_body(sink: Sink, response: httpx.Response, seg: Segment, url: str) -> None:
    """The body of ``response`` (a range starting at ``seg.pos``) into the file, until the segment or the
    body ends. A network failure is a :class:`.request.Retry` (the bytes written stay counted)."""
    window = sink.pace.window()
    body = response.stream
    try:
        if isinstance(body, WireBody) and body.spliceable and seg.end is not None:
            await _splice(sink, response, body, seg, window, url)
        elif isinstance(body, WireBody):
            await _read_wire(sink, response, body, seg, window, url)
        else:
            async for chunk in response.aiter_raw():
                # A range read to its end is also read to the end of its message (no byte more is
                # allowed), so that httpx keeps the connection for the next piece.
                done = await _take(sink, response, seg, chunk, url)
                if done and seg.end != requested_end(response.request.headers.get("range", "")):
                    return  # the rest of this range went to another worker: drop the connection
                _received(sink, window, len(chunk), url)
    except httpx.TransportError as exc:
        raise transport_error(url, exc) from exc
    finally:
        sink.flush_progress()


async def _read_wire(
    sink: Sink, response: httpx.Response, body: WireBody, seg: Segment, window: Window, url: str
) -> None:
    view = sink.buffers.pop() if sink.buffers else memoryview(bytearray(READ_SIZE))
    try:
        while True:
            filled, ended = 0, False
            want = min(_GATHER, int(min(seg.remaining, READ_SIZE)))  # bytes worth a write of their own
            until = time.monotonic() + _GATHER_TIME
            try:
                while filled < want:
                    n = await body.read_into(view[filled:])
                    if n == 0:
                        ended = True
                        break
                    filled += n
                    _received(sink, window, n, url)
                    if time.monotonic() >= until:
                        break
            except (httpx.TransportError, Retry):
                if filled:  # what arrived before the failure is good: keep it
                    await _take(sink, response, seg, view[:filled], url)
                raise
            if filled and await _take(sink, response, seg, view[:filled], url):
                return
            if ended:
                return
    finally:
        sink.buffers.append(view)


async def _splice(
    sink: Sink, response: httpx.Response, body: WireBody, seg: Segment, window: Window, url: str
) -> None:
    """The body straight from the socket into the file (Linux, plain http, a Content-Length)."""
    while (room := int(seg.remaining)) > 0:
        if (body.remaining or 0) > room and seg.end in _natural_ends(sink, response):
            # The same verdict as for a chunk past the end, given before the bytes are taken.
            raise _too_long(url, room + seg.pos)
        try:
            n = await body.splice_into(sink.fd, seg.pos, room)
        except OSError as exc:
            raise write_error(exc, sink.part) from exc
        if n == 0:
            return
        # While the splice waited for the socket, another worker may have taken this segment's tail:
        # the bytes past its new end are the same bytes that worker writes, but not this segment's.
        sink.wrote(seg, min(n, int(seg.remaining)))
        _received(sink, window, n, url)

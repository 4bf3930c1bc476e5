"""The bytes of one HTTP connection, for the lean client (:mod:`.wire`).

A non-blocking TCP socket driven by the running event loop; TLS goes through the ssl module's memory BIOs,
so the loop never waits on a blocking socket. Besides plain reads (for h11, which frames the messages), a
body can be read straight into a caller's buffer (:meth:`Connection.read_into`) or, on Linux for plain
http, spliced from the socket into a pipe and from the pipe into a file (:meth:`Connection.splice_into`):
one copy in the kernel instead of two and a trip through Python's buffers.

The socket side always stays on the event loop, non-blocking. The file side, which can block on the disk
(writeback, a slow or full device), runs in a worker thread, so that one slow write never holds up the
reads of the other connections.

Failures are httpx's own exceptions (``ConnectError``, ``ReadTimeout``, ``ReadError`` ...), so that the
engine treats both paths alike; a failure to write the file is the file's ``OSError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from whisperctl.errors import sanitized

__all__ = ["Connection", "Key", "can_splice", "disable_splice"]

Key = tuple[str, str, int]  # scheme, host, port
_RAW_READ = 256 * 1024  # TLS: ciphertext taken from the socket at a time
_RECEIVE = 64 * 1024  # bytes taken at a time for h11 (heads, chunked bodies)
_PIPE_SIZE = 1024 * 1024  # the default pipe-max-size; a pipe that cannot grow keeps its 64 KiB
_T = TypeVar("_T")


# splice(2) is used on Linux, until a file system is met that takes none.
_splice_works = sys.platform == "linux" and hasattr(os, "splice")


def can_splice() -> bool:
    """Whether :meth:`Connection.splice_into` may be used in this process."""
    return _splice_works


def disable_splice() -> None:
    """Bodies of plain http go through the read buffer from now on, in this whole process (done by itself
    on a file system that takes no splice; ``bench/download.py`` does it to measure the buffer path)."""
    global _splice_works
    _splice_works = False


def _detail(exc: BaseException) -> str:
    return sanitized(str(exc) or type(exc).__name__)


class Connection:
    """One TCP (or TLS) connection; non-blocking, driven by the running event loop."""

    def __init__(self, sock: socket.socket, key: Key) -> None:
        self.sock = sock
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()  # body bytes that came with the response head, not consumed yet
        self.tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._raw = memoryview(bytearray(0))
        self._scratch = memoryview(bytearray(_RECEIVE))
        self.used = False  # it answered a request before: a stale keep-alive connection may fail at once
        self._pipe: tuple[int, int] | None = None  # for splice: (read end, write end), made on first use

    @classmethod
    async def open(cls, key: Key, ssl_context: ssl.SSLContext | None, timeout: float) -> Connection:
        """Connect (and shake hands), all of it within ``timeout``: a handshake that never ends fails too."""
        try:
            return await asyncio.wait_for(cls._open(key, ssl_context, timeout), timeout)
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {key[1]}:{key[2]} within {timeout:g} s") from None

    @classmethod
    async def _open(cls, key: Key, ssl_context: ssl.SSLContext | None, timeout: float) -> Connection:
        _, host, port = key
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpx.ConnectError(_detail(exc)) from exc
        error: OSError | None = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            conn = cls(sock, key)
            if ssl_context is not None:
                try:
                    await conn._handshake(ssl_context, host, timeout)
                except BaseException:
                    conn.close()
                    raise
            return conn
        raise httpx.ConnectError(_detail(error) if error else f"{host}: no address") from error

    async def _handshake(self, context: ssl.SSLContext, host: str, timeout: float) -> None:
        self.tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
        self._raw = memoryview(bytearray(_RAW_READ))
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._pull(timeout):
                    self._incoming.write_eof()
            except ssl.SSLError as exc:  # SSLCertVerificationError included: the engine names it
                raise httpx.ConnectError(_detail(exc)) from exc
        await self._flush()

    def close(self) -> None:
        self.sock.close()
        if self._pipe is not None:
            for fd in self._pipe:
                os.close(fd)
            self._pipe = None

    def is_stale(self) -> bool:
        """An idle connection that is readable was closed by the server (or got junk): not reusable."""
        if self.buffer or self.sock.fileno() < 0:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    # -- raw socket ----------------------------------------------------------------------------------------
    async def _wait_readable(self, timeout: float) -> None:
        loop, fd = self.loop, self.sock.fileno()
        waiter: asyncio.Future[bool] = loop.create_future()

        def settle(ready: bool) -> None:
            if not waiter.done():
                waiter.set_result(ready)

        loop.add_reader(fd, settle, True)
        timer = loop.call_later(max(timeout, 0.0), settle, False)
        try:
            ready = await waiter
        finally:
            loop.remove_reader(fd)
            timer.cancel()
        if not ready:
            raise httpx.ReadTimeout(f"no data for {timeout:g} s")

    async def _recv_into(self, view: memoryview, timeout: float) -> int:
        while True:
            try:
                return self.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                await self._wait_readable(timeout)
            except OSError as exc:
                raise httpx.ReadError(_detail(exc)) from exc

    async def _pull(self, timeout: float) -> bool:
        """TLS: ciphertext from the socket into the incoming BIO; False at the end of the stream."""
        n = await self._recv_into(self._raw, timeout)
        if n:
            self._incoming.write(self._raw[:n])
        return n > 0

    async def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            await self._sendall(data)

    async def _sendall(self, data: bytes) -> None:
        try:
            await self.loop.sock_sendall(self.sock, data)
        except OSError as exc:
            raise httpx.WriteError(_detail(exc)) from exc

    # -- decoded stream ------------------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        if self.tls is None:
            await self._sendall(data)
            return
        try:
            self.tls.write(data)
        except ssl.SSLError as exc:
            raise httpx.WriteError(_detail(exc)) from exc
        await self._flush()

    async def _read_more(self, view: memoryview, timeout: float) -> int:
        """Bytes from the connection itself (never from ``buffer``) into ``view``; 0 at the end."""
        if self.tls is None:
            return await self._recv_into(view, timeout)
        # One TLS read gives one record (16 KiB at most): every record the ciphertext already taken holds
        # goes into ``view`` at once, so the caller's work per call is spread over up to 256 KiB.
        total = 0
        while True:
            try:
                # With a buffer, read() returns a count (typeshed says bytes).
                count: Any = self.tls.read(len(view) - total, view[total:])
                total += int(count)
                if total < len(view) and count:
                    continue
                return total
            except ssl.SSLWantReadError:
                if total:
                    return total
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return total  # close_notify, or a close without it: the framing says whether that is early
            except ssl.SSLError as exc:
                if total:
                    return total  # the bytes before the bad record first; the next read fails again
                raise httpx.ReadError(_detail(exc)) from exc
            await self._flush()  # TLS 1.3 may have something to say back (a key update)
            if not await self._pull(timeout):
                self._incoming.write_eof()

    async def receive(self, timeout: float) -> bytes:
        """The next bytes of the stream (at most 64 KiB, ``buffer`` first); empty at the end."""
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            return data
        n = await self._read_more(self._scratch, timeout)
        return bytes(self._scratch[:n])

    async def read_into(self, view: memoryview, timeout: float) -> int:
        """Bytes of the stream into ``view`` (``buffer`` first); 0 at the end."""
        if self.buffer:
            n = min(len(view), len(self.buffer))
            view[:n] = self.buffer[:n]
            del self.buffer[:n]
            return n
        return await self._read_more(view, timeout)

    # -- splice (Linux, plain sockets) --------------------------------------------------------------------
    async def splice_into(self, fd: int, offset: int, limit: int, timeout: float) -> int:
        """Move up to ``limit`` bytes of the stream into ``fd`` at ``offset`` without copying them through
        user space; 0 at the end of the stream. A failure to write is the file's ``OSError`` (and the
        connection is closed: bytes may be left in its pipe)."""
        try:
            if self.buffer:  # what came with the response head
                data = bytes(self.buffer[:limit])
                del self.buffer[: len(data)]
                await _in_thread(_pwrite_all, fd, memoryview(data), offset)
                return len(data)
            read_end, write_end = self._pipe or self._make_pipe()
            n = await self._fill_pipe(write_end, min(limit, _PIPE_SIZE), timeout)
            if n:
                await _in_thread(_drain, read_end, fd, offset, n)
            return n
        except BaseException:
            self.close()
            raise

    def _make_pipe(self) -> tuple[int, int]:
        self._pipe = os.pipe()
        with contextlib.suppress(OSError, AttributeError):
            import fcntl

            fcntl.fcntl(self._pipe[1], fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        return self._pipe

    async def _fill_pipe(self, write_end: int, want: int, timeout: float) -> int:
        """Socket -> pipe, on the loop: wait for the first bytes, then take what else is there already (one
        trip to the disk thread for all of it); 0 at the end of the stream."""
        moved = 0
        while moved < want:
            try:
                n = os.splice(self.sock.fileno(), write_end, want - moved, flags=os.SPLICE_F_NONBLOCK)
            except (BlockingIOError, InterruptedError):
                if moved:
                    break  # nothing more right now (or the pipe is full): write what came
                await self._wait_readable(timeout)
                continue
            except OSError as exc:
                if moved:
                    break  # the bytes in the pipe are good; the next call meets the failure again
                raise httpx.ReadError(_detail(exc)) from exc
            if n == 0:
                break
            moved += n
        return moved


async def _in_thread(func: Callable[..., _T], *args: Any) -> _T:
    """``func(*args)`` in the loop's executor. A cancelled caller still waits for the thread: it writes
    into the caller's file descriptor, which must not be closed (and its number reused) under it."""
    future = asyncio.get_running_loop().run_in_executor(None, func, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((future,))
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller hears of
        raise


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _drain(read_end: int, fd: int, offset: int, n: int) -> None:
    """Pipe -> file (in a worker thread: this may block on the disk): exactly the ``n`` bytes in the pipe."""
    moved = 0
    while moved < n and _splice_works:
        try:
            moved += os.splice(read_end, fd, n - moved, offset_dst=offset + moved)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            # A file system that takes no splice: the bytes in the pipe go the ordinary way, and so will
            # every later body of this process.
            disable_splice()
    while moved < n:
        data = os.read(read_end, n - moved)
        _pwrite_all(fd, memoryview(data), offset + moved)
        moved += len(data)

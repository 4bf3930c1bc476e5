"""A lean HTTP/1.1 client for the download engine's byte-range GETs.

Through httpx, every read of a response body passes through asyncio's transport, anyio, httpcore and h11,
with a copy and an allocation at several of them: on a fast link that work, not the network, bounds a
download on a small machine. Here a body goes from the socket (through the ssl module's memory BIOs for
https) straight into the engine's own reusable buffer, from which the engine writes it to disk.

On Linux, a plain-http body with a Content-Length can even skip user space: ``splice`` moves it from the
socket into a pipe and from the pipe into the file (one copy in the kernel instead of two and a trip
through Python's buffer).

The engine uses it only where it can stand in for httpx exactly: requests are built by the engine's
:class:`httpx.AsyncClient` (same headers), only on direct connections (when a proxy from the environment
applies to a URL, that URL goes through httpx), with the TLS context httpx would use (verification always on,
``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` honoured). Answers come back as :class:`httpx.Response` objects and
failures as httpx's own exceptions, so the engine's checks, retries and messages do not depend on the path.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import select
import socket
import ssl
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

__all__ = ["EngineClient", "WireBody", "WirePool"]

_MAX_HEAD = 64 * 1024  # a response head (status line and fields) larger than this is refused
_RAW_READ = 256 * 1024  # TLS: ciphertext taken from the socket at a time
_STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?: (.*))?")
_FIELD_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_Key = tuple[str, str, int]  # scheme, host, port
_PIPE_SIZE = 1024 * 1024  # the default pipe-max-size; a pipe that cannot grow keeps its 64 KiB
_SPLICE = sys.platform == "linux" and hasattr(os, "splice")


class _Connection:
    """One TCP (or TLS) connection; non-blocking, driven by the running event loop."""

    def __init__(self, sock: socket.socket, key: _Key) -> None:
        self.sock = sock
        self.key = key
        self.loop = asyncio.get_running_loop()
        self.buffer = bytearray()  # received (decrypted) bytes not consumed yet
        self.tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._raw = memoryview(bytearray(0))
        self.used = False  # it answered a request before: a stale keep-alive connection may fail at once
        self._pipe: tuple[int, int] | None = None  # for splice: (read end, write end), made on first use

    @classmethod
    async def open(cls, key: _Key, ssl_context: ssl.SSLContext | None, timeout: float) -> _Connection:
        try:
            return await asyncio.wait_for(cls._open(key, ssl_context, timeout), timeout)
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {key[1]}:{key[2]} within {timeout:g} s") from None

    @classmethod
    async def _open(cls, key: _Key, ssl_context: ssl.SSLContext | None, timeout: float) -> _Connection:
        _, host, port = key
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
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
        raise httpx.ConnectError(str(error) if error else f"{host}: no address") from error

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
                raise httpx.ConnectError(str(exc)) from exc
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
        timer = loop.call_later(timeout, settle, False)
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
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc

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
            raise httpx.WriteError(str(exc) or type(exc).__name__) from exc

    # -- decoded stream ------------------------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        if self.tls is None:
            await self._sendall(data)
            return
        try:
            self.tls.write(data)
        except ssl.SSLError as exc:
            raise httpx.WriteError(str(exc)) from exc
        await self._flush()

    async def _read_more(self, view: memoryview, timeout: float) -> int:
        """Bytes from the connection itself (never from ``buffer``) into ``view``; 0 at the end."""
        if self.tls is None:
            return await self._recv_into(view, timeout)
        while True:
            try:
                # With a buffer, read() returns a count (typeshed says bytes).
                count: Any = self.tls.read(len(view), view)
                return int(count)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0  # close_notify, or a close without it: the framing says whether that is early
            except ssl.SSLError as exc:
                raise httpx.ReadError(str(exc)) from exc
            await self._flush()  # TLS 1.3 may have something to say back (a key update)
            if not await self._pull(timeout):
                self._incoming.write_eof()

    async def read_into(self, view: memoryview, timeout: float) -> int:
        if self.buffer:
            n = min(len(view), len(self.buffer))
            view[:n] = self.buffer[:n]
            del self.buffer[:n]
            return n
        return await self._read_more(view, timeout)

    async def splice_into(self, fd: int, offset: int, limit: int, timeout: float) -> int:
        """Plain sockets on Linux: move up to ``limit`` bytes into ``fd`` at ``offset`` without copying them
        through user space; 0 at the end of the stream. A failure to write is the file's ``OSError``."""
        if self.buffer:  # what came with the response head
            n = min(limit, len(self.buffer))
            written = os.pwrite(fd, memoryview(self.buffer)[:n], offset)
            del self.buffer[:written]
            return written
        if self._pipe is None:
            self._pipe = os.pipe()
            try:
                import fcntl

                fcntl.fcntl(self._pipe[1], fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
            except (OSError, AttributeError):
                pass
        read_end, write_end = self._pipe
        while True:
            try:
                n = os.splice(
                    self.sock.fileno(), write_end, min(limit, _PIPE_SIZE), flags=os.SPLICE_F_NONBLOCK
                )
                break
            except (BlockingIOError, InterruptedError):
                await self._wait_readable(timeout)
            except OSError as exc:
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
        moved = 0
        try:
            try:
                while moved < n:
                    moved += os.splice(read_end, fd, n - moved, offset_dst=offset + moved)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                # A file system that takes no splice: the bytes in the pipe go the ordinary way, and so
                # will every later body of this process.
                global _SPLICE
                _SPLICE = False
                data = memoryview(os.read(read_end, n - moved))
                while data:
                    written = os.pwrite(fd, data, offset + moved)
                    data, moved = data[written:], moved + written
        except BaseException:
            self.close()  # bytes may be left in the pipe: this connection cannot go on
            raise
        return n

    async def _fill(self, timeout: float) -> bool:
        scratch = memoryview(bytearray(16 * 1024))
        n = await self._read_more(scratch, timeout)
        self.buffer += scratch[:n]
        return n > 0

    async def readline(self, timeout: float) -> bytes:
        """One CRLF-terminated line (without it), for chunk sizes and trailers."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise httpx.RemoteProtocolError("line too long in a chunked body")
            if not await self._fill(timeout):
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body: incomplete chunked read"
                )
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def read_head(self, timeout: float) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
        """Status, reason, fields and whether HTTP/1.1 of the next final response (1xx ones are skipped)."""
        while True:
            while (end := self.buffer.find(b"\r\n\r\n")) < 0:
                if len(self.buffer) > _MAX_HEAD:
                    raise httpx.RemoteProtocolError(f"response head over {_MAX_HEAD} bytes")
                if not await self._fill(timeout):
                    raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            lines = bytes(self.buffer[:end]).split(b"\r\n")
            del self.buffer[: end + 4]
            match = _STATUS_LINE.fullmatch(lines[0])
            if match is None:
                raise httpx.RemoteProtocolError(f"malformed status line {lines[0][:100]!r}")
            major, minor, status = int(match[1]), int(match[2]), int(match[3])
            fields = []
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep or not _FIELD_NAME.fullmatch(name):  # obsolete line folding included
                    raise httpx.RemoteProtocolError(f"malformed header line {line[:100]!r}")
                fields.append((name, value.strip(b" \t")))
            if 100 <= status < 200 and status != 101:
                continue  # interim response (100 Continue, 103 Early Hints): the final one follows
            return status, match[4] or b"", fields, (major, minor) >= (1, 1)


class WireBody(httpx.AsyncByteStream):
    """The body of one response. :meth:`read_into` is the engine's fast path; iterating works as for httpx."""

    def __init__(
        self,
        pool: WirePool,
        conn: _Connection,
        *,
        length: int | None,
        chunked: bool,
        keep_alive: bool,
        timeout: float,
    ) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self._length = length  # Content-Length framing: bytes left; None: chunked or until the close
        self._chunked = chunked
        self._chunk_left = 0
        self._keep_alive = keep_alive and (chunked or length is not None)
        self._timeout = timeout
        self._received = 0
        if length == 0:
            self._finish()

    async def read_into(self, view: memoryview) -> int:
        """Body bytes into ``view``; 0 at the end of the body. An incomplete body is an error."""
        conn = self._conn
        if conn is None:
            return 0
        try:
            if self._chunked:
                n = await self._read_chunked(conn, view)
            elif self._length is not None:
                n = await conn.read_into(view[: self._length], self._timeout)
                if n == 0:
                    raise httpx.RemoteProtocolError(
                        "peer closed connection without sending complete message body: received "
                        f"{self._received} bytes, expected {self._received + self._length}"
                    )
                self._length -= n
            else:
                n = await conn.read_into(view, self._timeout)
        except BaseException:
            self._discard()
            raise
        self._received += n
        if n == 0 or self._length == 0:
            self._finish()
        return n

    @property
    def spliceable(self) -> bool:
        """Whether :meth:`splice_into` may be used: Linux, plain http, a Content-Length."""
        conn = self._conn
        return _SPLICE and conn is not None and conn.tls is None and self._length is not None

    @property
    def remaining(self) -> int | None:
        """Body bytes still to come, when the framing tells (a Content-Length)."""
        return self._length

    async def splice_into(self, fd: int, offset: int, limit: int) -> int:
        """Up to ``limit`` body bytes into ``fd`` at ``offset``, through the kernel only; 0 at the end.

        A failure to write is the file's ``OSError`` (the connection is then closed); a network failure is
        an httpx exception, as for :meth:`read_into`.
        """
        conn = self._conn
        if conn is None or self._length is None:
            return 0
        try:
            n = await conn.splice_into(fd, offset, min(limit, self._length), self._timeout)
            if n == 0:
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body: received "
                    f"{self._received} bytes, expected {self._received + self._length}"
                )
        except BaseException:
            self._discard()
            raise
        self._length -= n
        self._received += n
        if self._length == 0:
            self._finish()
        return n

    async def _read_chunked(self, conn: _Connection, view: memoryview) -> int:
        while self._chunk_left == 0:
            line = await conn.readline(self._timeout)
            try:
                size = int(line.partition(b";")[0].strip(), 16)
            except ValueError:
                raise httpx.RemoteProtocolError(f"malformed chunk size {line[:100]!r}") from None
            if size == 0:
                while await conn.readline(self._timeout):  # trailer fields, up to the empty line
                    pass
                return 0
            self._chunk_left = size
        n = await conn.read_into(view[: self._chunk_left], self._timeout)
        if n == 0:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body: incomplete chunked read"
            )
        self._chunk_left -= n
        if self._chunk_left == 0 and await conn.readline(self._timeout) != b"":
            raise httpx.RemoteProtocolError("chunk not followed by CRLF")
        return n

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._keep_alive and not conn.buffer:
                self._pool.release(conn)
            else:
                conn.close()

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        view = memoryview(bytearray(64 * 1024))
        while n := await self.read_into(view):
            yield bytes(view[:n])

    async def aclose(self) -> None:
        self._discard()  # a body not read to its end leaves its connection unusable


class WirePool:
    """Keep-alive connections by (scheme, host, port) and the requests sent over them."""

    def __init__(
        self, ssl_context: Callable[[], ssl.SSLContext], *, proxied: frozenset[str] = frozenset()
    ) -> None:
        self._ssl = ssl_context  # made on the first https connection: loading CA certificates takes time
        self._proxied = proxied  # URL schemes that a proxy from the environment applies to
        self._idle: dict[_Key, list[_Connection]] = {}

    @classmethod
    def from_environment(cls, ssl_context: Callable[[], ssl.SSLContext]) -> WirePool | None:
        """A pool for the schemes no proxy variable covers (httpx's ``trust_env``), or None if both are."""
        if sys.platform == "win32":  # the event loop there cannot watch sockets (the engine needs pwrite too)
            return None
        proxies = urllib.request.getproxies()
        # Conservative: a scheme with any proxy setting goes through httpx, which also applies NO_PROXY.
        proxied = frozenset(s for s in ("http", "https") if proxies.get(s) or proxies.get("all"))
        return None if len(proxied) == 2 else cls(ssl_context, proxied=proxied)

    def handles(self, url: httpx.URL) -> bool:
        return url.scheme in ("http", "https") and url.scheme not in self._proxied

    def release(self, conn: _Connection) -> None:
        conn.used = True
        self._idle.setdefault(conn.key, []).append(conn)

    def _idle_connection(self, key: _Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.is_stale():
                return conn
            conn.close()
        return None

    async def send(
        self, request: httpx.Request, *, connect_timeout: float, read_timeout: float
    ) -> httpx.Response:
        """Send a GET built by httpx and return its response, the body not read yet."""
        url = request.url
        if request.method != "GET" or not self.handles(url):
            raise httpx.UnsupportedProtocol(
                f"the lean client only sends direct GETs, not {request.method} {url}"
            )
        https = url.scheme == "https"
        key = (url.scheme, url.host, url.port or (443 if https else 80))
        head = b"".join(
            [b"GET ", url.raw_path, b" HTTP/1.1\r\n"]
            + [b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw]
            + [b"\r\n"]
        )
        while True:
            conn = self._idle_connection(key)
            reused = conn is not None
            if conn is None:
                conn = await _Connection.open(key, self._ssl() if https else None, connect_timeout)
            try:
                await conn.send(head)
                status, reason, fields, http11 = await conn.read_head(read_timeout)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                conn.close()
                if reused and not conn.buffer:
                    continue  # the server closed the idle connection meanwhile: once more on another
                raise
            except BaseException:
                conn.close()
                raise
            break
        return httpx.Response(
            status,
            headers=fields,
            stream=self._body(conn, status, fields, http11, read_timeout),
            request=request,
            extensions={"reason_phrase": reason, "http_version": b"HTTP/1.1" if http11 else b"HTTP/1.0"},
        )

    def _body(
        self, conn: _Connection, status: int, fields: list[tuple[bytes, bytes]], http11: bool, timeout: float
    ) -> WireBody:
        """The body's framing (RFC 9112, section 6.3)."""
        values: dict[bytes, list[bytes]] = {}
        for name, value in fields:
            values.setdefault(name.lower(), []).append(value)
        tokens = {t.strip().lower() for v in values.get(b"connection", []) for t in v.split(b",")}
        keep_alive = http11 and b"close" not in tokens
        length: int | None = None
        chunked = False
        if status in (204, 304):
            length = 0
        elif b"transfer-encoding" in values:
            codings = [t.strip().lower() for v in values[b"transfer-encoding"] for t in v.split(b",")]
            chunked = codings[-1:] == [b"chunked"]
            keep_alive = keep_alive and chunked
        elif b"content-length" in values:
            lengths = {v.strip() for v in values[b"content-length"]}
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                conn.close()
                raise httpx.RemoteProtocolError(f"invalid Content-Length {values[b'content-length']!r}")
            length = int(next(iter(lengths)))
        return WireBody(self, conn, length=length, chunked=chunked, keep_alive=keep_alive, timeout=timeout)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class EngineClient(httpx.AsyncClient):
    """The engine's httpx client, with the lean pool that serves its direct connections (None: httpx only)."""

    def __init__(self, *, wire: WirePool | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wire = wire

    async def aclose(self) -> None:
        if self.wire is not None:
            await self.wire.aclose()
        await super().aclose()

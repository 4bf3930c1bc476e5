"""A lean HTTP/1.1 client for the download engine's byte-range GETs.

Through httpx, every read of a response body passes through asyncio's transport, anyio, httpcore and h11,
with a copy and an allocation at several of them: on a fast link that work, not the network, bounds a
download on a small machine. Here the framing is still h11's (the HTTP/1.1 state machine httpx itself
uses): it writes the request and decides what a valid response is (status line, fields, interim responses,
Content-Length against Transfer-Encoding, chunked bodies and trailers, whether the connection may be kept).
Only the body of a response framed by Content-Length is taken by hand, the one thing no library does: from
the socket straight into the engine's reused buffer (:meth:`WireBody.read_into`), or on Linux for plain
http from the socket into the file through a pipe (:meth:`WireBody.splice_into`, see :mod:`.connection`).

Everything the server controls is bounded: the response head (64 KiB, interim responses included), each
chunk-size line and the trailer section (h11's ``max_incomplete_event_size``: 64 KiB, or 128 KiB when it came
in one read with what was waiting), the number of fields (256), of interim responses (16), and
the time the whole head may take (the read timeout). Malformed input is :class:`httpx.RemoteProtocolError`
with a short message in which no control character of the server's survives.

The engine uses it only where it can stand in for httpx exactly: requests are built by the engine's
:class:`httpx.AsyncClient` (same headers), only on direct connections (when a proxy from the environment
applies to a URL, that URL goes through httpx), with the TLS context httpx would use. Answers come back as
:class:`httpx.Response` objects and failures as httpx's own exceptions, so the engine's checks, retries and
messages do not depend on the path.
"""

from __future__ import annotations

import ssl
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import h11
import httpx

from whisperctl.errors import sanitized
from whisperctl.fetch.http.connection import Connection, Key, can_splice

__all__ = ["MAX_FIELDS", "MAX_HEAD", "MAX_INTERIM", "EngineClient", "WireBody", "WirePool"]

MAX_HEAD = 64 * 1024  # a response head, a chunk-size line or a trailer section larger than this is refused
MAX_FIELDS = 256  # fields in one head (or trailer section); real servers send a few dozen
MAX_INTERIM = 16  # interim (1xx) responses before the final one


def _next_event(machine: h11.Connection, part: str) -> Any:
    """h11's next event; its verdict on malformed input as httpx's exception, sanitised."""
    try:
        event = machine.next_event()
    except h11.RemoteProtocolError as exc:
        detail = str(exc)
        if detail == "Receive buffer too long":
            detail = f"over {MAX_HEAD // 1024} KiB without an end"
        raise httpx.RemoteProtocolError(f"malformed {part}: {sanitized(detail, 160)}") from None
    fields = getattr(event, "headers", ())  # of a head, an interim head or a trailer section
    if len(fields) > MAX_FIELDS:
        raise httpx.RemoteProtocolError(f"malformed {part}: more than {MAX_FIELDS} fields")
    return event


async def _receive_head(conn: Connection, machine: h11.Connection, timeout: float) -> h11.Response:
    """The final response's head (interim ones skipped), complete within ``timeout``."""
    deadline = time.monotonic() + timeout
    interim = received = 0
    while True:
        event = _next_event(machine, "response head")
        if event is h11.NEED_DATA:
            left = deadline - time.monotonic()
            if left <= 0:
                raise httpx.ReadTimeout(f"no complete response head within {timeout:g} s")
            try:
                data = await conn.receive(left)
            except httpx.ReadTimeout:
                raise httpx.ReadTimeout(f"no complete response head within {timeout:g} s") from None
            if not data:  # httpx's words when nothing came
                raise httpx.RemoteProtocolError(
                    f"Server disconnected within the response head, after {received} bytes."
                    if received
                    else "Server disconnected without sending a response."
                )
            received += len(data)
            machine.receive_data(data)
            continue
        # h11 measures only what it still waits for: a large head that came whole is measured here.
        if received - len(machine.trailing_data[0]) > MAX_HEAD:
            raise httpx.RemoteProtocolError(f"malformed response head: over {MAX_HEAD // 1024} KiB")
        if isinstance(event, h11.InformationalResponse):
            interim += 1
            if interim > MAX_INTERIM:
                raise httpx.RemoteProtocolError(f"more than {MAX_INTERIM} interim (1xx) responses")
        elif isinstance(event, h11.Response):
            return event
        else:  # pragma: no cover - h11 gives nothing else before a response
            raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} before the response")


def _keeps_alive(response: h11.Response) -> bool:
    """h11's own rule for keeping a connection, for a body that h11 does not read (RFC 9112, 9.3)."""
    tokens = {t.strip().lower() for n, v in response.headers if n == b"connection" for t in v.split(b",")}
    return response.http_version >= b"1.1" and b"close" not in tokens


def _reason(reason: bytes) -> bytes:
    return sanitized(reason.decode("latin-1"), 80).encode("ascii", "backslashreplace")


class WireBody(httpx.AsyncByteStream):
    """The body of one response. :meth:`read_into` and :meth:`splice_into` are the engine's fast paths;
    iterating works as for httpx.

    A body framed by Content-Length is read by hand (``remaining`` counts it down); any other (chunked,
    until the close, none) is read through h11, which checks its framing."""

    def __init__(
        self,
        pool: WirePool,
        conn: Connection,
        *,
        length: int | None,
        machine: h11.Connection | None,
        keep_alive: bool,
        timeout: float,
    ) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self._length = length  # Content-Length framing: bytes left; None: h11 reads the body
        self._machine = machine
        self._pending = memoryview(b"")  # the rest of h11's last Data event
        self._keep_alive = keep_alive
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
            if self._machine is not None:
                n = await self._read_framed(conn, self._machine, view)
            else:
                assert self._length is not None
                n = self._check_progress(await conn.read_into(view[: self._length], self._timeout))
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
        return can_splice() and conn is not None and conn.tls is None and self._length is not None

    @property
    def remaining(self) -> int | None:
        """Body bytes still to come, when the framing tells (a Content-Length)."""
        return self._length

    async def splice_into(self, fd: int, offset: int, limit: int) -> int:
        """Up to ``limit`` body bytes into ``fd`` at ``offset``, through the kernel only; 0 at the end.

        The socket is read on the event loop, the file written in a worker thread. A failure to write is
        the file's ``OSError`` (the connection is then closed); a network failure is an httpx exception,
        as for :meth:`read_into`.
        """
        conn = self._conn
        if conn is None or self._length is None:
            return 0
        try:
            n = self._check_progress(
                await conn.splice_into(fd, offset, min(limit, self._length), self._timeout)
            )
        except BaseException:
            self._discard()
            raise
        self._received += n
        if self._length == 0:
            self._finish()
        return n

    def _check_progress(self, n: int) -> int:
        """Count ``n`` bytes of a Content-Length body; the end of the stream before its end is an error."""
        assert self._length is not None
        if n == 0 and self._length > 0:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body: received "
                f"{self._received} bytes, expected {self._received + self._length}"
            )
        self._length -= n
        return n

    async def _read_framed(self, conn: Connection, machine: h11.Connection, view: memoryview) -> int:
        while not self._pending:
            event = _next_event(machine, "response body")
            if event is h11.NEED_DATA:
                machine.receive_data(await conn.receive(self._timeout))
            elif isinstance(event, h11.Data):
                self._pending = memoryview(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self._keep_alive = (
                    self._keep_alive
                    and machine.our_state is h11.DONE
                    and machine.their_state is h11.DONE
                    and not machine.trailing_data[0]
                )
                return 0
            else:  # pragma: no cover - h11 ends every body with EndOfMessage or an error
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} in a response body")
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._keep_alive and not conn.buffer:
                self._pool.release(conn)
            else:
                conn.close()  # bytes past the body's end are junk: never read them as the next response

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
        self._idle: dict[Key, list[Connection]] = {}

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

    def release(self, conn: Connection) -> None:
        conn.used = True
        self._idle.setdefault(conn.key, []).append(conn)

    def _idle_connection(self, key: Key) -> Connection | None:
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
        while True:
            machine = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
            head = _request_head(machine, request)
            conn = self._idle_connection(key)
            reused = conn is not None
            if conn is None:
                conn = await Connection.open(key, self._ssl() if https else None, connect_timeout)
            try:
                await conn.send(head)
                response = await _receive_head(conn, machine, read_timeout)
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                conn.close()
                if reused and machine.their_http_version is None:
                    continue  # the server closed the idle connection meanwhile: once more on another
                raise
            except BaseException:
                conn.close()
                raise
            break
        return httpx.Response(
            response.status_code,
            headers=response.headers.raw_items(),
            stream=self._body(conn, machine, response, read_timeout),
            request=request,
            extensions={
                "reason_phrase": _reason(response.reason),
                "http_version": b"HTTP/" + response.http_version,
            },
        )

    def _body(
        self, conn: Connection, machine: h11.Connection, response: h11.Response, timeout: float
    ) -> WireBody:
        """The body's framing as h11 decided it (RFC 9112, 6.3); a Content-Length one is taken by hand."""
        names = {name for name, _ in response.headers}
        if response.status_code not in (204, 304) and b"transfer-encoding" not in names:
            length = next((int(v) for n, v in response.headers if n == b"content-length"), None)
            if length is not None:  # h11 checked it: digits, and duplicates that agree
                conn.buffer[:] = machine.trailing_data[0]  # body bytes that came with the head
                keep = _keeps_alive(response)
                return WireBody(self, conn, length=length, machine=None, keep_alive=keep, timeout=timeout)
        # Transfer-Encoding with Content-Length: chunked wins, and the connection is not kept (RFC 9112, 6.3).
        keep = not {b"transfer-encoding", b"content-length"} <= names
        return WireBody(self, conn, length=None, machine=machine, keep_alive=keep, timeout=timeout)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _request_head(machine: h11.Connection, request: httpx.Request) -> bytes:
    """The request as h11 writes it; a field value that is not one (a CR or LF in it) is refused here."""
    try:
        head = machine.send(
            h11.Request(method=b"GET", target=request.url.raw_path, headers=request.headers.raw)
        )
        end = machine.send(h11.EndOfMessage())
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(f"request not sent: {sanitized(str(exc), 160)}") from None
    return (head or b"") + (end or b"")


class EngineClient(httpx.AsyncClient):
    """The engine's httpx client, with the lean pool that serves its direct connections (None: httpx only)."""

    def __init__(self, *, wire: WirePool | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wire = wire

    async def aclose(self) -> None:
        if self.wire is not None:
            await self.wire.aclose()
        await super().aclose()

"""The lean HTTP/1.1 client (fetch/http/wire.py, connection.py) and the engine's client (client.py) against a
raw-socket server on 127.0.0.1 that controls every byte, plain and over TLS.

Each malformed-input branch must end as httpx's own exception (so the engine maps it like httpx's), with a
short message in which no control character chosen by the server survives. The bodies that are read by hand
(the reused buffer, splice) must give exactly the bytes sent, and connections are kept only when h11 and RFC
9112 allow it. The environment's broken settings are one usage line (exit 2) through the CLI.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from whisperctl.errors import UsageError, sanitized
from whisperctl.fetch.http import connection
from whisperctl.fetch.http.client import check_environment, describe_transport_error, make_client
from whisperctl.fetch.http.wire import MAX_FIELDS, MAX_HEAD, MAX_INTERIM, WireBody, WirePool
from whisperctl.fetch.transfer import TransferOptions

from .helpers import Cli
from .httpserver import TLSUnavailableError, _make_certificate

# What the server does for one request: bytes to send (then it waits for the next request on the same
# connection), or a function that gets the socket and does what it likes (closing it ends the connection).
Reply = bytes | Callable[[socket.socket], None]


class RawServer:
    """Answers the n-th request (counted over all connections) with ``replies(n)``; counts connections."""

    def __init__(self, replies: Callable[[int], Reply], *, tls: ssl.SSLContext | None = None) -> None:
        self._replies = replies
        self._tls = tls
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.requests: list[bytes] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/f") -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}{path}"

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            sock.settimeout(10)
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                with self._lock:
                    self.requests.append(head)
                    n = len(self.requests) - 1
                reply = self._replies(n)
                if callable(reply):
                    reply(sock)
                    if sock.fileno() < 0:
                        return
                else:
                    sock.sendall(reply)
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    def close(self) -> None:
        self._closing.set()
        self.listener.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    try:
        return _make_certificate(tmp_path_factory.mktemp("tls"))
    except TLSUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=["http", "https"])
def serve(request: pytest.FixtureRequest, tls_files: tuple[Path, Path]) -> Iterator[Callable[..., RawServer]]:
    """Makes raw servers that give every request the same reply, plain or TLS (the parameter)."""
    servers: list[RawServer] = []
    context = None
    if request.param == "https":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*tls_files)

    def make(reply: Reply) -> RawServer:
        server = RawServer(lambda _n: reply, tls=context)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def _pool(tls_files: tuple[Path, Path]) -> WirePool:
    return WirePool(lambda: ssl.create_default_context(cafile=str(tls_files[0])))


async def _get(
    pool: WirePool, url: str, *, read_timeout: float = 5.0, headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        request = client.build_request("GET", url, headers=headers)
    return await pool.send(request, connect_timeout=5.0, read_timeout=read_timeout)


async def _body(response: httpx.Response, size: int = 64 * 1024) -> bytes:
    stream = response.stream
    assert isinstance(stream, WireBody)
    view = memoryview(bytearray(size))
    out = bytearray()
    while n := await stream.read_into(view):
        out += view[:n]
    return bytes(out)


def fetch(
    server: RawServer, tls_files: tuple[Path, Path], times: int = 1, **kw: float
) -> list[tuple[httpx.Response, bytes]]:
    """``times`` GETs one after another over one pool: (response, body) each."""

    async def run() -> list[tuple[httpx.Response, bytes]]:
        pool = _pool(tls_files)
        try:
            out = []
            for _ in range(times):
                response = await _get(pool, server.url(), **kw)
                out.append((response, await _body(response)))
            return out
        finally:
            await pool.aclose()

    return asyncio.run(run())


def refused(
    server: RawServer,
    tls_files: tuple[Path, Path],
    kind: type[Exception] = httpx.RemoteProtocolError,
    **kw: float,
) -> str:
    """The message of the error that the GET (head or body) ends with; checked to be short and clean."""
    with pytest.raises(kind) as info:
        fetch(server, tls_files, **kw)
    message = str(info.value)
    assert len(message) < 300, message
    assert message == sanitized(message, 1000), f"control characters in {message!r}"
    return message


def response(head: bytes, body: bytes = b"") -> bytes:
    return head + b"\r\n\r\n" + body


OK = b"HTTP/1.1 200 OK"


# -- malformed heads ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 2000 OK",  # four-digit status
        b"HTTP/1.1 OK",  # no status
        b"HTTX/1.1 200 OK",  # not HTTP
        b"HTTP/11 200 OK",  # no version dot
        b"garbage",
        b"HTTP/1.1 200 OK\x00evil",  # NUL in the reason
        b"HTTP/1.1 200 OK\rX-Injected: 1",  # a bare CR in the reason
        b"\x1b[2J\x1b[31mHTTP/1.1 200 OK",  # terminal escapes before the status line
    ],
)
def test_malformed_status_lines_are_refused(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path], head: bytes
) -> None:
    message = refused(serve(response(head + b"\r\nContent-Length: 0")), tls_files)
    assert message.startswith("malformed response head")


@pytest.mark.parametrize(
    "field",
    [
        b"No-Colon",
        b"Bad Name: x",  # space in the name
        b"X-A : x",  # space before the colon
        b": no name",
        b"X-A: a\x00b",  # NUL in a value
        b"X-A: a\rb",  # bare CR in a value
        b"X-A: a\r\rX-Injected: 1",
        b"X-\x1b[31mA: v",  # escape in a name
        b"X-A" + b"\x1b" * 5000 + b": v",  # a long, hostile name: the message quotes it shortened
    ],
)
def test_malformed_fields_are_refused(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path], field: bytes
) -> None:
    message = refused(serve(response(OK + b"\r\n" + field + b"\r\nContent-Length: 0")), tls_files)
    assert message.startswith("malformed response head")


def test_an_enormous_head_is_refused_at_64_kib(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    fields = b"".join(b"X-Padding-%d: %s\r\n" % (i, b"v" * 1000) for i in range(100))  # about 100 KiB
    message = refused(serve(OK + b"\r\n" + fields + b"Content-Length: 0\r\n\r\n"), tls_files)
    assert f"over {MAX_HEAD // 1024} KiB" in message


def test_a_head_that_never_ends_is_refused_at_64_kib(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    def endless(sock: socket.socket) -> None:
        sock.sendall(OK + b"\r\n")
        for _ in range(10_000):  # 10 MiB at most; the client gives up long before
            sock.sendall(b"X-More: " + b"m" * 1000 + b"\r\n")

    message = refused(serve(endless), tls_files)
    assert f"over {MAX_HEAD // 1024} KiB" in message


@pytest.mark.parametrize("count", [MAX_FIELDS + 1, 5000])
def test_too_many_fields_are_refused(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path], count: int
) -> None:
    fields = b"".join(b"A%d: b\r\n" % i for i in range(count))
    message = refused(serve(OK + b"\r\n" + fields + b"Content-Length: 0\r\n\r\n"), tls_files)
    assert f"more than {MAX_FIELDS} fields" in message or "KiB" in message


def test_a_dripping_head_times_out_as_a_whole(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    def drip(sock: socket.socket) -> None:
        for byte in OK + b"\r\nX-Slow: " + b"s" * 100:
            sock.sendall(bytes([byte]))
            time.sleep(0.02)  # each byte well within the read timeout, the head never within it

    t0 = time.monotonic()
    message = refused(serve(drip), tls_files, httpx.ReadTimeout, read_timeout=0.5)
    assert "response head" in message
    assert time.monotonic() - t0 < 3


def test_a_server_that_closes_without_answering(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    assert "disconnected" in refused(serve(lambda sock: sock.close()), tls_files)


def test_a_head_cut_by_the_close_is_refused(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    def cut(sock: socket.socket) -> None:
        sock.sendall(OK + b"\r\nContent-Le")
        sock.close()

    refused(serve(cut), tls_files)


def test_server_text_in_a_reason_phrase_is_sanitised(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    reason = b"Not \x1b[31mFound\x1b[0m\x7f" + b"x" * 5000
    ((resp, body),) = fetch(
        serve(response(b"HTTP/1.1 404 " + reason + b"\r\nContent-Length: 2", b"no")), tls_files
    )
    assert (resp.status_code, body) == (404, b"no")
    assert "\x1b" not in resp.reason_phrase and "\x7f" not in resp.reason_phrase
    assert resp.reason_phrase.startswith("Not \\x1b[31mFound") and len(resp.reason_phrase) < 120


# -- Content-Length and Transfer-Encoding ------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields",
    [
        b"Content-Length: -1",
        b"Content-Length: abc",
        b"Content-Length: 1e3",
        b"Content-Length: 0x10",
        b"Content-Length: 5, 6",  # conflicting, in one field
        b"Content-Length: 5\r\nContent-Length: 6",  # conflicting, in two
        b"Content-Length: 123456789012345678901234567890",  # absurd
        b"Transfer-Encoding: gzip",  # not a coding this client takes
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    ],
)
def test_framing_absurdities_are_refused(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path], fields: bytes
) -> None:
    message = refused(serve(response(OK + b"\r\n" + fields, b"hello")), tls_files)
    assert message.startswith("malformed response head")


def test_duplicated_content_lengths_that_agree_are_one(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    server = serve(response(OK + b"\r\nContent-Length: 5\r\nContent-Length: 5, 5", b"hello"))
    assert [(r.status_code, body) for r, body in fetch(server, tls_files, times=2)] == [(200, b"hello")] * 2
    assert server.connections == 1


def test_chunked_wins_over_content_length_and_the_connection_is_dropped(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    # RFC 9112, 6.3: Transfer-Encoding overrides Content-Length, and such a connection is not reused.
    chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    server = serve(response(OK + b"\r\nContent-Length: 3\r\nTransfer-Encoding: chunked", chunked))
    results = fetch(server, tls_files, times=2)
    assert [body for _, body in results] == [b"hello world"] * 2
    assert [r.stream.remaining for r, _ in results] == [None, None]  # type: ignore[attr-defined]
    assert server.connections == 2


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",  # not hex
        b"-5\r\nhello\r\n0\r\n\r\n",  # negative
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"1" * 21 + b"\r\nhello\r\n0\r\n\r\n",  # more than 20 hex digits
        b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the data
        b"5;" + b"e" * (3 * MAX_HEAD) + b"\r\nhello\r\n0\r\n\r\n",  # an enormous chunk extension
        b"5\x00\r\nhello\r\n0\r\n\r\n",
    ],
)
def test_invalid_chunks_are_refused(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path], body: bytes
) -> None:
    message = refused(serve(response(OK + b"\r\nTransfer-Encoding: chunked", body)), tls_files)
    assert message.startswith("malformed response body")


def test_chunks_and_trailers_within_bounds_are_read(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    body = b"3;ext=1\r\nabc\r\n1\r\nd\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n"
    server = serve(response(OK + b"\r\nTransfer-Encoding: chunked", body))
    assert [body for _, body in fetch(server, tls_files, times=2)] == [b"abcd"] * 2
    assert server.connections == 1  # chunked, complete: kept


def test_endless_trailers_are_refused(serve: Callable[..., RawServer], tls_files: tuple[Path, Path]) -> None:
    def endless(sock: socket.socket) -> None:
        sock.sendall(response(OK + b"\r\nTransfer-Encoding: chunked", b"2\r\nhi\r\n0\r\n"))
        for i in range(100_000):
            sock.sendall(b"X-Trailer-%d: %s\r\n" % (i, b"t" * 100))

    message = refused(serve(endless), tls_files)
    assert message.startswith("malformed response body") and "KiB" in message


def test_too_many_trailers_are_refused(serve: Callable[..., RawServer], tls_files: tuple[Path, Path]) -> None:
    trailers = b"".join(b"T%d: v\r\n" % i for i in range(MAX_FIELDS + 1))
    body = b"2\r\nhi\r\n0\r\n" + trailers + b"\r\n"
    message = refused(serve(response(OK + b"\r\nTransfer-Encoding: chunked", body)), tls_files)
    assert f"more than {MAX_FIELDS} fields" in message


def test_a_chunked_body_cut_by_the_close_is_refused(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    def cut(sock: socket.socket) -> None:
        sock.sendall(response(OK + b"\r\nTransfer-Encoding: chunked", b"5\r\nhel"))
        sock.close()

    assert "incomplete chunked read" in refused(serve(cut), tls_files)


def test_a_content_length_body_cut_by_the_close_is_refused(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    def cut(sock: socket.socket) -> None:
        sock.sendall(response(OK + b"\r\nContent-Length: 100", b"x" * 10))
        sock.close()

    assert "received 10 bytes, expected 100" in refused(serve(cut), tls_files)


# -- interim responses -------------------------------------------------------------------------------------
def test_interim_responses_are_skipped(serve: Callable[..., RawServer], tls_files: tuple[Path, Path]) -> None:
    interim = response(b"HTTP/1.1 100 Continue") + response(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload"
    )
    ((resp, body),) = fetch(serve(interim + response(OK + b"\r\nContent-Length: 2", b"ok")), tls_files)
    assert (resp.status_code, body) == (200, b"ok")


def test_endless_interim_responses_are_refused(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    def endless(sock: socket.socket) -> None:
        for _ in range(100_000):
            sock.sendall(response(b"HTTP/1.1 102 Processing"))

    assert f"more than {MAX_INTERIM} interim" in refused(serve(endless), tls_files)


def test_an_unasked_protocol_switch_is_refused(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    refused(
        serve(response(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade")),
        tls_files,
    )


# -- keep-alive --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("head", "connections"),
    [
        (OK, 1),
        (OK + b"\r\nConnection: close", 2),
        (b"HTTP/1.0 200 OK", 2),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive", 2),  # h11 keeps only HTTP/1.1 connections
    ],
)
def test_connections_are_kept_only_when_allowed(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path], head: bytes, connections: int
) -> None:
    def reply(sock: socket.socket) -> None:
        sock.sendall(response(head + b"\r\nContent-Length: 5", b"hello"))
        if b"HTTP/1.0" in head or b"close" in head:
            sock.close()

    server = serve(reply)
    assert [body for _, body in fetch(server, tls_files, times=2)] == [b"hello"] * 2
    assert server.connections == connections


def test_bytes_past_the_body_drop_the_connection(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    server = serve(response(OK + b"\r\nContent-Length: 5", b"helloJUNK"))
    assert [body for _, body in fetch(server, tls_files, times=2)] == [b"hello"] * 2
    assert server.connections == 2  # JUNK is never read as the next response


def test_a_body_until_the_close(serve: Callable[..., RawServer], tls_files: tuple[Path, Path]) -> None:
    def reply(sock: socket.socket) -> None:
        sock.sendall(response(OK, b"all of it"))
        sock.close()

    server = serve(reply)
    assert [body for _, body in fetch(server, tls_files, times=2)] == [b"all of it"] * 2
    assert server.connections == 2


def test_an_idle_connection_closed_by_the_server_is_replaced(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    def reply(sock: socket.socket) -> None:
        sock.sendall(response(OK + b"\r\nContent-Length: 2", b"ok"))  # keep-alive promised ...
        sock.close()  # ... and broken

    server = serve(reply)
    assert [body for _, body in fetch(server, tls_files, times=3)] == [b"ok"] * 3
    assert server.connections == 3


def test_a_request_field_with_cr_or_lf_is_never_sent(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path]
) -> None:
    server = serve(response(OK + b"\r\nContent-Length: 0"))

    async def run() -> None:
        pool = _pool(tls_files)
        try:
            async with httpx.AsyncClient() as client:
                request = client.build_request("GET", server.url())
            request.headers["If-Range"] = '"etag"\r\nX-Injected: 1'
            with pytest.raises(httpx.LocalProtocolError):
                await pool.send(request, connect_timeout=5, read_timeout=5)
        finally:
            await pool.aclose()

    asyncio.run(run())
    assert server.requests == []


# -- the bodies read by hand -------------------------------------------------------------------------------
PAYLOAD = random.Random(11).randbytes(3 * 1024 * 1024 + 17)


@pytest.mark.parametrize("view_size", [1000, 1 << 20])
def test_the_reused_buffer_gives_exact_bytes(
    serve: Callable[..., RawServer], tls_files: tuple[Path, Path], view_size: int
) -> None:
    server = serve(response(OK + b"\r\nContent-Length: %d" % len(PAYLOAD), PAYLOAD))

    async def run() -> list[bytes]:
        pool = _pool(tls_files)
        try:
            bodies = []
            for _ in range(2):
                resp = await _get(pool, server.url())
                assert resp.stream.remaining == len(PAYLOAD)  # type: ignore[attr-defined]
                bodies.append(await _body(resp, view_size))
            return bodies
        finally:
            await pool.aclose()

    assert asyncio.run(run()) == [PAYLOAD, PAYLOAD]
    assert server.connections == 1


@pytest.mark.skipif(not connection.can_splice(), reason="splice is Linux-only")
def test_splice_gives_exact_bytes_at_the_offsets_asked(tmp_path: Path, tls_files: tuple[Path, Path]) -> None:
    server = RawServer(lambda _n: response(OK + b"\r\nContent-Length: %d" % len(PAYLOAD), PAYLOAD))
    target = tmp_path / "part"
    base = 4096  # the body goes at an offset, as a later range of a file does

    async def run() -> None:
        pool = _pool(tls_files)
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            for _ in range(2):
                resp = await _get(pool, server.url())
                body = resp.stream
                assert isinstance(body, WireBody) and body.spliceable
                pos = 0
                while n := await body.splice_into(fd, base + pos, 300_000):
                    assert n <= 300_000
                    pos += n
                assert pos == len(PAYLOAD) and body.remaining == 0
        finally:
            os.close(fd)
            await pool.aclose()

    try:
        asyncio.run(run())
    finally:
        server.close()
    data = target.read_bytes()
    assert data[base:] == PAYLOAD and data[:base] == b"\0" * base
    assert server.connections == 1


@pytest.mark.skipif(not connection.can_splice(), reason="splice is Linux-only")
def test_a_splice_cut_by_the_close_is_refused_and_the_bytes_before_are_written(
    tmp_path: Path, tls_files: tuple[Path, Path]
) -> None:
    def cut(sock: socket.socket) -> None:
        sock.sendall(response(OK + b"\r\nContent-Length: %d" % len(PAYLOAD), PAYLOAD[:100_000]))
        sock.close()

    server = RawServer(lambda _n: cut)
    target = tmp_path / "part"

    async def run() -> int:
        pool = _pool(tls_files)
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
        pos = 0

        async def splice_all(body: WireBody) -> None:
            nonlocal pos
            while n := await body.splice_into(fd, pos, 1 << 20):
                pos += n

        try:
            body = (await _get(pool, server.url())).stream
            assert isinstance(body, WireBody)
            with pytest.raises(httpx.RemoteProtocolError, match="received 100000 bytes"):
                await splice_all(body)
            return pos
        finally:
            os.close(fd)
            await pool.aclose()

    try:
        written = asyncio.run(run())
    finally:
        server.close()
    assert written == 100_000 and target.read_bytes() == PAYLOAD[:100_000]


def test_tls_bodies_are_not_spliceable(tls_files: tuple[Path, Path]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*tls_files)
    server = RawServer(lambda _n: response(OK + b"\r\nContent-Length: 2", b"ok"), tls=context)

    async def run() -> bool:
        pool = _pool(tls_files)
        try:
            resp = await _get(pool, server.url())
            spliceable = resp.stream.spliceable  # type: ignore[attr-defined]
            assert await _body(resp) == b"ok"
            return bool(spliceable)
        finally:
            await pool.aclose()

    try:
        assert asyncio.run(run()) is False
    finally:
        server.close()


# -- the environment -------------------------------------------------------------------------------------
def _error_lines(result_stderr: str) -> list[str]:
    return [line for line in result_stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SSL_CERT_FILE": "{tmp}/missing.pem"}, "SSL_CERT_FILE"),
        ({"SSL_CERT_FILE": "{tmp}/not-pem.txt"}, "SSL_CERT_FILE"),
        ({"SSL_CERT_FILE": "{tmp}"}, "SSL_CERT_FILE"),
        ({"SSL_CERT_FILE": None, "SSL_CERT_DIR": "{tmp}/missing"}, "SSL_CERT_DIR"),
        ({"SSL_CERT_FILE": None, "SSL_CERT_DIR": "{tmp}"}, "SSL_CERT_DIR"),
        ({"HTTPS_PROXY": "socks5://127.0.0.1:1080", "https_proxy": None}, "HTTPS_PROXY"),
        ({"http_proxy": "ftp://proxy.example"}, "http_proxy"),
        ({"ALL_PROXY": "http://[::1", "all_proxy": None}, "ALL_PROXY"),
        ({"all_proxy": "http://proxy.example:99999"}, "all_proxy"),
        ({"https_proxy": "http://"}, "https_proxy"),
    ],
)
def test_a_broken_environment_is_one_usage_line(
    cli: Cli, tmp_path: Path, env: dict[str, str | None], variable: str
) -> None:
    (tmp_path / "not-pem.txt").write_text("this is not a certificate\n")
    filled = {k: None if v is None else v.format(tmp=tmp_path) for k, v in env.items()}
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        for spelled in (name, name.upper()):
            filled.setdefault(spelled, None)
    result = cli(
        "--cache-dir",
        str(tmp_path / "cache"),
        "download",
        "tiny",
        "--mirror",
        "http://127.0.0.1:9/",
        env=filled,
    )  # type: ignore[arg-type]
    assert result.exit_code == 2, result.stderr
    (line,) = _error_lines(result.stderr)
    assert line.startswith("error: ") and variable + "=" in line and "unset" in line
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))


def test_a_broken_bundle_that_looks_like_pem_is_a_usage_error_at_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    check_environment()  # looks like PEM: loading it is left to the first https request

    async def run() -> None:
        client = make_client(timeout=TransferOptions().timeout(), max_connections=2)
        try:
            with pytest.raises(UsageError, match=r"SSL_CERT_FILE=.*unreadable"):
                await client.get("https://127.0.0.1:9/")
        finally:
            await client.aclose()

    asyncio.run(run())


def test_check_environment_accepts_good_settings(tls_files: tuple[Path, Path]) -> None:
    check_environment(
        {
            "SSL_CERT_FILE": str(tls_files[0]),
            "HTTP_PROXY": "proxy.example:3128",
            "https_proxy": "https://p:8443",
        }
    )
    check_environment(
        {"http_proxy": "", "HTTP_PROXY": "socks5://ignored"}
    )  # lower-case and empty wins, as urllib


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_proxy_is_named_as_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = f"http://127.0.0.1:{_closed_port()}"
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "direct.example")
    origin = "http://origin.example/model.pt"

    async def run() -> list[str]:
        client = make_client(timeout=TransferOptions().timeout(), max_connections=2)
        try:
            assert client.wire is not None and not client.wire.handles(httpx.URL(origin))  # type: ignore[attr-defined]
            with pytest.raises(httpx.ConnectError) as info:
                await client.get(origin)
            exc = info.value
            return [
                str(describe_transport_error(client, origin, exc)),
                str(describe_transport_error(client, "http://direct.example/x.pt", exc)),
                str(describe_transport_error(client, "https://origin.example/x.pt", exc)),
            ]
        finally:
            await client.aclose()

    proxied, direct, https = asyncio.run(run())
    assert f"cannot reach the proxy {proxy} (from HTTP_PROXY)" in proxied and origin in proxied
    assert "unset HTTP_PROXY" in proxied
    assert "proxy" not in direct and direct.startswith("ConnectError from http://direct.example/x.pt")
    assert "proxy" not in https


def test_a_server_chosen_message_is_sanitised_when_described() -> None:
    exc = httpx.RemoteProtocolError("bad \x1b[2Jthing\r\nX-Injected: 1" + "z" * 10_000)

    async def run() -> str:
        async with httpx.AsyncClient() as client:
            return str(describe_transport_error(client, "http://h.example/f", exc))

    message = asyncio.run(run())
    assert "\x1b" not in message and "\r" not in message and "\n" not in message and len(message) < 300


def test_a_cancelled_disk_write_is_waited_for() -> None:
    # The worker thread writes into the caller's file descriptor: a cancelled caller must not go on (and
    # close that descriptor, whose number the next open reuses) while the thread still writes.
    release = threading.Event()
    done: list[bool] = []

    def write() -> None:
        release.wait(5)
        done.append(True)

    async def run() -> None:
        task = asyncio.create_task(connection._in_thread(write))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.2)
        assert not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert done == [True]

    asyncio.run(run())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text", "plain text"),
        (b"OK\x1b[31m\r\nX-Injected: 1\x00", "OK\\x1b[31m\\r\\nX-Injected: 1\\x00"),
        ("bidi \u202eevil\u2028next", "bidi \\u202eevil\\u2028next"),
        (b"\xff\xfe latin", "\\xff\\xfe latin"),
        ("x" * 300, "x" * 197 + "... (300 characters)"),
        (b"\x1b" * 10_000_000, "\\x1b" * 49 + "\\... (10,000,000 bytes)"),
    ],
)
def test_sanitized_text_has_no_control_characters_and_a_bounded_length(
    value: str | bytes, expected: str
) -> None:
    assert sanitized(value) == expected
    assert sanitized(value).isprintable()

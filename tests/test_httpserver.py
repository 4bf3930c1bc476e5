"""Self-tests of the fault-injecting test server: each switch does what it says, on real sockets."""

from __future__ import annotations

import email.utils
import socket
import ssl
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .httpserver import HTTPServer, TLSUnavailableError, serve

DATA = bytes(range(256)) * 40  # 10 240 bytes, every offset distinguishable modulo 256


@pytest.fixture
def server() -> Iterator[HTTPServer]:
    with serve({"/f": DATA}) as srv:
        yield srv


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as c:
        yield c


def raw_get(server: HTTPServer, path: str, extra: str = "") -> tuple[bytes, bytes, BaseException | None]:
    """GET over a bare socket, reading until EOF or error: (head, body, the error that ended it)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
        received, error = b"", None
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError as exc:
            error = exc
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body, error


def test_get_and_head_send_validators(server: HTTPServer, client: httpx.Client) -> None:
    r = client.get(server.url("/f"))
    assert r.status_code == 200
    assert r.content == DATA
    assert r.headers["content-length"] == str(len(DATA))
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["etag"].startswith('"')  # strong, not W/
    assert email.utils.parsedate_to_datetime(r.headers["last-modified"])
    h = client.head(server.url("/f"))
    assert (h.status_code, h.content, h.headers["etag"]) == (200, b"", r.headers["etag"])
    assert h.headers["content-length"] == str(len(DATA))
    assert [(q.method, q.bytes_sent) for q in server.requests] == [("GET", len(DATA)), ("HEAD", 0)]


RANGES = {
    "bytes=2-5": (2, 5),
    "bytes=10000-": (10000, 10239),
    "bytes=-3": (10237, 10239),
    "bytes=5-99999": (5, 10239),
}


@pytest.mark.parametrize("header", RANGES)
def test_single_range_is_206(server: HTTPServer, client: httpx.Client, header: str) -> None:
    first, last = RANGES[header]
    r = client.get(server.url("/f"), headers={"Range": header})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert r.content == DATA[first : last + 1]


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=-0", "bytes=99999-100000"])
def test_unsatisfiable_range_is_416(server: HTTPServer, client: httpx.Client, header: str) -> None:
    r = client.get(server.url("/f"), headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "bytes=9-3", "items=0-1"])
def test_multi_or_invalid_range_gets_full_body(server: HTTPServer, client: httpx.Client, header: str) -> None:
    r = client.get(server.url("/f"), headers={"Range": header})
    assert (r.status_code, r.content) == (200, DATA)


def test_if_range_and_replace(server: HTTPServer, client: httpx.Client) -> None:
    old = client.head(server.url("/f")).headers
    for validator in (old["etag"], old["last-modified"]):
        r = client.get(server.url("/f"), headers={"Range": "bytes=0-9", "If-Range": validator})
        assert (r.status_code, r.content) == (206, DATA[:10])
    server.replace("/f", b"new content")
    new = client.head(server.url("/f")).headers
    assert new["etag"] != old["etag"]
    assert new["last-modified"] != old["last-modified"]
    for validator in (old["etag"], old["last-modified"]):
        r = client.get(server.url("/f"), headers={"Range": "bytes=0-2", "If-Range": validator})
        assert (r.status_code, r.content) == (200, b"new content")


def test_keep_alive_reuses_one_connection(server: HTTPServer, client: httpx.Client) -> None:
    for _ in range(3):
        assert client.get(server.url("/f")).content == DATA
    assert len({r.connection for r in server.requests}) == 1


def test_reset_aborts_with_rst_first_times_only(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", reset_after=1000, reset_times=1)
    _, body, error = raw_get(server, "/f")
    assert isinstance(error, ConnectionResetError)
    assert len(body) <= 1000
    assert client.get(server.url("/f")).content == DATA  # the second response is clean
    server.set_faults("/f", reset_after=1000)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.get(server.url("/f"))
    assert [(r.outcome, r.bytes_sent) for r in server.requests] == [
        ("reset", 1000), ("ok", len(DATA)), ("reset", 1000)
    ]  # fmt: skip


def test_reset_skips_bodies_shorter_than_the_offset(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", reset_after=1000, reset_times=1)
    assert client.get(server.url("/f"), headers={"Range": "bytes=0-99"}).status_code == 206
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.get(server.url("/f"))


def test_truncate_closes_cleanly_short_of_content_length(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", truncate_after=500, truncate_times=2)
    head, body, error = raw_get(server, "/f")
    assert error is None
    assert f"Content-Length: {len(DATA)}".encode() in head
    assert body == DATA[:500]
    with pytest.raises(httpx.RemoteProtocolError):
        client.get(server.url("/f"))
    assert client.get(server.url("/f")).content == DATA


def test_flip_byte_corrupts_every_body_covering_it(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", flip_byte_at=300)
    expected = bytearray(DATA)
    expected[300] ^= 0xFF
    assert client.get(server.url("/f")).content == expected
    assert client.get(server.url("/f"), headers={"Range": "bytes=0-299"}).content == DATA[:300]
    assert client.get(server.url("/f"), headers={"Range": "bytes=290-310"}).content == expected[290:311]


def test_status_sequence_then_normal_with_retry_after(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", status_sequence=[503, 429, 500], retry_after="2")
    responses = [client.get(server.url("/f")) for _ in range(4)]
    assert [r.status_code for r in responses] == [503, 429, 500, 200]
    assert [r.headers.get("retry-after") for r in responses] == ["2", "2", "2", None]
    assert responses[3].content == DATA


def test_permanent_status_and_unknown_path(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", status=410)
    assert [client.get(server.url("/f")).status_code for _ in range(3)] == [410, 410, 410]
    assert client.get(server.url("/missing")).status_code == 404
    assert server.requests_for("/missing")[0].status == 404


def test_no_range_ignores_range(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", no_range=True)
    r = client.get(server.url("/f"), headers={"Range": "bytes=0-9"})
    assert (r.status_code, r.content) == (200, DATA)
    assert "accept-ranges" not in r.headers


def test_no_content_length_ends_by_close(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", no_content_length=True)
    r = client.get(server.url("/f"))
    assert (r.content, r.headers["connection"]) == (DATA, "close")
    assert "content-length" not in r.headers


def test_chunked_transfer_encoding(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", chunked=True)
    r = client.get(server.url("/f"), headers={"Range": "bytes=100-"})
    assert (r.status_code, r.headers["transfer-encoding"], r.content) == (206, "chunked", DATA[100:])
    assert "content-length" not in r.headers


def test_stall_triggers_read_timeout(server: HTTPServer) -> None:
    server.set_faults("/f", stall_after=100, stall_seconds=2, stall_times=1)
    start = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(5, read=0.5)) as c, pytest.raises(httpx.ReadTimeout):
        c.get(server.url("/f"))
    assert time.monotonic() - start < 1.5


def test_stall_then_continue(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", stall_after=100, stall_seconds=0.3)
    start = time.monotonic()
    assert client.get(server.url("/f")).content == DATA
    assert time.monotonic() - start >= 0.3


def test_redirect_chain_times_and_loop(server: HTTPServer) -> None:
    server.add("/a", b"", redirect_to="/b", redirect_status=301)
    server.add("/b", b"", redirect_to=server.url("/f"), redirect_times=1)
    with httpx.Client(follow_redirects=True, max_redirects=5) as c:
        r = c.get(server.url("/a"))
        assert r.content == DATA
        assert [h.status_code for h in r.history] == [301, 302]
        assert c.get(server.url("/b")).content == b""  # redirect_times=1 is spent
        server.add("/x", b"", redirect_to="/y")
        server.add("/y", b"", redirect_to="/x")
        with pytest.raises(httpx.TooManyRedirects):
            c.get(server.url("/x"))


def test_oversize_counts_garbage_in_content_length(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", oversize_by=7)
    r = client.get(server.url("/f"))
    assert r.headers["content-length"] == str(len(DATA) + 7)
    assert r.content[: len(DATA)] == DATA
    assert len(r.content) == len(DATA) + 7


def test_lie_length_writes_past_content_length(server: HTTPServer) -> None:
    server.set_faults("/f", oversize_by=7, lie_length=True)
    head, body, _ = raw_get(server, "/f")
    assert f"Content-Length: {len(DATA)}".encode() in head
    assert len(body) == len(DATA) + 7


def test_rate_limit_paces_the_body(server: HTTPServer, client: httpx.Client) -> None:
    server.add("/big", bytes(200_000), rate_limit=1_000_000)
    start = time.monotonic()
    assert len(client.get(server.url("/big")).content) == 200_000
    assert 0.15 <= time.monotonic() - start < 1.0


def test_etag_and_last_modified_can_be_dropped_or_forced(server: HTTPServer, client: httpx.Client) -> None:
    server.set_faults("/f", etag=None, last_modified=None)
    r = client.get(server.url("/f"))
    assert "etag" not in r.headers
    assert "last-modified" not in r.headers
    server.set_faults("/f", etag='"fixed"')
    assert client.get(server.url("/f")).headers["etag"] == '"fixed"'


def test_unknown_fault_is_an_error(server: HTTPServer) -> None:
    with pytest.raises(TypeError):
        server.set_faults("/f", explode=True)


def test_tls_with_trusted_self_signed_certificate() -> None:
    try:
        tls = HTTPServer(tls=True)
    except TLSUnavailableError as exc:
        pytest.skip(str(exc))
    with tls, serve({"/plain": b"plain"}) as plain:
        assert tls.cert_path is not None
        tls.add("/f", DATA)
        tls.add("/down", b"", redirect_to=plain.url("/plain"))
        assert tls.url("/f").startswith("https://127.0.0.1:")
        with httpx.Client(verify=ssl.create_default_context(cafile=tls.cert_path)) as c:
            r = c.get(tls.url("/f"), headers={"Range": "bytes=1-2"})
            assert (r.status_code, r.content) == (206, DATA[1:3])
            assert c.get(tls.url("/down")).headers["location"] == plain.url("/plain")
        with pytest.raises(httpx.ConnectError):
            httpx.get(tls.url("/f"))  # the system trust store does not know our certificate


def test_request_log_is_thread_safe(server: HTTPServer, client: httpx.Client) -> None:
    def fetch(i: int) -> None:
        client.get(server.url("/f"), headers={"Range": f"bytes={i}-"})

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = server.requests_for("/f", "GET")
    assert sorted(r.range or "" for r in log) == sorted(f"bytes={i}-" for i in range(20))
    assert all(r.status == 206 and r.bytes_sent == len(DATA) - int(r.range[6:-1]) for r in log if r.range)
    assert all(r.duration >= 0 and r.headers["Range"] == r.range for r in log)
    server.clear_requests()
    assert server.requests == []


def test_large_path_is_streamed_with_bounded_memory(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as fh:  # sparse: 50 MB on paper, a few bytes on disk
        fh.truncate(50 * 1024 * 1024)
        fh.seek(12345678)
        fh.write(b"marker")
    with serve({"/big": big}) as srv, httpx.Client() as c:
        tracemalloc.start()
        try:
            total = 0
            with c.stream("GET", srv.url("/big")) as r:
                for chunk in r.iter_raw():
                    total += len(chunk)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        tail = c.get(srv.url("/big"), headers={"Range": "bytes=12345678-12345683"})
    assert total == 50 * 1024 * 1024
    assert tail.content == b"marker"
    assert peak < 8 * 1024 * 1024


def test_close_is_prompt_with_stalled_and_idle_connections() -> None:
    srv = HTTPServer()
    srv.add("/f", DATA, stall_after=10, stall_seconds=60)
    idle = socket.create_connection(("127.0.0.1", srv.port))
    idle.sendall(b"HEAD /f HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: the server waits for the next request
    assert idle.recv(4096).startswith(b"HTTP/1.1 200")
    stalled = socket.create_connection(("127.0.0.1", srv.port))
    stalled.sendall(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while len(received.partition(b"\r\n\r\n")[2]) < 10:  # the 10 bytes before the stall: it is stalling
        received += stalled.recv(4096)
    assert received.startswith(b"HTTP/1.1 200")
    start = time.monotonic()
    srv.close()
    assert time.monotonic() - start < 2
    assert srv.requests_for("/f", "GET")[0].outcome == "closed"
    idle.close()
    stalled.close()

"""A real HTTP/1.1 test server on 127.0.0.1 with per-path fault switches.

The download engine is tested against real sockets, never against mocked httpx internals: this server
speaks keep-alive HTTP/1.1 (optionally over TLS), serves single byte ranges with strong validators, logs
every request, and can be told per path to reset, truncate, corrupt, stall, redirect, throttle or fail.

    with serve({"/tiny.pt": payload}) as server:
        server.set_faults("/tiny.pt", reset_after=1 << 20, reset_times=1)
        ...download server.url("/tiny.pt")...
        assert [r.range for r in server.requests_for("/tiny.pt")] == [None, "bytes=1048576-"]

Faults (keyword arguments of `add` and `set_faults`, see `Faults`): status, status_sequence, retry_after,
redirect_to, redirect_status, redirect_times, reset_after, reset_times, truncate_after, truncate_times,
stall_after, stall_seconds, stall_times, flip_byte_at, no_range, no_content_length, chunked, oversize_by,
lie_length, rate_limit, etag, last_modified, content_range, silent, head_drip, drip_after, drip_seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import re
import shutil
import socket
import socketserver
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

CHUNK = 256 * 1024
GARBAGE = b"\xde\xad\xbe\xef"
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


class TLSUnavailableError(RuntimeError):
    """Neither the `openssl` CLI nor the `cryptography` package can make a certificate; skip TLS tests."""


@dataclasses.dataclass(frozen=True)
class Faults:
    """What to do wrong for one path. `*_times=None` means every time; a "time" is counted when the
    fault actually fires (a body shorter than `reset_after` is served whole and consumes nothing).
    `*_after` offsets count body bytes from the start of each response, `flip_byte_at` is a file offset.
    Precedence: status > status_sequence > redirect_to > serving the file."""

    status: int | None = None  # permanent error status (404, 403, 410, ...)
    status_sequence: Sequence[int] = ()  # statuses for the first len(seq) requests (HEAD counts too)
    retry_after: str | None = None  # Retry-After on those error responses ("2" or an HTTP date)
    redirect_to: str | None = None  # Location, an absolute URL or a path on this server
    redirect_status: int = 302
    redirect_times: int | None = None
    reset_after: int | None = None  # abort with a TCP RST after N body bytes
    reset_times: int | None = None
    truncate_after: int | None = None  # close cleanly (FIN) after N body bytes, Content-Length promised more
    truncate_times: int | None = None
    stall_after: int | None = None  # go silent after N body bytes for stall_seconds
    stall_seconds: float = 0.0
    stall_times: int | None = None
    flip_byte_at: int | None = None  # XOR 0xFF the byte at this file offset in every body covering it
    no_range: bool = False  # ignore Range, never advertise Accept-Ranges
    no_content_length: bool = False  # no length, Connection: close, the end of body is the close
    chunked: bool = False  # Transfer-Encoding: chunked instead of Content-Length
    oversize_by: int = 0  # append N garbage bytes and count them in Content-Length ...
    lie_length: bool = False  # ... or not: Content-Length states the true size, N extra bytes follow
    rate_limit: int | None = None  # bytes per second per connection
    etag: str | bool | None = True  # True: derived, a string: sent verbatim, None/False: no header
    last_modified: str | bool | None = True  # likewise for Last-Modified
    content_range: str | None = None  # a 206's Content-Range, verbatim ("": none at all)
    silent: bool = False  # read the request, then never answer (until the server closes)
    head_drip: float = 0.0  # send the response head one byte at a time, this many seconds apart
    drip_after: int | None = None  # after N body bytes, send the rest one byte at a time ...
    drip_seconds: float = 0.0  # ... this many seconds apart


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it, appended once the response is over (or aborted)."""

    method: str
    path: str  # without the query string
    range: str | None  # the Range header exactly as sent
    status: int
    bytes_sent: int  # body bytes actually written (payload, without chunk framing)
    duration: float  # seconds from the parsed request to the end of the response
    outcome: str  # "ok", "reset", "truncated", "client_gone" or "closed" (server shut down mid-body)
    connection: int  # client port: equal for requests on one keep-alive connection
    headers: Mapping[str, str]


@dataclasses.dataclass
class _Route:
    data: bytes | Path
    faults: Faults
    version: int
    mtime: float  # used for bytes; a Path's own mtime is read at request time
    hits: int = 0
    fired: Counter[str] = dataclasses.field(default_factory=Counter)


class _Unsatisfiable(Exception):
    pass


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Return [start, end) for a single byte range; None means "ignore it and send 200"."""
    m = _RANGE.fullmatch(header)  # multi-range has a comma and does not match: answered with a 200
    if m is None or m.group(1) == m.group(2) == "":
        return None
    first, last = m.groups()
    if first == "":
        if int(last) == 0 or size == 0:
            raise _Unsatisfiable
        return max(0, size - int(last)), size
    start = int(first)
    if last and int(last) < start:  # syntactically invalid (RFC 9110 14.1.1): the field is ignored
        return None
    if start >= size:
        raise _Unsatisfiable
    return start, min(int(last) + 1 if last else size, size)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "whisperctl-testserver"
    disable_nagle_algorithm = True  # small error responses and headers must not wait 40 ms for an ACK
    timeout = 30  # an idle keep-alive connection of a crashed client must not pin a thread forever
    server: _Server
    _status: int
    _t0: float
    _record: RequestRecord | None
    _faults: Faults

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            # Here, not in accept(): a client that never finishes its handshake must not block accepting.
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: failures are asserted through `requests`, not read on stderr

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def flush_headers(self) -> None:
        faults: Faults | None = getattr(self, "_faults", None)
        if faults is None or not faults.head_drip or not getattr(self, "_headers_buffer", None):
            super().flush_headers()
            return
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        for i in range(len(head)):
            if self.server.owner._stop.wait(faults.head_drip):
                raise OSError("the server is closing")
            self.wfile.write(head[i : i + 1])
            self.wfile.flush()

    def _respond(self, head: bool) -> None:
        owner, self._t0, self._record = self.server.owner, time.monotonic(), None
        self._status, sent, outcome = 0, 0, "ok"
        route, hit = owner._hit(urlsplit(self.path).path)
        try:
            f = self._faults = route.faults if route else Faults()
            if f.silent:
                owner._stop.wait()
                self.close_connection = True
                sent, outcome = 0, "closed"
            elif route is None or f.status is not None:
                sent = self._small(f.status or 404, head, f.retry_after)
            elif hit < len(f.status_sequence):
                owner._fire(route, "status", None)
                sent = self._small(f.status_sequence[hit], head, f.retry_after)
            elif f.redirect_to is not None and owner._fire(route, "redirect", f.redirect_times):
                sent = self._small(f.redirect_status, head, None, location=f.redirect_to)
            else:
                sent, outcome = self._file(route, head)
        except OSError:  # the client went away (broken pipe, reset, TLS error), or close() cut it off
            self.close_connection = True
            outcome = "closed" if owner._stop.is_set() else "client_gone"
        self._log(sent, outcome)

    def _log(self, sent: int, outcome: str) -> None:
        """Publish this response's record, or correct the one published earlier. It is called *before*
        the client can see the end of the response (last byte, RST), so a test that has just got its
        response or its error always finds the request in the log."""
        record = RequestRecord(
            method=self.command,
            path=urlsplit(self.path).path,
            range=self.headers.get("Range"),
            status=self._status,
            bytes_sent=sent,
            duration=time.monotonic() - self._t0,
            outcome=outcome,
            connection=self.client_address[1],
            headers=dict(self.headers.items()),
        )
        owner = self.server.owner
        with owner._lock:
            index = next((i for i, r in enumerate(reversed(owner._log)) if r is self._record), None)
            if index is None:
                owner._log.append(record)
            else:
                owner._log[len(owner._log) - 1 - index] = record
            self._record = record

    def _small(self, status: int, head: bool, retry_after: str | None, location: str | None = None) -> int:
        body = f"{status} {self.responses.get(status, ('',))[0]}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        if location is not None:
            self.send_header("Location", location)
        sent = 0 if head else len(body)
        self._log(sent, "ok")
        self.end_headers()
        self.wfile.write(body[:sent])
        return sent

    def _file(self, route: _Route, head: bool) -> tuple[int, str]:
        f, data = route.faults, route.data
        if isinstance(data, Path):
            try:
                st = data.stat()
            except FileNotFoundError:  # a test deleted the file: say so instead of dropping the connection
                return self._small(404, head, None), "ok"
            size, mtime, mtime_ns = st.st_size, st.st_mtime, st.st_mtime_ns
        else:
            size, mtime, mtime_ns = len(data), route.mtime, int(route.mtime * 1e9)
        etag = f'"{size:x}-{mtime_ns:x}-{route.version}"' if f.etag is True else f.etag or None
        modified = formatdate(mtime, usegmt=True) if f.last_modified is True else f.last_modified or None
        start, end, status = 0, size, 200
        header, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        # If-Range with a stale validator means "the file changed: send all of it", never a wrong slice.
        if header is not None and not f.no_range and (if_range is None or if_range in (etag, modified)):
            try:
                parsed = _parse_range(header, size)
            except _Unsatisfiable:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self._log(0, "ok")
                self.end_headers()
                return 0, "ok"
            if parsed is not None:
                (start, end), status = parsed, 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        if not f.no_range:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206 and f.content_range != "":
            self.send_header("Content-Range", f.content_range or f"bytes {start}-{end - 1}/{size}")
        if etag:
            self.send_header("ETag", etag)
        if modified:
            self.send_header("Last-Modified", modified)
        if f.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif f.no_content_length:
            self.send_header("Connection", "close")  # also sets close_connection
        else:
            self.send_header("Content-Length", str(end - start + (0 if f.lie_length else f.oversize_by)))
        if head or (end - start + f.oversize_by == 0 and not f.chunked):
            self._log(0, "ok")
            self.end_headers()
            return 0, "ok"
        self.end_headers()
        return self._body(route, start, end)

    def _body(self, route: _Route, start: int, end: int) -> tuple[int, str]:
        """Write file bytes [start, end) plus any garbage, firing the byte-offset faults on the way."""
        f, owner = route.faults, self.server.owner
        # Small pieces under a rate limit keep the pacing smooth instead of one burst and a long sleep.
        chunk = CHUNK if not f.rate_limit else max(1024, min(CHUNK, f.rate_limit // 20))
        total, sent, t0 = end - start + f.oversize_by, 0, time.monotonic()
        triggers = [
            n for n in (f.reset_after, f.truncate_after, f.stall_after, f.drip_after) if n is not None
        ]
        with _Reader(route.data) as reader:
            while sent < total:
                if sent == f.stall_after and owner._fire(route, "stall", f.stall_times):
                    stalled = time.monotonic()
                    if owner._stop.wait(f.stall_seconds):
                        return self._reset(sent, "closed")
                    t0 += time.monotonic() - stalled  # the stall is not credit for a burst afterwards
                if sent == f.reset_after and owner._fire(route, "reset", f.reset_times):
                    return self._reset(sent, "reset")
                if sent == f.truncate_after and owner._fire(route, "truncate", f.truncate_times):
                    self.close_connection = True  # finish() closes: a clean FIN, short of Content-Length
                    return sent, "truncated"
                if f.drip_after is not None and sent >= f.drip_after:
                    if owner._stop.wait(f.drip_seconds):
                        return self._reset(sent, "closed")
                    chunk = 1
                n = min([chunk, total - sent] + [t - sent for t in triggers if t > sent])
                pos = start + sent
                in_file = max(0, min(n, end - pos))
                piece = reader.read(pos, in_file)
                if in_file < n:
                    if sent + in_file == end - start:  # the first garbage byte of this response
                        owner._fire(route, "pad", None)
                    piece += (GARBAGE * ((n - in_file) // 4 + 1))[: n - in_file]
                if f.flip_byte_at is not None and pos <= f.flip_byte_at < pos + in_file:
                    owner._fire(route, "flip", None)
                    flipped = bytearray(piece)
                    flipped[f.flip_byte_at - pos] ^= 0xFF
                    piece = bytes(flipped)
                if f.rate_limit:  # no initial burst: a piece leaves only once the budget has earned it
                    delay = t0 + (sent + n) / f.rate_limit - time.monotonic()
                    if delay > 0 and owner._stop.wait(delay):
                        return self._reset(sent, "closed")
                if f.chunked:
                    piece = b"%x\r\n%s\r\n%s" % (n, piece, b"0\r\n\r\n" if sent + n == total else b"")
                if sent + n == total:
                    self._log(total, "ok")
                self.wfile.write(piece)
                sent += n
        if f.chunked and total == 0:
            self._log(0, "ok")
            self.wfile.write(b"0\r\n\r\n")
        return sent, "ok"

    def _reset(self, sent: int, outcome: str) -> tuple[int, str]:
        self._log(sent, outcome)
        # SO_LINGER (on, 0 s) turns close() into an RST: the client sees ECONNRESET, not a clean EOF.
        self.close_connection = True
        conn = self.connection
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # detach() so the close happens now; a plain close() waits for rfile/wfile to drop their references.
        os.close(conn.detach())
        return sent, outcome


class _Reader:
    """Random access to bytes or a file, reading a Path with os.pread so a GB file never sits in memory."""

    def __init__(self, data: bytes | Path) -> None:
        self.data, self.fd = data, -1

    def __enter__(self) -> _Reader:
        if isinstance(self.data, Path):
            self.fd = os.open(self.data, os.O_RDONLY)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)

    def read(self, pos: int, n: int) -> bytes:
        if isinstance(self.data, bytes):
            return self.data[pos : pos + n]
        out = os.pread(self.fd, n, pos)
        if len(out) < n:  # the file shrank under us: keep the promised length
            out += b"\0" * (n - len(out))
        return out


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # close() ends connections itself; the stdlib would join stalled threads forever
    request_queue_size = 128  # segmented downloads open many connections at once

    def __init__(self, owner: HTTPServer, context: ssl.SSLContext | None) -> None:
        self.owner, self.context = owner, context
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # Skip HTTPServer.server_bind: its socket.getfqdn() is a reverse DNS lookup that can hang offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.owner._lock:
            self.owner._conns[request] = None
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self.owner._lock:
            self.owner._conns[request] = threading.current_thread()
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.owner._lock:
                self.owner._conns.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # quiet: clients that vanish, fail TLS or get reset are the point of this server


class HTTPServer:
    """A threaded HTTP/1.1 (or HTTPS with `tls=True`) server on 127.0.0.1 with per-path faults.

    Start on construction, stop with `close()` or by leaving the `with` block."""

    def __init__(self, *, tls: bool = False) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()  # set by close(): interrupts stalls and rate-limit sleeps
        self._routes: dict[str, _Route] = {}
        self._log: list[RequestRecord] = []
        self._conns: dict[Any, threading.Thread | None] = {}
        self._version = 0
        self._tmp: str | None = None
        self.cert_path: Path | None = None
        context = None
        if tls:
            self._tmp = tempfile.mkdtemp(prefix="whisperctl-tls-")
            try:
                self.cert_path, key = _make_certificate(Path(self._tmp))
            except TLSUnavailableError:
                shutil.rmtree(self._tmp, ignore_errors=True)
                raise
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert_path, key)
        self._httpd = _Server(self, context)
        self.port: int = self._httpd.server_port
        self.base_url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        # A short poll interval makes shutdown() return promptly instead of after up to 0.5 s.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="httpserver", daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        """The absolute URL of `path` on this server."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def add(self, path: str, data: bytes | Path, **faults: Any) -> None:
        """Serve `data` (bytes, or a file streamed from disk) at `path` with the given `Faults`."""
        with self._lock:
            self._version += 1
            self._routes[path] = _Route(_content(data), Faults(**faults), self._version, time.time())

    def replace(self, path: str, data: bytes | Path) -> None:
        """Change the content at `path`, keeping its faults; ETag and Last-Modified change with it."""
        with self._lock:
            route = self._routes[path]
            self._version += 1
            # Last-Modified has 1 s resolution: step it so a replace is visible to If-Range by date too.
            route.data, route.version = _content(data), self._version
            route.mtime = max(time.time(), route.mtime + 1)

    def set_faults(self, path: str, **faults: Any) -> None:
        """Replace the faults of `path` (none given: serve it cleanly) and restart its request counters."""
        with self._lock:
            route = self._routes[path]
            route.faults, route.hits, route.fired = Faults(**faults), 0, Counter()

    def fired(self, path: str) -> Counter[str]:
        """How many times each fault of `path` fired since it was added or its faults were last set:
        "reset", "truncate", "stall", "redirect", and (counted, never limited) "status" for each
        status_sequence answer, "flip" for each body carrying the flipped byte, "pad" for each body
        that went on past the file."""
        with self._lock:
            return Counter(self._routes[path].fired)

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the request log, oldest first."""
        with self._lock:
            return list(self._log)

    def requests_for(self, path: str, method: str | None = None) -> list[RequestRecord]:
        """The logged requests to `path`, optionally only those with `method`."""
        return [r for r in self.requests if r.path == path and method in (None, r.method)]

    def clear_requests(self) -> None:
        """Forget the request log (e.g. between the phases of a test)."""
        with self._lock:
            self._log.clear()

    def close(self) -> None:
        """Stop serving and end every connection, stalled or idle, within about a second."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            with contextlib.suppress(OSError):  # already closed or reset
                # socket.socket's shutdown, not SSLSocket's: that one drops the TLS object under the reader.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        deadline = time.monotonic() + 2
        for _, thread in conns:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _hit(self, path: str) -> tuple[_Route | None, int]:
        with self._lock:
            route = self._routes.get(path)
            if route is None:
                return None, 0
            route.hits += 1
            return dataclasses.replace(route), route.hits - 1  # a snapshot: set_faults may race with us

    def _fire(self, route: _Route, fault: str, times: int | None) -> bool:
        with self._lock:
            # The snapshot shares its Counter with the live route, so "first N times" spans all connections.
            if times is not None and route.fired[fault] >= times:
                return False
            route.fired[fault] += 1
            return True

    def __enter__(self) -> HTTPServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _content(data: bytes | os.PathLike[str] | str) -> bytes | Path:
    return Path(data) if isinstance(data, (str, os.PathLike)) else bytes(data)


def _make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost; returns (cert, key) paths."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    if shutil.which("openssl"):
        # An EC key: as trusted as RSA here, and generated in milliseconds instead of ~0.3 s per server.
        done = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-days", "2", "-keyout", str(key), "-out", str(cert)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise TLSUnavailableError(f"openssl could not make a test certificate: {done.stderr.strip()}")
        return cert, key
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as exc:
        raise TLSUnavailableError("TLS test server needs the `openssl` CLI or `cryptography`") from exc
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ip = ipaddress.ip_address("127.0.0.1")
    san = x509.SubjectAlternativeName([x509.IPAddress(ip), x509.DNSName("localhost")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pkey.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2)).add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(pkey, hashes.SHA256())
    )  # fmt: skip
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pkey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))  # fmt: skip
    return cert, key


@contextmanager
def serve(files: Mapping[str, bytes | Path] | None = None, *, tls: bool = False) -> Iterator[HTTPServer]:
    """Run an `HTTPServer` serving `files` ({url path: content}) for the duration of the block."""
    with HTTPServer(tls=tls) as server:
        for path, data in (files or {}).items():
            server.add(path, data)
        yield server

"""A raw-socket server on 127.0.0.1 that sends exactly the bytes a case scripts, plain or over TLS.

No HTTP library stands between the script and the socket: a script reads the client's request heads with
:meth:`Conn.request` (every byte received is recorded, so a case can check what the client sent back) and
writes whatever it likes, as fast or as slowly as it likes, then closes, resets or hangs.

A script is called once per accepted connection, in its own thread, with the connection and its index
(0 for the first connection of the server). On a TLS server the handshake is done before the script runs,
unless the server is made with ``handshake=False`` (the script then talks to the raw TCP socket, to stall or
garble the handshake itself).
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Conn", "Request", "Script", "ScriptedServer"]

_HEAD_LIMIT = 64 * 1024  # a request head longer than this is not whisperctl's: stop reading it
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Request:
    """One request head as the client sent it."""

    raw: bytes
    method: str
    target: str
    fields: list[tuple[str, str]]  # (lower-cased name, value), split on CRLF as an HTTP/1.1 server does

    def field(self, name: str) -> str | None:
        for key, value in self.fields:
            if key == name.lower():
                return value
        return None

    def range(self, size: int) -> tuple[int, int]:
        """The [start, end) asked by ``Range: bytes=a-b``, or the whole file."""
        match = _RANGE.match(self.field("range") or "")
        if match is None:
            return 0, size
        start = int(match[1])
        end = int(match[2]) + 1 if match[2] else size
        return start, min(end, size)


def _parse(raw: bytes) -> Request:
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    fields = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            fields.append((name.strip().lower(), value.strip()))
    return Request(raw, parts[0], parts[1] if len(parts) > 1 else "", fields)


class Conn:
    """One accepted connection, as a script sees it."""

    def __init__(self, sock: socket.socket, server: ScriptedServer, index: int) -> None:
        self.sock = sock
        self.server = server
        self.index = index
        self._buffer = b""

    @property
    def stopping(self) -> bool:
        return self.server.stopping.is_set()

    def request(self, timeout: float = 10.0) -> Request | None:
        """Read one request head; None when the client closed or went silent first."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > _HEAD_LIMIT or self.stopping or time.monotonic() > deadline:
                return None
            chunk = self._recv(0.1)
            if chunk is None:
                continue
            if not chunk:
                return None
            self._buffer += chunk
        raw, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        request = _parse(raw + b"\r\n\r\n")
        self.server.record(request)
        return request

    def _recv(self, wait: float) -> bytes | None:
        """Bytes received, b"" at EOF or on an error, None if nothing came within ``wait`` seconds."""
        try:
            if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
                return self.sock.recv(65536)
            ready, _, _ = select.select([self.sock], [], [], wait)
            if not ready:
                return None
            return self.sock.recv(65536)
        except (OSError, ValueError):
            return b""

    def send(self, data: bytes) -> bool:
        """Send all of ``data``; False if the client is gone (or the server is stopping)."""
        if self.stopping:
            return False
        try:
            self.sock.sendall(data)
        except (OSError, ValueError):
            return False
        return True

    def drip(self, data: bytes, interval: float, step: int = 1) -> bool:
        """Send ``data``, ``step`` bytes every ``interval`` seconds; False once the client is gone."""
        for i in range(0, len(data), step):
            if not self.send(data[i : i + step]) or self.server.stopping.wait(interval):
                return False
        return True

    def hang(self) -> None:
        """Say nothing until the client closes or the server stops; what the client sends is read and kept."""
        while not self.stopping:
            chunk = self._recv(0.1)
            if chunk == b"":
                return
            if chunk:
                self._buffer = (self._buffer + chunk)[-_HEAD_LIMIT:]

    def reset(self) -> None:
        """Abort the connection with a TCP RST."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.sock.close()


Script = Callable[[Conn], None]


@dataclass
class ScriptedServer:
    """Listens on 127.0.0.1 (an ephemeral port) and runs ``script`` on every connection."""

    script: Script
    tls: tuple[Path, Path] | None = None  # (certificate, key) to serve https
    handshake: bool = True  # on a TLS server, complete the handshake before the script runs
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    errors: list[str] = field(default_factory=list)  # exceptions raised by the script (a bug in the case)

    def __post_init__(self) -> None:
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._context: ssl.SSLContext | None = None
        if self.tls is not None:
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(*self.tls)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        self._acceptor.start()

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _accept(self) -> None:
        self._listener.settimeout(0.05)
        while not self.stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                index = self.connections
                self.connections += 1
                self._socks.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, index: int) -> None:
        if self._context is not None and self.handshake:
            sock.settimeout(10)
            try:
                tls_sock = self._context.wrap_socket(sock, server_side=True)
            except (OSError, ssl.SSLError):
                with contextlib.suppress(OSError):
                    sock.close()
                return
            tls_sock.settimeout(None)
            with self._lock:
                self._socks.append(tls_sock)
            sock = tls_sock
        conn = Conn(sock, self, index)
        try:
            self.script(conn)
        except Exception as exc:
            if not self.stopping.is_set():
                self.errors.append(f"connection {index}: {type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def close(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for sock in socks:
            with contextlib.suppress(OSError, ValueError):
                # The plain socket's shutdown wakes a script blocked in sendall; an SSLSocket's would unwrap.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)

"""Building blocks of the cases' scripts: response heads written byte by byte, an honest answer to a
range request, and the loop that answers every request of a connection."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .server import Conn, Request

KiB = 1024
MiB = 1024 * KiB
ETAG = b'"v1"'


@dataclass
class World:
    """What a script may know: the payload, and the base URLs of the case's servers."""

    data: bytes
    urls: list[str] = field(default_factory=list)  # [first server, second server (another origin)]


def head(status: bytes, *fields: bytes) -> bytes:
    """A response head: the status line and the fields exactly as given, each ended by CRLF."""
    return status + b"\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"


def content_range(start: int, end: int, total: int) -> bytes:
    return f"Content-Range: bytes {start}-{end - 1}/{total}".encode()


def length(n: int) -> bytes:
    return f"Content-Length: {n}".encode()


def partial(req: Request, data: bytes, *extra: bytes, validators: tuple[bytes, ...] = ()) -> bytes:
    """An honest 206 for the range asked (or 200 for the whole file), head and body."""
    if req.field("range") is None:
        return head(b"HTTP/1.1 200 OK", length(len(data)), *validators, *extra) + data
    start, end = req.range(len(data))
    return (
        head(
            b"HTTP/1.1 206 Partial Content",
            content_range(start, end, len(data)),
            length(end - start),
            *(validators or (b"ETag: " + ETAG,)),
            *extra,
        )
        + data[start:end]
    )


def chunked(body: bytes, size: int = 4096) -> bytes:
    """``body`` in chunked framing, ``size`` bytes a chunk, with the last chunk and no trailers."""
    out = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)
    )
    return out + b"0\r\n\r\n"


def answer_each(conn: Conn, answer: Callable[[Request], bytes | None]) -> None:
    """Answer every request of the connection with the bytes ``answer`` returns (None: hang up)."""
    while (req := conn.request()) is not None:
        out = answer(req)
        if out is None or not conn.send(out):
            return


def answer_once(conn: Conn, answer: Callable[[Request], bytes]) -> None:
    """Answer the first request, then close the connection (the end of the body is the close)."""
    if (req := conn.request()) is not None:
        conn.send(answer(req))


def stream_forever(conn: Conn, prefix: bytes, unit: bytes, limit: int = 512 * MiB) -> None:
    """Send ``prefix``, then ``unit`` again and again, as fast as the client reads, until it hangs up (or
    ``limit`` bytes went: a client that reads that much without stopping has failed already)."""
    if conn.request() is None or not conn.send(prefix):
        return
    block = unit * max(1, 64 * KiB // len(unit))
    sent = 0
    while sent < limit and conn.send(block):
        sent += len(block)


def honest(world: World) -> Callable[[Conn], None]:
    return lambda conn: answer_each(conn, lambda req: partial(req, world.data))


def broken_then_honest(
    world: World,
    validators: tuple[bytes, ...],
    *,
    cut: int = 20_000,
    later: Callable[[Request], bytes] | None = None,
) -> Callable[[Conn], None]:
    """The first connection's answer breaks off after ``cut`` body bytes (so the client resumes); the
    later ones answer with ``later`` (by default honestly, with the same validators)."""

    def script(conn: Conn) -> None:
        if conn.index == 0:
            if (req := conn.request()) is not None:
                conn.send(partial(req, world.data, validators=validators)[: -(len(world.data) - cut)])
            return
        answer_each(conn, later or (lambda req: partial(req, world.data, validators=validators)))

    return script

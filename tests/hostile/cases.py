"""The hostile suite's cases: what each server sends, and how whisperctl must end.

A case names its class, its script (a factory that gets the :class:`World` and returns what runs on each
connection), the exit codes it may end with, and how it is run. Server faults end in 3 (network, HTTP) or 4
(integrity); an answer that is odd but honest must give the verified file (0). Where the specification lets a
client choose (reject a malformed but harmless answer, or read past it and verify the file), both are listed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .scripts import (
    ETAG,
    KiB,
    MiB,
    World,
    answer_each,
    answer_once,
    broken_then_honest,
    chunked,
    content_range,
    head,
    honest,
    length,
    partial,
    stream_forever,
)
from .server import Conn, Request, Script

HEADS = "malformed status lines and fields"
FRAMING = "framing conflicts and absurdities"
RANGES = "ranges that lie"
SLOW = "slowness as an attack"
ECHO = "server values never sent back raw"
TEXT = "server text shortened and stripped"
CLASSES = (HEADS, FRAMING, RANGES, SLOW, ECHO, TEXT)

FAULT = frozenset({3, 4})
NETWORK = frozenset({3})
OK = frozenset({0})
# Short stalls for every case; the minimum-progress rule with small values for the slowness class.
QUICK = ("--stall-timeout", "2")
SPEED = ("--speed-limit", "4096", "--speed-time", "2", "--stall-timeout", "1")
INJECTED = "x-injected"  # the field name the validator cases try to smuggle into a request


@dataclass(frozen=True)
class Case:
    name: str
    klass: str
    script: Callable[[World], Script]
    expect: frozenset[int]
    tls: bool = False
    handshake: bool = True  # on TLS, complete the handshake before the script runs
    size: int = 64 * KiB
    sized: bool = True  # the registry entry gives the size
    args: tuple[str, ...] = QUICK
    mirror: bool = False  # also --mirror on the same server: two sources, two failures in one line
    timeout: float = 45.0
    second: Callable[[World], Script] | None = None  # a second server: another origin
    echo_check: bool = False  # no request may carry a field the server smuggled into a validator


def _once(answer: Callable[[World, Request], bytes]) -> Callable[[World], Script]:
    """Answer each connection's first request with ``answer`` and close it."""
    return lambda w: lambda conn: answer_once(conn, lambda req: answer(w, req))


def _each(answer: Callable[[World, Request], bytes | None]) -> Callable[[World], Script]:
    return lambda w: lambda conn: answer_each(conn, lambda req: answer(w, req))


def _status(line: bytes) -> Callable[[World], Script]:
    """An honest 206 but for its status line."""
    return _once(
        lambda w, req: head(line, content_range(0, len(w.data), len(w.data)), length(len(w.data))) + w.data
    )


def _fields(*fields: bytes, status: bytes = b"HTTP/1.1 200 OK") -> Callable[[World], Script]:
    """A response with exactly these fields, then the whole payload, then a close."""
    return _once(lambda w, req: head(status, *fields) + w.data)


def _forever(prefix: bytes, unit: bytes) -> Callable[[World], Script]:
    return lambda w: lambda conn: stream_forever(conn, prefix, unit)


def _full_cl(w: World) -> bytes:
    return length(len(w.data))


# -- 1. malformed status lines and fields ------------------------------------------------------------------
def _heads() -> list[Case]:
    def honest_with(*fields: bytes) -> Callable[[World], Script]:
        return _once(lambda w, req: head(b"HTTP/1.1 200 OK", _full_cl(w), *fields) + w.data)

    return [
        Case("status-code-not-a-number", HEADS, _status(b"HTTP/1.1 2x6 Partial Content"), FAULT),
        Case("status-code-four-digits", HEADS, _status(b"HTTP/1.1 2060 Partial Content"), FAULT),
        Case("status-wrong-protocol", HEADS, _status(b"HTTX/1.1 206 Partial Content"), FAULT),
        Case("status-version-2", HEADS, _status(b"HTTP/2 206 Partial Content"), FAULT),
        Case("status-line-missing", HEADS, _once(lambda w, req: w.data), FAULT),
        Case(
            "status-line-binary", HEADS, _once(lambda w, req: b"\x00\x01\x02\xff\xfe\r\n\r\n" + w.data), FAULT
        ),
        Case("status-reason-nul", HEADS, _status(b"HTTP/1.1 206 Partial\x00Content"), FAULT),
        Case("field-without-colon", HEADS, _fields(b"Content-Length 65536"), FAULT),
        Case("field-name-space-before-colon", HEADS, _fields(b"Content-Length : 65536"), FAULT),
        Case("field-name-empty", HEADS, honest_with(b": nameless"), FAULT),
        Case("field-value-nul", HEADS, honest_with(b"X-Note: a\x00b"), FAULT),
        Case("field-value-bare-cr", HEADS, honest_with(b"X-Note: a\rb"), FAULT),
        Case("content-length-bare-lf", HEADS, _fields(b"Content-Length: 65\n536"), FAULT),
        Case("field-enormous-value", HEADS, honest_with(b"X-Big: " + b"a" * (4 * MiB)), FAULT),
        Case("fields-200k", HEADS, honest_with(*(b"X-F%d: 1" % i for i in range(200_000))), FAULT),
        Case(
            "head-endless",
            HEADS,
            _forever(b"HTTP/1.1 200 OK\r\n", b"X-More: " + b"m" * 1000 + b"\r\n"),
            FAULT,
        ),
        Case("head-endless-one-line", HEADS, _forever(b"HTTP/1.1 200 OK\r\nX-Long: ", b"z" * 4096), FAULT),
        Case(
            "status-code-not-a-number-tls", HEADS, _status(b"HTTP/1.1 2x6 Partial Content"), FAULT, tls=True
        ),
        Case(
            "head-endless-tls",
            HEADS,
            _forever(b"HTTP/1.1 200 OK\r\n", b"X-More: " + b"m" * 1000 + b"\r\n"),
            FAULT,
            tls=True,
        ),
    ]


# -- 2. framing conflicts and absurdities -------------------------------------------------------------------
def _te_and_cl(w: World, req: Request, *, flip: bool = False, cl: bytes = b"Content-Length: 10") -> bytes:
    body = bytearray(w.data)
    if flip:
        body[len(body) // 2] ^= 0x40
    return head(b"HTTP/1.1 200 OK", cl, b"Transfer-Encoding: chunked") + chunked(bytes(body))


def _chunks(first: bytes) -> Callable[[World], Script]:
    """A chunked 200 whose first chunk is framed by ``first`` (a size line and whatever follows it)."""
    return _once(
        lambda w, req: head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked") + first + w.data[:4096]
    )


def _interim_then_answer(w: World, req: Request) -> bytes:
    interim = head(b"HTTP/1.1 103 Early Hints", b"Link: </style.css>; rel=preload")
    interim += head(b"HTTP/1.1 100 Continue") + head(b"HTTP/1.1 102 Processing")
    return interim + partial(req, w.data)


def _trailers_after_body(w: World) -> Script:
    """A correct chunked body, its last chunk, then trailer fields without end."""
    return lambda conn: stream_forever(
        conn,
        head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked") + chunked(w.data)[:-2],
        b"X-Trailer: " + b"t" * 1000 + b"\r\n",
    )


def _framing() -> list[Case]:
    def cl(*values: bytes) -> Callable[[World], Script]:
        return _fields(*(b"Content-Length: " + v for v in values))

    return [
        Case("content-length-negative", FRAMING, cl(b"-1"), FAULT),
        Case("content-length-not-a-number", FRAMING, cl(b"12abc"), FAULT),
        Case("content-length-plus-sign", FRAMING, cl(b"+65536"), FAULT),
        Case("content-length-hex", FRAMING, cl(b"0x10000"), FAULT),
        Case("content-length-conflicting-fields", FRAMING, cl(b"65536", b"1000"), FAULT),
        Case("content-length-conflicting-list", FRAMING, cl(b"65536, 1000"), FAULT),
        Case("content-length-absurd", FRAMING, cl(b"9" * 30), FAULT),
        # Identical duplicates may be accepted (RFC 9110, 8.6) or refused: never a wrong file.
        Case("content-length-identical-duplicates", FRAMING, cl(b"65536", b"65536"), frozenset({0, 3})),
        Case("te-and-cl-correct-chunked-body", FRAMING, _once(_te_and_cl), OK),
        Case(
            "te-and-cl-longer-cl",
            FRAMING,
            _once(lambda w, r: _te_and_cl(w, r, cl=b"Content-Length: 99999999")),
            OK,
        ),
        Case(
            "te-and-cl-flipped-byte", FRAMING, _once(lambda w, r: _te_and_cl(w, r, flip=True)), frozenset({4})
        ),
        Case("te-and-cl-correct-chunked-body-tls", FRAMING, _once(_te_and_cl), OK, tls=True),
        Case("te-unknown-coding", FRAMING, _fields(b"Transfer-Encoding: bogus"), FAULT),
        Case("te-gzip-not-asked", FRAMING, _fields(b"Transfer-Encoding: gzip, chunked"), FAULT),
        Case("chunk-size-not-hex", FRAMING, _chunks(b"zz\r\n"), FAULT),
        Case("chunk-size-negative", FRAMING, _chunks(b"-1000\r\n"), FAULT),
        Case("chunk-size-absurd", FRAMING, _chunks(b"f" * 40 + b"\r\n"), FAULT),
        Case("chunk-size-absurd-tls", FRAMING, _chunks(b"f" * 40 + b"\r\n"), FAULT, tls=True),
        Case(
            "chunk-missing-crlf",
            FRAMING,
            _once(
                lambda w, r: (
                    head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked")
                    + b"1000\r\n"
                    + w.data[:4096]
                    + b"1000\r\n"
                    + w.data[4096:8192]
                )
            ),
            FAULT,
        ),
        Case(
            "chunk-extension-endless",
            FRAMING,
            _forever(head(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked") + b"1000;ext=", b"e" * 4096),
            FAULT,
        ),
        # The body is whole before the trailers start: reading on without end is the failure (or stopping at
        # the end of the body, with the file verified).
        Case("trailers-endless", FRAMING, _trailers_after_body, frozenset({0, 3})),
        Case("interim-endless", FRAMING, _forever(b"", head(b"HTTP/1.1 100 Continue")), FAULT),
        Case(
            "interim-endless-with-fields",
            FRAMING,
            _forever(b"", head(b"HTTP/1.1 103 Early Hints", b"Link: </a>; rel=preload")),
            FAULT,
        ),
        Case("interim-then-answer", FRAMING, _once(_interim_then_answer), OK),
        Case("interim-then-answer-tls", FRAMING, _once(_interim_then_answer), OK, tls=True),
        Case(
            "switching-protocols-unasked",
            FRAMING,
            _fields(b"Upgrade: h2c", status=b"HTTP/1.1 101 Switching"),
            FAULT,
        ),
    ]


# -- 3. ranges that lie ------------------------------------------------------------------------------------
def _range(*fields: bytes, status: bytes = b"HTTP/1.1 206 Partial Content") -> Callable[[World], Script]:
    """A 206 with exactly these fields (Content-Length of the whole payload added) and the whole payload."""
    return _once(lambda w, req: head(status, _full_cl(w), *fields, b"ETag: " + ETAG) + w.data)


def _resume_answer(make: Callable[[World, Request], bytes]) -> Callable[[World], Script]:
    """The first answer honest but broken off; the resumed ones made by ``make``."""
    return lambda w: broken_then_honest(w, (b"ETag: " + ETAG,), later=lambda req: make(w, req))


def _resume_wrong_start(w: World, req: Request) -> bytes:
    start, end = req.range(len(w.data))
    return (
        head(
            b"HTTP/1.1 206 Partial Content",
            content_range(0, end - start, len(w.data)),
            length(end - start),
            b"ETag: " + ETAG,
        )
        + w.data[start:end]
    )


def _resume_wrong_bytes(w: World, req: Request) -> bytes:
    start, end = req.range(len(w.data))
    return (
        head(
            b"HTTP/1.1 206 Partial Content",
            content_range(start, end, len(w.data)),
            length(end - start),
            b"ETag: " + ETAG,
        )
        + w.data[: end - start]
    )


def _resume_other_total(w: World, req: Request) -> bytes:
    start, end = req.range(len(w.data))
    return (
        head(
            b"HTTP/1.1 206 Partial Content",
            content_range(start, end, len(w.data) + 4000),
            length(end - start),
            b"ETag: " + ETAG,
        )
        + w.data[start:end]
    )


def _ranges() -> list[Case]:
    n = 64 * KiB
    tib = 1 << 40
    # A range of a 1 TiB file, its length and Content-Range agreeing: sized or not by the registry.
    tib_range = _once(
        lambda w, r: (
            head(b"HTTP/1.1 206 Partial", b"Content-Range: bytes 0-%d/%d" % (tib - 1, tib), length(tib))
            + w.data
        )
    )
    return [
        # Asked for the whole file, told it gets it from byte 100 on (and given it from byte 0).
        Case(
            "content-range-wrong-start",
            RANGES,
            _once(
                lambda w, r: (
                    head(b"HTTP/1.1 206 Partial Content", content_range(100, n, n), length(n - 100))
                    + w.data[: n - 100]
                )
            ),
            FAULT,
        ),
        Case(
            "content-range-wrong-total", RANGES, _range(b"Content-Range: bytes 0-%d/99999" % (n - 1)), FAULT
        ),
        Case(
            "content-range-negative-total",
            RANGES,
            _range(b"Content-Range: bytes 0-%d/-%d" % (n - 1, n)),
            FAULT,
        ),
        Case(
            "content-range-absurd-total",
            RANGES,
            _range(b"Content-Range: bytes 0-%d/%s" % (n - 1, b"9" * 30)),
            FAULT,
        ),
        Case(
            "content-range-1tib-consistent",
            RANGES,
            tib_range,
            FAULT,
        ),
        Case(
            "content-range-1tib-unsized-registry",
            RANGES,
            tib_range,
            FAULT,
            sized=False,
        ),
        Case(
            "content-range-end-past-total",
            RANGES,
            _range(b"Content-Range: bytes 100-%d/%d" % (n + 99, n)),
            FAULT,
        ),
        Case("partial-without-content-range", RANGES, _range(), FAULT),
        Case("content-range-unsatisfied-form", RANGES, _range(b"Content-Range: bytes */%d" % n), FAULT),
        Case("content-range-end-before-start", RANGES, _range(b"Content-Range: bytes 500-100/%d" % n), FAULT),
        Case("content-range-garbage", RANGES, _range(b"Content-Range: bytes abc"), FAULT),
        Case(
            "content-range-disagrees-with-length",
            RANGES,
            _once(
                lambda w, r: (
                    head(b"HTTP/1.1 206 Partial", content_range(0, n, n), length(1000)) + w.data[:1000]
                )
            ),
            FAULT,
        ),
        Case(
            "multipart-unasked",
            RANGES,
            _range(b"Content-Type: multipart/byteranges; boundary=XYZ"),
            FAULT,
        ),
        Case("resume-wrong-start", RANGES, _resume_answer(_resume_wrong_start), FAULT),
        Case("resume-wrong-bytes", RANGES, _resume_answer(_resume_wrong_bytes), FAULT),
        Case("resume-other-total", RANGES, _resume_answer(_resume_other_total), FAULT),
        Case(
            "content-range-absurd-total-tls",
            RANGES,
            _range(b"Content-Range: bytes 0-%d/%s" % (n - 1, b"9" * 30)),
            FAULT,
            tls=True,
        ),
        Case("resume-wrong-start-tls", RANGES, _resume_answer(_resume_wrong_start), FAULT, tls=True),
    ]


# -- 4. slowness as an attack ------------------------------------------------------------------------------
def _drip_head(w: World) -> Script:
    def script(conn: Conn) -> None:
        if (req := conn.request()) is not None:
            answer = partial(req, w.data, b"X-Pad: " + b"p" * 2000)  # about 100 s for the head alone
            cut = answer.index(b"\r\n\r\n") + 4
            if conn.drip(answer[:cut], 0.05):
                conn.send(answer[cut:])

    return script


def _drip_body(w: World) -> Script:
    def script(conn: Conn) -> None:
        if (req := conn.request()) is not None:
            answer = partial(req, w.data)
            cut = answer.index(b"\r\n\r\n") + 4
            if conn.send(answer[:cut]):
                conn.drip(answer[cut:], 0.05)

    return script


def _drip_fields(w: World) -> Script:
    def script(conn: Conn) -> None:
        if conn.request() is not None and conn.send(b"HTTP/1.1 206 Partial Content\r\n"):
            conn.drip(b"X-Slow: " + b"s" * 100_000, 0.05)

    return script


def _never_answer(w: World) -> Script:
    def script(conn: Conn) -> None:
        conn.request()
        conn.hang()

    return script


def _never_read(w: World) -> Script:
    return lambda conn: conn.hang()


def _tls_drip(w: World) -> Script:
    def script(conn: Conn) -> None:
        # A TLS record header announcing a 16 KiB handshake message, then one byte of it every 0.2 s.
        conn.drip(b"\x16\x03\x03\x40\x00" + b"\x02" + b"\x00" * 16_000, 0.2)

    return script


def _thousand(then: str) -> Callable[[World], Script]:
    def factory(w: World) -> Script:
        def script(conn: Conn) -> None:
            if (req := conn.request()) is None:
                return
            answer = partial(req, w.data)
            cut = answer.index(b"\r\n\r\n") + 4
            if not conn.send(answer[: cut + 1000]):
                return
            if then == "reset":
                conn.reset()
            elif then == "hang":
                conn.hang()

        return script

    return factory


def _slow_but_honest(w: World) -> Script:
    def script(conn: Conn) -> None:
        while (req := conn.request()) is not None:
            if not conn.drip(partial(req, w.data), 0.03, step=1024):  # about 32 KiB/s
                return

    return script


def _slow() -> list[Case]:
    def slow(
        name: str,
        script: Callable[[World], Script],
        *,
        tls: bool = False,
        handshake: bool = True,
        size: int = 64 * KiB,
    ) -> Case:
        return Case(name, SLOW, script, NETWORK, args=SPEED, tls=tls, handshake=handshake, size=size)

    return [
        slow("head-drips-byte-by-byte", _drip_head),
        slow("body-drips-byte-by-byte", _drip_body),
        slow("fields-drip-without-end", _drip_fields),
        slow("accepts-never-answers", _never_answer),
        slow("accepts-never-reads", _never_read),
        slow("tls-handshake-silent", _never_read, tls=True, handshake=False),
        slow("tls-handshake-drips", _tls_drip, tls=True, handshake=False),
        slow("thousand-bytes-then-close", _thousand("close"), size=1 * MiB),
        slow("thousand-bytes-then-hang", _thousand("hang"), size=1 * MiB),
        slow("body-drips-byte-by-byte-tls", _drip_body, tls=True),
        Case("slow-but-honest-link", SLOW, _slow_but_honest, OK, args=SPEED),
        # With no option at all: the defaults must end these by themselves too.
        Case(
            "thousand-bytes-then-close-defaults",
            SLOW,
            _thousand("close"),
            NETWORK,
            size=1 * MiB,
            args=(),
            timeout=80,
        ),
        Case(
            "thousand-bytes-then-reset-defaults",
            SLOW,
            _thousand("reset"),
            NETWORK,
            size=1 * MiB,
            args=(),
            timeout=80,
        ),
    ]


# -- 5. values the server chooses are never sent back raw --------------------------------------------------
INJECT = b"X-Injected: yes"


def _echo(validator: bytes) -> Callable[[World], Script]:
    return lambda w: broken_then_honest(w, (validator,))


def _redirected_to(target: int) -> Callable[[World], Script]:
    """Every request is sent on to the same path on server ``target``."""
    return lambda w: (
        lambda conn: answer_each(
            conn,
            lambda req: head(
                b"HTTP/1.1 302 Found", b"Location: " + (w.urls[target] + req.target).encode(), length(0)
            ),
        )
    )


def _evil_then_redirect(w: World) -> Script:
    """The first answer carries the injection and breaks off; every later request goes to the other origin."""
    first = broken_then_honest(w, (b"ETag: " + ETAG + b"\n" + INJECT,))

    def script(conn: Conn) -> None:
        if conn.index == 0:
            first(conn)
        else:
            _redirected_to(1)(w)(conn)

    return script


def _redirect_first(location: bytes) -> Callable[[World], Script]:
    """The first connection is redirected to ``location`` (the server's own text), the others answered."""

    def factory(w: World) -> Script:
        def script(conn: Conn) -> None:
            if conn.index == 0:
                answer_once(
                    conn, lambda req: head(b"HTTP/1.1 302 Found", b"Location: " + location, length(0))
                )
            else:
                honest(w)(conn)

        return script

    return factory


def _echo_cases() -> list[Case]:
    maybe = frozenset({0, 3})  # a client may refuse such an answer, or drop the bad validator and resume

    def case(name: str, validator: bytes, *, tls: bool = False) -> Case:
        return Case(name, ECHO, _echo(validator), maybe, echo_check=True, tls=tls)

    date = b"Last-Modified: Tue, 01 Jan 2030 00:00:00 GMT"
    return [
        case("etag-bare-cr", b"ETag: " + ETAG + b"\r" + INJECT),
        case("etag-bare-lf", b"ETag: " + ETAG + b"\n" + INJECT),
        case("etag-obs-fold", b"ETag: " + ETAG + b"\r\n " + INJECT),
        case("etag-nul", b'ETag: "v1\x00' + INJECT + b'"'),
        case("etag-unbalanced-quote", b'ETag: "v1\r\n' + INJECT + b'"'),
        case("last-modified-bare-lf", date + b"\n" + INJECT),
        case("last-modified-bare-cr", date + b"\r" + INJECT),
        case("etag-bare-lf-tls", b"ETag: " + ETAG + b"\n" + INJECT, tls=True),
        # A redirect target is the server's text too: it must not reach a request line or field raw.
        Case("location-bare-cr", ECHO, _redirect_first(b"/m2.pt\r" + INJECT), maybe, echo_check=True),
        Case("location-bare-lf", ECHO, _redirect_first(b"/m2.pt\n" + INJECT), maybe, echo_check=True),
        Case(
            "redirect-then-evil-etag",
            ECHO,
            _redirected_to(1),
            maybe,
            second=_echo(b"ETag: " + ETAG + b"\n" + INJECT),
            echo_check=True,
        ),
        Case(
            "evil-etag-then-redirect-to-other-origin",
            ECHO,
            _evil_then_redirect,
            maybe,
            second=honest,
            echo_check=True,
        ),
    ]


# -- 6. text the server chooses is shortened and stripped --------------------------------------------------
def _text_status(line: bytes, *fields: bytes, body: bytes = b"") -> Callable[[World], Script]:
    return _each(lambda w, req: head(line, length(len(body)), *fields) + body)


def _growing_redirect(w: World, req: Request) -> bytes:
    return head(
        b"HTTP/1.1 302 Found", b"Location: " + req.target.encode() + b"/%1b[31m" + b"x" * 500, length(0)
    )


def _text() -> list[Case]:
    esc_body = b"\x1b[2J\x1b[31mYOU HAVE BEEN \x1b]0;owned\x07PWNED\r\n\x00" + b"\xe2\x80\xae" + b"A" * 10_000

    def case(name: str, script: Callable[[World], Script], *, tls: bool = False) -> Case:
        return Case(name, TEXT, script, NETWORK, mirror=True, timeout=60, tls=tls)

    return [
        case("reason-escape-sequences", _text_status(b"HTTP/1.1 404 \x1b[31mNot Found\x1b]0;owned\x07")),
        case("reason-bidi-override", _text_status(b"HTTP/1.1 404 Not \xe2\x80\xaeDNUOF\xe2\x80\xac")),
        case("reason-c1-controls", _text_status(b"HTTP/1.1 404 \x9b31m\x85red\x9d")),
        case("reason-bare-cr", _text_status(b"HTTP/1.1 404 Not\rFound")),
        case("reason-20k", _text_status(b"HTTP/1.1 404 " + b"N" * 20_000)),
        case(
            "reason-escape-sequences-tls",
            _text_status(b"HTTP/1.1 404 \x1b[31mNot Found\x1b]0;owned\x07"),
            tls=True,
        ),
        case(
            "location-escapes-percent-encoded",
            _text_status(b"HTTP/1.1 302 Found", b"Location: ftp://evil.example/%1b[2J%1b]0;x%07%e2%80%ae%00"),
        ),
        case(
            "location-raw-c1-and-bidi",
            _text_status(b"HTTP/1.1 302 Found", b"Location: ftp://evil/\x9b2J\xe2\x80\xae"),
        ),
        case("location-nul", _text_status(b"HTTP/1.1 302 Found", b"Location: /a\x00b")),
        case("location-20k", _text_status(b"HTTP/1.1 302 Found", b"Location: ftp://" + b"a" * 20_000)),
        case("location-growing-loop", _each(_growing_redirect)),
        case("error-body-escapes-403", _text_status(b"HTTP/1.1 403 Forbidden", body=esc_body)),
        case("error-body-escapes-500", _text_status(b"HTTP/1.1 500 \x1b[5mBlink", body=esc_body)),
    ]


def all_cases() -> list[Case]:
    cases = [*_heads(), *_framing(), *_ranges(), *_slow(), *_echo_cases(), *_text()]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases

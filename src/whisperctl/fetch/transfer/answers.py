"""What a server's answer says, checked before any of it is believed: pure functions of its fields.

A server (a mirror, a proxy, a CDN a user points us at) is not trusted: a Content-Range that does not
describe the range asked for, a total that disagrees with what is known, a validator that would inject a
header when sent back. Each check here either returns a value the engine can use or says why not.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from whisperctl.errors import quoted

__all__ = [
    "ContentRange",
    "Untrusted",
    "Validators",
    "check_partial",
    "framed_length",
    "origin_of",
    "parse_content_range",
    "parse_retry_after",
    "probe_total",
    "requested_end",
]

# RFC 9110, 8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; obs-text left out (it only goes back
# to the server, and a validator dropped costs at most a restart).
_ETAG = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')
_VISIBLE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")  # a field value without controls
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})")
_DIGITS = re.compile(r"[0-9]{1,19}")


class Untrusted(Exception):
    """An answer that contradicts the request or what is known; its message says how, quoting the server
    through :func:`~whisperctl.errors.quoted`. ``integrity``: the bytes themselves are not the file asked for
    (a size other than the registry's, a body longer than its range), not just the answer's form."""

    def __init__(self, message: str, *, integrity: bool = False) -> None:
        super().__init__(message)
        self.integrity = integrity


@dataclass(frozen=True)
class ContentRange:
    first: int
    last: int  # inclusive, as written
    total: int


def parse_content_range(value: str | None) -> ContentRange | None:
    """``bytes first-last/total`` with ``first <= last < total``; None for anything else."""
    match = _CONTENT_RANGE.fullmatch(value or "")
    if match is None:
        return None
    first, last, total = (int(g) for g in match.groups())
    return ContentRange(first, last, total) if first <= last < total else None


def check_partial(headers: Mapping[str, str], start: int, end: int | None, total: int | None) -> ContentRange:
    """The Content-Range of a 206 answer to ``Range: bytes=start-(end-1)``, once it is shown to describe the
    bytes asked for (``end`` None: to the end), within the ``total`` known (if any) and agreeing with the
    Content-Length. Raises :class:`Untrusted` otherwise."""
    value = headers.get("content-range")
    if value is None:
        raise Untrusted("a 206 answer without Content-Range")
    span = parse_content_range(value)
    if span is None:
        raise Untrusted(f"an unusable Content-Range {quoted(value)}")
    if span.first != start:
        raise Untrusted(f"Content-Range {quoted(value)} for bytes asked from {start:,}")
    if end is not None and span.last >= end:
        raise Untrusted(f"Content-Range {quoted(value)} for bytes asked up to {end - 1:,}")
    if total is not None and span.total != total:
        raise Untrusted(f"Content-Range {quoted(value)} for a file of {total:,} bytes")
    length = framed_length(headers)
    if length is not None and length != span.last - span.first + 1:
        raise Untrusted(
            f"Content-Length {length:,} disagrees with Content-Range {quoted(value)}", integrity=True
        )
    return span


def framed_length(headers: Mapping[str, str]) -> int | None:
    """The body's length as its framing says: the Content-Length, unless a Transfer-Encoding is present,
    which overrides it (RFC 9112, section 6.3: the body is then framed by its chunks, and the length a server
    put beside them says nothing)."""
    if "transfer-encoding" in headers:
        return None
    length = headers.get("content-length")
    return int(length) if length is not None and _DIGITS.fullmatch(length) else None


def probe_total(status: int, headers: Mapping[str, str], expected: int | None, cap: int) -> int | None:
    """The file's size from the first answer (a 206 already checked, or a 200), None if it does not say.

    A size other than the ``expected`` one (the registry's), or over ``cap`` when none is expected, is
    refused here, before any byte of disk is allocated for it."""
    if status == 206:
        total: int | None = check_partial(headers, 0, None, None).total
    else:
        total = framed_length(headers)
    if total is None:
        return None
    if expected is not None and total != expected:
        raise Untrusted(f"the server's file is {total:,} bytes, expected {expected:,}", integrity=True)
    if expected is None and total > cap:
        raise Untrusted(
            f"the server's file would be {total:,} bytes, more than the limit of {cap:,}", integrity=True
        )
    return total


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After (delay-seconds or an HTTP date); None if absent or unusable."""
    if not value:
        return None
    value = value.strip()
    if _DIGITS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # a date without a zone is not an HTTP date
        return None
    return max(0.0, when.timestamp() - now)


def requested_end(range_header: str) -> int | None:
    """The exclusive end of ``bytes=a-b`` (None for an open range)."""
    end = range_header.rpartition("-")[2]
    return int(end) + 1 if _DIGITS.fullmatch(end) else None


def origin_of(url: str) -> str:
    """``scheme://host:port`` of a URL: where a validator came from, and the only place it goes back to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (parts.hostname or "").lower()
    return f"{scheme}://{host}:{port or {'https': 443, 'http': 80}.get(scheme, 0)}"


def _etag(value: str | None) -> str | None:
    return value if value is not None and _ETAG.fullmatch(value) else None


def _date(value: str | None) -> str | None:
    if value is None or not _VISIBLE.fullmatch(value):
        return None
    try:
        email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return value


@dataclass(frozen=True)
class Validators:
    """A file's ETag and Last-Modified, kept only when they are valid field values of their kind, and the
    origin that gave them: they are sent back (``If-Range``) to that origin only, never after a redirect
    elsewhere."""

    etag: str | None = None
    last_modified: str | None = None
    origin: str | None = None

    @classmethod
    def of(cls, etag: str | None, last_modified: str | None, origin: str | None) -> Validators:
        etag, last_modified = _etag(etag), _date(last_modified)
        if origin is None or (etag is None and last_modified is None):
            return cls()
        return cls(etag, last_modified, origin)

    @classmethod
    def from_answer(cls, headers: Mapping[str, str], url: str) -> Validators:
        return cls.of(headers.get("etag"), headers.get("last-modified"), origin_of(url))

    def renewed(self, headers: Mapping[str, str], url: str) -> Validators:
        """These validators with the ones a later answer from ``url`` gives (those it gives, valid ones)."""
        fresh = Validators.from_answer(headers, url)
        if fresh.origin is None:
            return self
        if fresh.origin != self.origin:
            return fresh
        return Validators(fresh.etag or self.etag, fresh.last_modified or self.last_modified, self.origin)

    def if_range(self, url: str) -> str | None:
        """The If-Range value for a request to ``url``: a strong ETag, else the date (RFC 9110, 13.1.5)."""
        if self.origin is None or origin_of(url) != self.origin:
            return None
        if self.etag is not None and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

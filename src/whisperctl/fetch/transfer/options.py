"""What the transfer engine is asked (its knobs), what it reports while it runs, and what it returns."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import httpx

__all__ = ["MiB", "TransferOptions", "TransferProgress", "TransferResult"]

MiB = 1024 * 1024


class TransferProgress(Protocol):
    """What the engine reports; the CLI draws it with rich."""

    def start(self, total: int | None, completed: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...


@dataclass(frozen=True)
class TransferOptions:
    """Knobs of the engine; the defaults suit a CDN over the internet."""

    connections: int = 8  # CDNs cap each connection; against a local nginx, 1, 2 or 4 were no faster
    split_threshold: int = 64 * MiB  # smaller files go in one stream
    min_segment: int = 4 * MiB  # never split below this
    # Larger files are cut into pieces of about this size, taken in order (one request each, on kept-alive
    # connections): the hashed prefix then follows the download instead of waiting for its last segment.
    # 32 MiB takes over a second on a 20 MB/s connection, so a round trip per piece costs little.
    piece_size: int = 32 * MiB
    lean_http: bool = True  # bodies of direct connections through wire.py rather than httpx
    # Consecutive failed attempts of one segment before giving up. An attempt that moved less than
    # speed_limit * speed_time bytes before it failed is a failure too: a server that hands out a
    # thousand bytes per connection cannot keep a download going for ever.
    retries: int = 5
    backoff: float = 0.5  # first retry delay; doubles each time, with full jitter
    max_backoff: float = 30.0
    max_retry_after: float = 120.0
    stall_timeout: float = 30.0  # no byte at all for this long: drop the connection and resume the range
    connect_timeout: float = 15.0
    # The whole response head (connection and TLS handshake included) within this time: a server that
    # accepts and never answers, or drips its head a byte at a time, is retried.
    head_timeout: float = 60.0
    # The minimum progress (curl's --speed-limit / --speed-time): a transfer that moves less than
    # speed_limit bytes/s, all its connections together, over speed_time seconds drops its connections and
    # retries them. 0 turns the rule off. 1 KiB/s is far below any link a model can be downloaded over.
    speed_limit: int = 1024
    speed_time: float = 60.0
    max_redirects: int = 5
    checkpoint_interval: float = 2.0
    max_unknown_size: int = 64 * 1024 * MiB  # cap for a body of unknown size (no registry size, no length)
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)

    def timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.stall_timeout, connect=self.connect_timeout)

    @property
    def head_deadline(self) -> float:
        """Seconds a request has for its whole response head, connection and TLS handshake included: the
        head timeout, or less under the minimum pace (no byte of the body can flow before the head, so a
        head that takes ``speed_time`` seconds is a transfer below ``speed_limit``, as curl counts it)."""
        if self.speed_limit > 0:
            return min(self.head_timeout, self.speed_time)
        return self.head_timeout

    @property
    def least_progress(self) -> int:
        """Bytes an attempt must move for its failure not to count against ``retries``."""
        return max(1, int(self.speed_limit * self.speed_time))


@dataclass(frozen=True)
class TransferResult:
    sha256: str
    size: int
    url: str  # after redirects
    resumed_from: int  # bytes already on disk when this run started
    fd: int  # still open and fsynced; the caller closes it after the rename

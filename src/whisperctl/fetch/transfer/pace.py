"""The minimum-progress rule, as curl's ``--speed-limit`` / ``--speed-time``.

A read timeout alone does not stop a server that drips one byte just before each timeout. Here, every
connection watches the progress of the whole transfer (all its connections together) over windows of
``speed_time`` seconds: when a window ends below ``speed_limit`` bytes/s, the connection is dropped and its
range retried, and that attempt counts as a failure. Measuring the whole transfer, not each connection, keeps
an honest slow link safe whatever the number of connections; a connection dripping beside fast ones loses
its range to them piece by piece and, once alone, brings the total below the minimum.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Pace", "Window"]


class Pace:
    """The bytes a transfer moved so far, for its connections' windows."""

    def __init__(self, limit: int, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit  # bytes/s; 0: no minimum
        self.period = period
        self.clock = clock
        self.moved = 0

    def window(self) -> Window:
        """A window for one connection, starting now."""
        return Window(self)


class Window:
    """One connection's view of its transfer's pace."""

    def __init__(self, pace: Pace) -> None:
        self._pace = pace
        self._since = pace.clock()
        self._mark = pace.moved

    def shortfall(self) -> str | None:
        """Why the transfer is too slow, when a window just ended below the minimum; None otherwise."""
        pace = self._pace
        if pace.limit <= 0:
            return None
        now = pace.clock()
        elapsed = now - self._since
        if elapsed < pace.period:
            return None
        moved = pace.moved - self._mark
        if moved < pace.limit * elapsed:
            return (
                f"only {moved:,} bytes in {elapsed:.0f} s, below the minimum of {pace.limit:,} bytes/s "
                f"(--speed-limit) over {pace.period:g} s (--speed-time)"
            )
        self._since, self._mark = now, pace.moved
        return None

"""SHA-256 of a file while it is being written: a thread reads back, in order, what the writer says is on
disk and hashes it, and starts the disk writes of what it has hashed.

Both a download (whose ranges land out of order: the writer advances the contiguous prefix) and a
converter's output file (written in order) use it, so it sits beside :mod:`whisperctl.writeback`, below
every layer. Reading back from the page cache, rather than hashing the writer's buffers, keeps no reference
to them: a writer may reuse a buffer, or drop the pages of a mapped input it has just passed through.
hashlib releases the GIL for large updates, so the hash runs on another core.
"""

from __future__ import annotations

import hashlib
import os
import threading

from whisperctl.writeback import STEP, Writeback

__all__ = ["CHUNK", "FollowingHasher"]

CHUNK = 4 * 1024 * 1024  # one read back and hash update at most
_WAKE = 1024 * 1024  # with a bound on what is unhashed, the thread is woken for this much at least


class FollowingHasher:
    """Hashes the file open as ``fd`` in order as far as the writer has advanced (the *frontier*).

    ``in_flight``: at most this many unhashed bytes; :meth:`advance` waits beyond it (so that what is read
    back is still in the page cache) and raises the thread's error at once. Without it the writer never
    waits and an error is raised by :meth:`finish`. ``writeback_step``: the writeback of what is hashed is
    started every so many bytes (:class:`~whisperctl.writeback.Writeback`; 0: never, the final fsync does it
    all). A resumed download re-hashes its old prefix from disk the same way.
    """

    def __init__(self, fd: int, *, in_flight: int | None = None, writeback_step: int = STEP) -> None:
        self._fd = fd
        self._in_flight = in_flight
        self._wake = 1 if in_flight is None else max(1, min(_WAKE, in_flight))
        self._writeback = Writeback(fd, step=writeback_step) if writeback_step > 0 else None
        self._hash = hashlib.sha256()
        self._frontier = 0
        self._hashed = 0
        self._done = False
        self._stopped = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="whisperctl-hasher", daemon=True)
        self._thread.start()

    def advance(self, frontier: int) -> None:
        """Bytes up to ``frontier`` are on disk (with ``in_flight``: wait while too many are unhashed)."""
        with self._cond:
            self._frontier = max(self._frontier, frontier)
            if self._frontier - self._hashed >= self._wake:
                self._cond.notify_all()
            if self._in_flight is not None:
                while self._frontier - self._hashed > self._in_flight and self._error is None:
                    self._cond.wait()
                self._raise_error()

    def finish(self, total: int | None = None) -> str:
        """The digest of the file up to ``total`` (the caller advances to it; by default the frontier),
        once the thread has hashed all of it."""
        if total is not None:
            self.advance(total)
        with self._cond:
            self._done = True
            self._cond.notify_all()
        self._thread.join()
        self._raise_error()
        if self._hashed != self._frontier:
            raise OSError(f"hashed {self._hashed} bytes, expected {self._frontier}")
        return self._hash.hexdigest()

    def abort(self) -> None:
        """End the thread without catching up (at most one read away); idempotent."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        view = memoryview(bytearray(CHUNK))
        try:
            while True:
                with self._cond:
                    while self._frontier - self._hashed < self._wake and not self._done and not self._stopped:
                        self._cond.wait()
                    if self._stopped or self._hashed >= self._frontier:
                        return
                    end = self._frontier
                while self._hashed < end and not self._stopped:
                    n = os.preadv(self._fd, [view[: min(CHUNK, end - self._hashed)]], self._hashed)
                    if n <= 0:
                        raise OSError(f"unexpected end of file at byte {self._hashed}")
                    self._hash.update(view[:n])
                    with self._cond:
                        self._hashed += n
                        self._cond.notify_all()
                    if self._writeback is not None:
                        self._writeback.advance(self._hashed)
        except BaseException as exc:  # raised to the writer by advance() (with a bound) or finish()
            with self._cond:
                self._error = exc
                self._cond.notify_all()

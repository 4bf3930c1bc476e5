"""Start the disk writes of a file's data as it is produced, so that the ``fsync`` that makes it durable
waits for little.

The kernel writes dirty pages back on its own only once they pass ``dirty_background_ratio`` of memory (about
2.4 GB on a 24 GB machine) or after ``dirty_expire_centisecs`` (30 s): a model file of a few hundred MB to
a few GB is otherwise written to disk only when it is fsynced, after the last byte, and the whole wait for
the disk comes after the network's or the converter's. ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` (Linux)
starts that writing for a range and returns; it guarantees nothing by itself (metadata, the disk's cache),
so the ``fsync`` stays where it was. Elsewhere, and on a file system that refuses it, nothing is done.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Any

__all__ = ["Writeback"]

MiB = 1 << 20
STEP = 16 * MiB
_SYNC_FILE_RANGE_WRITE = 2


def _load() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
        function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        function.restype = ctypes.c_int
        return function
    return None


_sync_file_range = _load()


class Writeback:
    """Starts the writeback of ``fd`` behind a growing prefix of it, ``step`` bytes at a time at least.

    :meth:`advance` is called with the end of what is written so far (in order); a refusal (a pipe, a file
    system without it) turns it off for this file. Not thread-safe: one caller per file.
    """

    def __init__(self, fd: int, *, step: int = STEP) -> None:
        self.fd = fd
        self.done = 0  # writeback started for [0, done)
        self.step = step
        self.enabled = _sync_file_range is not None

    def advance(self, end: int) -> None:
        if self.enabled and end - self.done >= self.step:
            self._start(end)

    def _start(self, end: int) -> None:
        if _sync_file_range(self.fd, self.done, end - self.done, _SYNC_FILE_RANGE_WRITE) != 0:
            self.enabled = False  # a file that takes none: its fsync does it all
            return
        self.done = end

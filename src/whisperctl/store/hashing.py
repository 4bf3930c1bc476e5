"""SHA-256 of files: streaming, in parallel, and following a file that is still being written.

hashlib releases the GIL for buffers over 2 KiB, so threads hash several files (or a file and the network)
truly in parallel.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from whisperctl.writeback import Writeback

__all__ = ["CHUNK", "FollowingHasher", "copy_hashing", "hash_files", "sha256_file"]

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path | str, *, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks (memory stays flat whatever the size)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    return h.hexdigest()


def copy_hashing(src: int, dst: int, *, on_bytes: Callable[[int], object] | None = None) -> tuple[str, int]:
    """Copy the file open as ``src`` (from its start) into ``dst`` at the same offsets, 4 MiB at a time,
    hashing the bytes on the way: their hex SHA-256 and their count. Read and write errors are the
    ``OSError`` as raised; the caller says which file and why."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    writeback = Writeback(dst)  # the caller's fsync then finds most of the copy on disk
    offset = 0
    while n := os.preadv(src, [buf], offset):
        h.update(view[:n])
        done = 0
        while done < n:
            done += os.pwrite(dst, view[done:n], offset + done)
        offset += n
        writeback.advance(offset)
        if on_bytes is not None:
            on_bytes(n)
    return h.hexdigest(), offset


def hash_files(
    paths: list[Path], *, jobs: int = 4, on_bytes: Callable[[Path, int], None] | None = None
) -> dict[Path, str | OSError]:
    """Hash several files in parallel; an unreadable file maps to its ``OSError``."""

    def one(path: Path) -> str | OSError:
        try:
            return sha256_file(path, on_bytes=(lambda n: on_bytes(path, n)) if on_bytes else None)
        except OSError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(paths)))) as pool:
        return dict(zip(paths, pool.map(one, paths), strict=True))


class FollowingHasher:
    """Hashes a file in order while other code writes it out of order.

    The writer calls :meth:`advance` with the length of the contiguous prefix that is on disk (the
    *frontier*); a thread reads newly covered bytes back with ``pread`` (from the page cache, since they were
    just written) and hashes them. The digest is thus ready moments after the last byte lands, with no
    second pass over the file, and a resumed download re-hashes its old prefix from disk the same way. The
    disk writes of what is hashed are started as it goes (:class:`~whisperctl.writeback.Writeback`), so the
    final fsync finds most of the file on disk already.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._hash = hashlib.sha256()
        self._frontier = 0
        self._hashed = 0
        self._closed = False
        self._aborted = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        # What is hashed has landed in order: its writeback starts now, not at the final fsync.
        self._writeback = Writeback(fd)
        self._thread = threading.Thread(target=self._run, name="whisperctl-hasher", daemon=True)
        self._thread.start()

    def advance(self, frontier: int) -> None:
        with self._cond:
            if frontier > self._frontier:
                self._frontier = frontier
                self._cond.notify()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._hashed >= self._frontier and not self._closed:
                        self._cond.wait()
                    if self._aborted or (self._hashed >= self._frontier and self._closed):
                        return
                    end = self._frontier
                while self._hashed < end and not self._aborted:
                    n = min(CHUNK, end - self._hashed)
                    data = os.pread(self._fd, n, self._hashed)
                    if not data:
                        raise OSError(f"unexpected end of file at byte {self._hashed}")
                    self._hash.update(data)
                    self._hashed += len(data)
                    self._writeback.advance(self._hashed)
        except BaseException as exc:  # reported by finish()
            self._error = exc

    def finish(self, total: int) -> str:
        """Wait until ``total`` bytes are hashed (the caller has advanced to it) and return the digest."""
        self.advance(total)
        self.close()
        if self._error is not None:
            raise self._error
        if self._hashed != total:
            raise OSError(f"hashed {self._hashed} bytes, expected {total}")
        return self._hash.hexdigest()

    def abort(self) -> None:
        """Stop the thread as soon as possible, without catching up (idempotent)."""
        with self._cond:
            self._aborted = True
        self.close()

    def close(self) -> None:
        """Stop the thread once it has caught up with the frontier (idempotent)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

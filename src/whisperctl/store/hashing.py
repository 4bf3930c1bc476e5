"""SHA-256 of files: streaming, in parallel, and following a file that is still being written.

hashlib releases the GIL for buffers over 2 KiB, so threads hash several files (or a file and the network)
truly in parallel.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from whisperctl.following import CHUNK, FollowingHasher
from whisperctl.writeback import Writeback

__all__ = ["CHUNK", "FollowingHasher", "copy_hashing", "hash_files", "sha256_file"]


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

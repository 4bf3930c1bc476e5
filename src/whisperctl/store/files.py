"""Safe file operations on the cache: partial files created fresh (never through a symlink), preallocated,
written in place; write failures said as what they are (a full disk is exit 6)."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from whisperctl.errors import CacheError

__all__ = ["create_partial", "is_disk_full", "write_at", "write_error"]


def create_partial(part: Path, state_path: Path, total: int | None) -> int:
    """A fresh partial file (never one found in place, never through a symlink), preallocated to ``total``.

    Returns its descriptor. A full disk is a :class:`CacheError` (exit 6) with both files removed.
    """
    for path in (part, state_path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # unlinks a planted symlink itself, never its target
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(part, flags, 0o666)  # the umask decides, as for any new file
    except OSError as exc:
        raise CacheError(
            f"{part}: cannot create the partial file ({exc.strerror or exc}); check the cache"
        ) from exc
    try:
        if total:
            if hasattr(os, "posix_fallocate"):
                # Reserve the blocks now: a full disk fails here, not after gigabytes of transfer.
                os.posix_fallocate(fd, 0, total)
            else:  # pragma: no cover - macOS, Windows
                os.ftruncate(fd, total)
    except OSError as exc:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        if is_disk_full(exc):
            raise CacheError(
                f"{part}: no space for {total:,} bytes ({exc.strerror}); the partial file was removed; "
                "free some space or use another --cache-dir"
            ) from exc
        raise CacheError(f"{part}: cannot allocate the partial file ({exc.strerror or exc})") from exc
    return fd


def write_at(fd: int, data: bytes | memoryview, offset: int, part: Path) -> None:
    """``pwrite`` all of ``data`` at ``offset``; a failure is a :class:`CacheError` (exit 6).

    The caller removes the partial file on that error (a full disk should not stay full of it).
    """
    view = memoryview(data)
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    except OSError as exc:
        raise write_error(exc, part) from exc


def write_error(exc: OSError, part: Path) -> CacheError:
    """The error for a failed write into ``part``: a full disk said as such (exit 6 either way)."""
    if is_disk_full(exc):
        return CacheError(
            f"{part}: the disk is full ({exc.strerror}); the partial file was removed; "
            "free some space or use another --cache-dir"
        )
    return CacheError(f"{part}: write failed ({exc.strerror or exc})")


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

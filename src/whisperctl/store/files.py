"""Safe file operations on the cache: every open that creates or writes never follows a symlink planted at its
name; new files get the umask's mode; atomic writes go through a private temporary name and ``os.replace``;
partial files are created fresh, preallocated and written in place; write failures are said as what they are
(a full disk is exit 6)."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from whisperctl.errors import CacheError
from whisperctl.store.hashing import copy_hashing
from whisperctl.store.layout import temporary_path

__all__ = [
    "atomic_write_text",
    "copy_to_new",
    "create_partial",
    "fsync_path",
    "is_disk_full",
    "new_file_mode",
    "open_nofollow",
    "write_at",
    "write_error",
]

# Where the platform has them: never through a symlink at the last component (ELOOP instead), and never
# inherited by a child process.
_SAFE_FLAGS = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def open_nofollow(path: Path | str, flags: int, mode: int = 0o666) -> int:
    """``os.open`` that never follows a symlink at ``path``; a new file gets ``mode`` minus the umask.

    0o666 and not mkstemp's 0o600: the umask decides, so that a group-shared cache stays shared.
    """
    return os.open(path, flags | _SAFE_FLAGS, mode)


def new_file_mode() -> int:
    """0o666 minus the process's umask: the mode of every new file, so that a group-shared cache stays shared.

    Read from ``/proc`` where possible: setting the umask to read it is not thread-safe.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_path(path: Path) -> None:
    """Make a file's data, or the renames in a directory, durable (``OSError`` where the platform or
    filesystem cannot)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def copy_to_new(src: int, dest: Path) -> tuple[str, os.stat_result]:
    """Copy the file open as ``src`` into the new file ``dest`` (created here, fsynced): the SHA-256 of the
    bytes written, and ``dest``'s stat. ``OSError`` as raised; the caller removes ``dest`` on failure."""
    out = open_nofollow(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        digest, _ = copy_hashing(src, out)
        os.fsync(out)
        return digest, os.fstat(out)
    finally:
        os.close(out)


def create_partial(part: Path, state_path: Path, total: int | None) -> int:
    """A fresh partial file (never one found in place, never through a symlink), preallocated to ``total``.

    Returns its descriptor. A full disk is a :class:`CacheError` (exit 6) with both files removed.
    """
    for path in (part, state_path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # unlinks a planted symlink itself, never its target
    try:
        fd = open_nofollow(part, os.O_RDWR | os.O_CREAT | os.O_EXCL)
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

"""The final placement of a verified download: ``<file>.part`` -> ``.<file>.<hex>.tmp`` -> ``<file>``.

"The lock is for efficiency, the hash is for correctness": a file reaches its final name only by
``os.replace`` of this process's own verified, fsynced file, whatever the locks did.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from whisperctl.errors import CacheError, IntegrityError
from whisperctl.models.registry import ModelSpec
from whisperctl.store.cache import Cache
from whisperctl.store.files import copy_to_new, fsync_path
from whisperctl.store.layout import SIDECAR_SUFFIX, temporary_path, temporary_target

__all__ = ["place_verified", "remove_stale_temporaries", "stale_temporaries"]


def place_verified(cache: Cache, spec: ModelSpec, digest: str, fd: int) -> str | None:
    """Move the verified, fsynced file open as ``fd`` to the model's final name, then stamp it.

    Returns a warning when the file is in place but its stamp could not be recorded (a full disk, say): the
    download succeeded, and the next run hashes the file once more instead of trusting a stamp.

    It moves through a private name, and only if ``<file>.part`` is still this descriptor's file: where locks
    do not work (some network filesystems), another process may have replaced the partial file with its own
    unfinished one. Then the verified bytes are copied from the descriptor instead, hashed again on the way.
    """
    part, final = cache.partial_path(spec), cache.path_for(spec)
    private = temporary_path(final)
    try:
        try:
            st = _move_if_same(part, private, os.fstat(fd)) or _copy_verified(fd, private, digest)
            os.replace(private, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                private.unlink()
            raise
    except OSError as exc:
        raise CacheError(
            f"{final}: cannot move the verified file into place ({exc.strerror or exc})"
        ) from exc
    warning = None
    try:
        # The rename itself must survive a power loss, or the stamp could outlive the file it describes.
        fsync_path(cache.root)
        cache.write_stamp(spec, st, digest)
    except OSError as exc:
        with contextlib.suppress(OSError):
            cache.forget_stamp(spec)  # an older stamp describes another inode anyway; do not leave doubt
        warning = (
            f"{final}: downloaded and verified, but its stamp could not be written ({exc.strerror or exc}); "
            "the file will be hashed again on its next use"
        )
    with contextlib.suppress(OSError):
        cache.partial_state_path(spec).unlink()
    return warning


def stale_temporaries(cache: Cache, spec: ModelSpec | str) -> list[Path]:
    """What a process killed inside :func:`place_verified` or a sidecar write left beside the model's file: a
    private copy of the file (as large as the model) or of the sidecar. Remove them only under the model's
    lock, which every writer of these names held."""
    final = cache.path_for(spec).name
    try:
        names = os.listdir(cache.root)
    except OSError:
        return []
    return [cache.root / n for n in names if temporary_target(n) in (final, final + SIDECAR_SUFFIX)]


def remove_stale_temporaries(cache: Cache, spec: ModelSpec | str) -> None:
    for path in stale_temporaries(cache, spec):
        with contextlib.suppress(OSError):
            os.unlink(path)


def _move_if_same(part: Path, private: Path, mine: os.stat_result) -> os.stat_result | None:
    """Rename ``part`` to ``private`` if it is the file ``mine`` describes: its stat, else None."""
    try:
        st = os.stat(part, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
            return None
        os.rename(part, private)
    except FileNotFoundError:
        return None
    st = os.stat(private, follow_symlinks=False)
    if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
        return st
    # Another process's partial file took the name between the check and the rename: give it back.
    with contextlib.suppress(OSError):
        os.link(private, part)
    os.unlink(private)
    return None


def _copy_verified(fd: int, dest: Path, digest: str) -> os.stat_result:
    """Copy the file open as ``fd`` to a new file ``dest``, fsynced; its stat, once its digest matched."""
    actual, st = copy_to_new(fd, dest)
    if actual != digest:
        raise IntegrityError(
            f"{dest}: the verified download changed on disk (SHA-256 {actual}, expected "
            f"{digest}); check the cache filesystem and download again"
        )
    return st

"""Per-model cross-process locks, one implementation for every command that writes a model's files.

"The lock is for efficiency, the hash is for correctness". A download holds its model's lock (and says who it
is in an *owner note* beside it), so that concurrent processes fetch a model once; ``rm`` and ``prune`` take
the lock without waiting, so that they never remove what a download is writing. Where locks do not work at all
(some network filesystems, a lock file that another user made unwritable), everyone carries on without one:
a file reaches its final name only after its digest matched, whatever the locks did.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from whisperctl.models.registry import ModelSpec
from whisperctl.store.cache import Cache
from whisperctl.store.files import new_file_mode, open_nofollow

if TYPE_CHECKING:
    import filelock  # imported when a lock is taken: `list` and `path` start without it

__all__ = ["Attempt", "ModelLock", "lock_holder", "lock_unless_busy", "model_lock", "probe"]

Attempt = Literal["held", "busy", "free"]  # free: nobody holds it, and this process does not either


def lock_holder(cache: Cache, model: ModelSpec | str) -> str:
    """Who holds a model file's lock, as the holder recorded it in its note; else "another process"."""
    try:
        holder = json.loads(cache.owner_path(model).read_text("utf-8"))
        return f"process {holder['pid']} on {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class ModelLock:
    """The lock of one model file: ``locks/<file>.lock``, and its holder's note ``locks/<file>.owner``."""

    def __init__(self, cache: Cache, model: ModelSpec | str) -> None:
        self.path = cache.lock_path(model)
        self.owner_path = cache.owner_path(model)
        self._lock: filelock.BaseFileLock | None = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def try_acquire(self, *, create: bool = True) -> Attempt:
        """Take the lock without waiting. ``create=False`` leaves a missing lock file missing (then nobody
        can hold it: ``free``). ``OSError`` or ``NotImplementedError`` where no lock can be taken here."""
        import filelock

        if self._lock is not None:
            return "held"
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            return "free"
        lock = filelock.FileLock(str(self.path), mode=new_file_mode())
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return "busy"
        self._lock = lock
        return "held"

    def write_note(self) -> None:
        """Say who holds the lock (best effort: without a note, waiters say "another process")."""
        import socket  # not at start-up: `list` and `path` take no lock

        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        with contextlib.suppress(OSError):
            # In place, not through a temporary file that a kill -9 would leave behind; never through a
            # symlink planted at the note (ELOOP: no note, then).
            fd = open_nofollow(self.owner_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with os.fdopen(fd, "w", encoding="utf-8") as note:
                note.write(json.dumps(holder))

    def release(self, *, remove_note: bool = False) -> None:
        if remove_note:
            with contextlib.suppress(OSError):
                self.owner_path.unlink()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def probe(cache: Cache, model: ModelSpec | str) -> str | None:
    """Who holds a model file's lock right now (taken and released at once; nothing is created), or None."""
    lock = ModelLock(cache, model)
    try:
        attempt = lock.try_acquire(create=False)
    except (OSError, NotImplementedError):
        return None  # no working locks: nobody can be told apart, the digest decides
    lock.release()
    return lock_holder(cache, model) if attempt == "busy" else None


@contextlib.contextmanager
def lock_unless_busy(cache: Cache, model: ModelSpec | str, *, create: bool = True) -> Iterator[str | None]:
    """Hold a model file's lock while the body runs, without waiting: yields None, or who holds it when
    another process does (then the body must leave the model's files alone).

    ``create=False`` does not make a missing lock file. Where locks do not work the body runs without one: a
    download that loses its partial file to it still finishes from its open descriptor, and the digest decides
    what reaches a final name.
    """
    lock = ModelLock(cache, model)
    try:
        attempt = lock.try_acquire(create=create)
    except (OSError, NotImplementedError):
        attempt = "free"
    try:
        yield lock_holder(cache, model) if attempt == "busy" else None
    finally:
        lock.release()


@contextlib.asynccontextmanager
async def model_lock(
    cache: Cache,
    model: ModelSpec | str,
    *,
    poll: float,
    on_wait: Callable[[str], None] | None = None,
    on_unlockable: Callable[[str], None] | None = None,
) -> AsyncIterator[bool]:
    """Wait for a model file's lock (every ``poll`` seconds) and hold it, with an owner note, while the body
    runs; yields whether it holds it.

    ``on_wait`` is told once who holds it ("process N on H"). Where the lock cannot be taken at all,
    ``on_unlockable`` gets a line saying so, and the body runs without the lock (yields False).
    """
    import asyncio  # not at start-up: only a download waits

    lock = ModelLock(cache, model)
    told = False
    try:
        while lock.try_acquire() == "busy":
            if not told and on_wait is not None:
                on_wait(lock_holder(cache, model))
                told = True
            await asyncio.sleep(poll)
    except (OSError, NotImplementedError) as exc:
        if on_unlockable is not None:
            on_unlockable(_unlockable(lock.path, exc))
        yield False
        return
    try:
        lock.write_note()
        yield True
    finally:
        lock.release(remove_note=True)


def _unlockable(path: Path, exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None) or exc
    return f"cannot lock {path} ({reason}); going on without the lock, the digest check still decides"

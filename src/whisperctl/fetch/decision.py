"""What to do for one model: a pure function of what is on disk and what is asked.

``download`` looks at the cache (:class:`OnDisk`), asks :func:`decide`, does what it says, and asks again when
it learnt something (a file hashed, a lock taken). Its table of cases is tested on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

__all__ = ["Action", "Ask", "Decision", "FileState", "OnDisk", "decide"]

FileState = Literal["verified", "unhashed", "absent"]


class Action(enum.Enum):
    SERVE = "serve"  # the cached file is good: use it
    HASH = "hash"  # a file is there but was never hashed (openai-whisper's): hash it, then decide again
    LOCK = "lock"  # take the model's lock, then decide again: another process may be at work
    FETCH = "fetch"  # download it (from the sources in order), resuming a partial file if there is one
    NOT_CACHED = "not-cached"  # offline, not in the cache, and no source that works offline


@dataclass(frozen=True)
class OnDisk:
    """The model's files in the cache."""

    file: FileState  # the final name: stamped verified, there but unhashed (or its stamp stale), or absent
    matched: bool | None = None  # for an unhashed file, once hashed: whether its digest is the registry's
    partial: bool = False  # a partial file (``<file>.part``) of an earlier run
    leftovers: bool = False  # a partial file, its record or a private temporary, beside the final file


@dataclass(frozen=True)
class Ask:
    """What the run asks, and where it stands."""

    force: bool = False
    offline: bool = False
    offline_sources: bool = False  # a source that works without the network (a directory mirror)
    locked: bool | None = None  # None: the lock not taken yet; False: no lock can be taken here


@dataclass(frozen=True)
class Decision:
    action: Action
    clean: bool = False  # SERVE: remove the leftovers (only under the lock: no other process writes them)
    resume: bool = False  # FETCH: a partial file is there to continue


def decide(disk: OnDisk, ask: Ask) -> Decision:
    if not ask.force:
        if disk.file == "unhashed" and disk.matched is None:
            return Decision(Action.HASH)
        if disk.file == "verified" or (disk.file == "unhashed" and disk.matched):
            if not disk.leftovers:
                return Decision(Action.SERVE)
            # Leftovers beside a good file (a run killed after its rename, or a --force run cut short) are of
            # no use any more; they may only be removed under the lock. Without working locks, they stay: the
            # file is good all the same.
            if ask.locked is None:
                return Decision(Action.LOCK)
            return Decision(Action.SERVE, clean=ask.locked)
    if ask.offline and not ask.offline_sources:
        return Decision(Action.NOT_CACHED)
    if ask.locked is None:
        return Decision(Action.LOCK)
    return Decision(Action.FETCH, resume=disk.partial)

"""Stamps: what a file looked like when it was last hashed, and the digest measured then.

A stamp records a file's size, mtime_ns and inode: a file whose stat still has that :func:`fingerprint` is the
file that was hashed, and need not be hashed again. Stamps are JSON, written atomically; an unreadable one is
no stamp (the file is hashed again).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from whisperctl.store.files import atomic_write_text

__all__ = ["LAYOUT_VERSION", "Stamp", "fingerprint", "read_stamp", "write_stamp"]

LAYOUT_VERSION = 1


def fingerprint(st: os.stat_result) -> tuple[int, int, int]:
    """What identifies a file's content without reading it: size, mtime_ns and inode."""
    return st.st_size, st.st_mtime_ns, st.st_ino


@dataclass(frozen=True)
class Stamp:
    """What a file looked like when it was last hashed, and the digest measured then."""

    size: int
    mtime_ns: int
    inode: int
    sha256: str
    checked_at: float

    def matches(self, st: os.stat_result, *, device: int | None = None) -> bool:
        """Whether ``st`` is the file this stamp describes; with ``device``, only on that device (an inode
        number means nothing on another filesystem)."""
        same_device = device is None or st.st_dev == device
        return same_device and (self.size, self.mtime_ns, self.inode) == fingerprint(st)


def read_stamp(path: Path) -> Stamp | None:
    """The stamp stored at ``path``, or None when there is none or it is unreadable (then re-hash)."""
    try:
        data: Any = json.loads(path.read_text("utf-8"))
        return Stamp(
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            inode=int(data["inode"]),
            sha256=str(data["sha256"]),
            checked_at=float(data["checked_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_stamp(path: Path, st: os.stat_result, sha256: str, *, name: str, filename: str) -> Stamp:
    """Record at ``path`` (atomically) the digest measured for the file whose stat is ``st``."""
    size, mtime_ns, inode = fingerprint(st)
    stamp = Stamp(size=size, mtime_ns=mtime_ns, inode=inode, sha256=sha256, checked_at=time.time())
    payload = {"layout": LAYOUT_VERSION, "name": name, "filename": filename, **asdict(stamp)}
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
    return stamp

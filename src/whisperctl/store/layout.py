"""The names of the cache's files, each rule written once.

Next to a model's file ``<file>`` (``tiny.pt``) an unfinished download is ``<file>.part`` plus its sidecar
``<file>.part.json``; whisperctl's state is ``.whisperctl/stamps/<file>.json`` and
``.whisperctl/locks/<file>.lock`` (with the holder's note ``<file>.owner``).

Every atomic write goes through a private *temporary name* next to its target, ``.<target>.<12 hex>.tmp``
(``.tiny.pt.3f2a9c01b7de.tmp``, ``.tiny.pt.part.json.3f2a9c01b7de.tmp``): hidden, unique per writer, and
recognised by :func:`temporary_target`, so that what a killed writer left can be told from anything else.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

__all__ = [
    "LOCK_SUFFIX",
    "OWNER_SUFFIX",
    "PARTIAL_SUFFIX",
    "SIDECAR_SUFFIX",
    "STAMP_SUFFIX",
    "STATE_DIRNAME",
    "temporary_path",
    "temporary_target",
]

STATE_DIRNAME = ".whisperctl"
PARTIAL_SUFFIX = ".part"
SIDECAR_SUFFIX = ".part.json"
STAMP_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
OWNER_SUFFIX = ".owner"

_TOKEN_BYTES = 6  # 12 hex digits
_TEMPORARY = re.compile(rf"\.(?P<target>.+)\.[0-9a-f]{{{2 * _TOKEN_BYTES}}}\.tmp")


def temporary_path(target: Path) -> Path:
    """A fresh private name next to ``target``: ``.<name>.<12 hex>.tmp``."""
    return target.with_name(f".{target.name}.{secrets.token_hex(_TOKEN_BYTES)}.tmp")


def temporary_target(name: str) -> str | None:
    """What the temporary file ``name`` was to become; None when ``name`` is not a temporary name."""
    m = _TEMPORARY.fullmatch(name)
    return m["target"] if m else None

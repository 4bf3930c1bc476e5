"""The resume record beside a partial file (``<file>.part.json``): which bytes are on disk, of which file.

It is written only after the data it describes was flushed (``fdatasync``), so it never claims bytes that are
not durable. It is read back only when it describes this very download (same digest, same size, segments
that tile the file, a partial file of that size); its validators are kept only when it was written for the
same URL, and only those that are valid field values (a tampered record cannot inject a header).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisperctl.fetch.transfer.answers import Validators
from whisperctl.fetch.transfer.plan import Plan
from whisperctl.store.cache import atomic_write_text

__all__ = ["STATE_VERSION", "Resumable", "load_sidecar", "sidecar_text", "write_checkpoint"]

STATE_VERSION = 1


@dataclass(frozen=True)
class Resumable:
    """What an earlier run left that this one can continue."""

    total: int
    validators: Validators
    plan: Plan


def load_sidecar(
    state_path: Path, part: Path, *, sha256: str, size: int | None, urls: tuple[str, ...], min_segment: int
) -> Resumable | None:
    """The record of an earlier run of this download (``sha256``, ``size``), if it can be trusted."""
    try:
        data: Any = json.loads(state_path.read_text("utf-8"))
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION or data.get("sha256") != sha256:
            return None
        total = int(data["total"])
        spans = [(int(s), int(e), int(d)) for s, e, d in data["segments"]]
        st = os.stat(part, follow_symlinks=False)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (size is not None and total != size) or not stat.S_ISREG(st.st_mode) or st.st_size != total:
        return None
    plan = Plan.restored(spans, total, min_segment)
    if plan is None:
        return None
    validators = Validators()
    if data.get("url") in urls:
        etag, modified, origin = (data.get(k) for k in ("etag", "last_modified", "validator_origin"))
        strings = all(v is None or isinstance(v, str) for v in (etag, modified, origin))
        if strings:
            validators = Validators.of(etag, modified, origin)
    return Resumable(total, validators, plan)


def sidecar_text(*, sha256: str, url: str, total: int, validators: Validators, plan: Plan) -> str:
    return json.dumps(
        {
            "version": STATE_VERSION,
            "sha256": sha256,
            "url": url,
            "total": total,
            "etag": validators.etag,
            "last_modified": validators.last_modified,
            "validator_origin": validators.origin,
            "segments": plan.spans(),
        }
    )


def write_checkpoint(fd: int, state_path: Path, text: str) -> None:
    """Flush the data, then record it (blocking: run it in a thread)."""
    os.fdatasync(fd)
    atomic_write_text(state_path, text)

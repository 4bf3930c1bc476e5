"""Re-hashing cached files in full and recording the result in their stamps."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from whisperctl.errors import ExitCode
from whisperctl.models.registry import ModelSpec
from whisperctl.store.cache import Cache, Status
from whisperctl.store.hashing import hash_files
from whisperctl.store.stamps import fingerprint

__all__ = ["VerifyRecord", "verify_models"]


@dataclass(frozen=True)
class VerifyRecord:
    """A model's file after a full hash: ``verified`` or ``corrupt``; ``missing`` or ``partial`` when there
    was no file to hash."""

    name: str
    path: Path
    status: Status
    sha256_expected: str
    sha256_actual: str | None
    size_bytes: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.VERIFIED

    @property
    def exit_code(self) -> ExitCode:
        """OK when verified; INTEGRITY when corrupt; NOT_CACHED when there is no (whole) file."""
        if self.status is Status.VERIFIED:
            return ExitCode.OK
        return ExitCode.INTEGRITY if self.status is Status.CORRUPT else ExitCode.NOT_CACHED


def verify_models(
    specs: Sequence[ModelSpec],
    cache: Cache,
    *,
    jobs: int = 4,
    on_start: Callable[[ModelSpec, int], None] | None = None,
    on_bytes: Callable[[ModelSpec, int], None] | None = None,
) -> list[VerifyRecord]:
    """Hash each model's file in full (several in parallel), update its stamp, and report.

    A mismatch is recorded in the stamp (the model's status becomes ``corrupt``) and the file is left as
    it is: deciding to replace it is the caller's (``verify --repair``).
    """
    records: dict[str, VerifyRecord] = {}
    to_hash: dict[Path, tuple[ModelSpec, os.stat_result]] = {}
    for spec in specs:
        entry = cache.entry(spec)
        if entry.status in (Status.MISSING, Status.PARTIAL):
            records[spec.name] = VerifyRecord(spec.name, entry.path, entry.status, spec.sha256, None)
            continue
        st = entry.path.stat()
        to_hash[entry.path] = (spec, st)
        if on_start is not None:
            on_start(spec, st.st_size)
    by_path = {path: spec for path, (spec, _) in to_hash.items()}
    digests = hash_files(
        list(to_hash),
        jobs=jobs,
        on_bytes=(lambda path, n: on_bytes(by_path[path], n)) if on_bytes else None,
    )
    for path, result in digests.items():
        spec, st = to_hash[path]
        if isinstance(result, OSError):
            records[spec.name] = VerifyRecord(
                spec.name,
                path,
                Status.CORRUPT,
                spec.sha256,
                None,
                st.st_size,
                error=f"{path}: {result.strerror}",
            )
            continue
        # Stamp only if the file did not change while it was being read.
        after = path.stat()
        if fingerprint(after) == fingerprint(st):
            # A read-only cache can still be verified: the result is reported, only not remembered.
            with contextlib.suppress(OSError):
                cache.write_stamp(spec, st, result)
        status = Status.VERIFIED if result == spec.sha256 else Status.CORRUPT
        records[spec.name] = VerifyRecord(spec.name, path, status, spec.sha256, result, st.st_size)
    return [records[spec.name] for spec in specs]

"""Where model files live, and what whisperctl knows about each of them.

The cache directory is ``--cache-dir`` > ``$WHISPERCTL_CACHE_DIR`` > openai-whisper's own default
(``$XDG_CACHE_HOME/whisper``, else ``~/.cache/whisper``), with files named as openai-whisper names them
(``tiny.pt``, ``large-v3.pt``), so that either tool uses what the other downloaded. openai-whisper 20250625
applies that rule on every platform, macOS and Windows included, so whisperctl does too: a platform-native
directory there would split the cache in two.

whisperctl's own state lives in a hidden ``.whisperctl/`` folder inside the cache, so it travels with the
files it describes (a shared NFS cache, a CI cache archive): a *stamp* per verified file records its size,
mtime_ns, inode and the SHA-256 measured when it was last hashed. A file whose stat still matches its stamp
need not be hashed again.
"""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from whisperctl.errors import CacheError
from whisperctl.models.registry import ModelSpec
from whisperctl.store.files import atomic_write_text, fsync_path, new_file_mode
from whisperctl.store.layout import (
    LOCK_SUFFIX,
    OWNER_SUFFIX,
    PARTIAL_SUFFIX,
    SIDECAR_SUFFIX,
    STAMP_SUFFIX,
    STATE_DIRNAME,
)
from whisperctl.store.stamps import LAYOUT_VERSION, Stamp, read_stamp, write_stamp

__all__ = [
    "CACHE_ENV",
    "LAYOUT_VERSION",
    "STATE_DIRNAME",
    "Cache",
    "CacheEntry",
    "Stamp",
    "Status",
    "atomic_write_text",  # the store's file operations, for the engine's sidecar writes
    "default_cache_dir",
    "fsync_path",
    "new_file_mode",
    "resolve_cache_dir",
]

CACHE_ENV = "WHISPERCTL_CACHE_DIR"


class Status(str, Enum):
    """The state of a model's file in the cache: the one vocabulary of ``list``, ``info``, ``du``, ``verify``
    and ``freeze`` (``verify`` hashes, so it never leaves a file ``present``)."""

    MISSING = "missing"  # no file
    PARTIAL = "partial"  # no file, an unfinished download (<file>.part) that `download` resumes
    PRESENT = "present"  # a file never hashed since it last changed (openai-whisper's, say)
    VERIFIED = "verified"  # its stamp still matches the file, and records the registry's digest
    CORRUPT = "corrupt"  # the last full hash of this very file did not give the registry's digest

    def __str__(self) -> str:  # the word, on every Python (3.10's f-strings and 3.11's str() differ)
        return self.value


def default_cache_dir() -> Path:
    """openai-whisper's download root: ``$XDG_CACHE_HOME/whisper``, else ``~/.cache/whisper``."""
    # An empty XDG_CACHE_HOME counts as unset (XDG Base Directory spec).
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "whisper").absolute()


def resolve_cache_dir(explicit: Path | str | None = None) -> Path:
    """``explicit`` (``--cache-dir``) > ``$WHISPERCTL_CACHE_DIR`` > :func:`default_cache_dir`."""
    chosen = explicit if explicit not in (None, "") else os.environ.get(CACHE_ENV)
    if not chosen:
        return default_cache_dir()
    return Path(chosen).expanduser().absolute()


def _filename(spec: ModelSpec | str) -> str:
    return spec if isinstance(spec, str) else spec.filename


@dataclass(frozen=True)
class CacheEntry:
    """A model's state in the cache."""

    spec: ModelSpec
    path: Path
    status: Status
    size_on_disk: int | None
    partial_path: Path | None
    stamp: Stamp | None

    @property
    def exists(self) -> bool:
        return self.status in (Status.PRESENT, Status.VERIFIED, Status.CORRUPT)


class Cache:
    """A cache directory: model files at the top, whisperctl's state in ``.whisperctl/``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.state_dir = self.root / STATE_DIRNAME

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    # The paths of a model's files, for its spec or its file name (a file left by a model no longer in the
    # registry has only a name).
    def path_for(self, spec: ModelSpec | str) -> Path:
        return self.root / _filename(spec)

    def partial_path(self, spec: ModelSpec | str) -> Path:
        return self.root / f"{_filename(spec)}{PARTIAL_SUFFIX}"

    def partial_state_path(self, spec: ModelSpec | str) -> Path:
        return self.root / f"{_filename(spec)}{SIDECAR_SUFFIX}"

    @property
    def stamps_dir(self) -> Path:
        return self.state_dir / "stamps"

    @property
    def locks_dir(self) -> Path:
        return self.state_dir / "locks"

    def stamp_path(self, spec: ModelSpec | str) -> Path:
        return self.stamps_dir / f"{_filename(spec)}{STAMP_SUFFIX}"

    def lock_path(self, spec: ModelSpec | str) -> Path:
        return self.locks_dir / f"{_filename(spec)}{LOCK_SUFFIX}"

    def owner_path(self, spec: ModelSpec | str) -> Path:
        """The note in which a lock's holder says who it is."""
        return self.locks_dir / f"{_filename(spec)}{OWNER_SUFFIX}"

    def check_readable(self) -> None:
        """Raise :class:`CacheError` when the cache path exists but cannot be used as a directory."""
        try:
            st = self.root.stat()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _cache_error(self.root, "cannot read the cache directory", exc) from exc
        if not _is_dir(st):
            raise CacheError(
                f"{self.root}: the cache path is not a directory; remove it or choose another "
                f"with --cache-dir or {CACHE_ENV}"
            )

    def ensure(self) -> None:
        """Create the cache and its state folder (for commands that write)."""
        self.check_readable()
        self.check_state_dirs()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _cache_error(self.root, "cannot create the cache directory", exc) from exc

    def check_state_dirs(self) -> None:
        """Refuse a state folder that is a symlink or not a directory: whisperctl writes its stamps and locks
        there, and writes nothing outside its cache."""
        for path in (self.state_dir, self.stamps_dir, self.locks_dir):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _cache_error(path, "cannot read whisperctl's state folder", exc) from exc
            if stat.S_ISLNK(st.st_mode) or not _is_dir(st):
                what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
                raise CacheError(
                    f"{path}: {what}; whisperctl keeps its state in a plain folder inside the cache and "
                    "never writes through links: remove it (it is recreated)"
                )

    def read_stamp(self, spec: ModelSpec) -> Stamp | None:
        """The stamp of a model's file, or None when there is none or it is unreadable (then re-hash)."""
        return read_stamp(self.stamp_path(spec))

    def write_stamp(self, spec: ModelSpec, st: os.stat_result, sha256: str) -> Stamp:
        """Record the digest measured for the file whose stat is ``st`` (atomically)."""
        self.check_state_dirs()
        return write_stamp(self.stamp_path(spec), st, sha256, name=spec.name, filename=spec.filename)

    def forget_stamp(self, spec: ModelSpec) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.stamp_path(spec).unlink()

    def entry(self, spec: ModelSpec) -> CacheEntry:
        """The status of one model: missing, partial, present, verified or corrupt."""
        self.check_readable()
        path = self.path_for(spec)
        part = self.partial_path(spec)
        try:
            st = path.stat()
        except FileNotFoundError:
            has_part = part.is_file()
            status = Status.PARTIAL if has_part else Status.MISSING
            return CacheEntry(spec, path, status, None, part if has_part else None, None)
        except OSError as exc:
            raise _cache_error(path, "cannot read the cached file", exc) from exc
        if not _is_file(st):
            raise CacheError(
                f"{path}: not a regular file; remove it so that the model can be downloaded there"
            )
        stamp = self.read_stamp(spec)
        status = Status.PRESENT
        if stamp is not None and stamp.matches(st):
            status = Status.VERIFIED if stamp.sha256 == spec.sha256 else Status.CORRUPT
        return CacheEntry(spec, path, status, st.st_size, part if part.is_file() else None, stamp)


def _is_dir(st: os.stat_result) -> bool:
    return stat.S_ISDIR(st.st_mode)


def _is_file(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def _cache_error(path: Path, what: str, exc: OSError) -> CacheError:
    reason = exc.strerror or type(exc).__name__
    return CacheError(f"{path}: {what} ({reason}); check its permissions or choose another with --cache-dir")

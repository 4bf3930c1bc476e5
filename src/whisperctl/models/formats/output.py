"""The big output file of a writer: hashed while it is written, its writeback started early.

``with OutputFile(path) as f: f.write(buffer)`` creates ``path`` (exclusively, as the writers always did)
and writes each buffer at once, in the calling thread. Each buffer is also handed, in order, to a thread
that feeds it to SHA-256: hashlib releases the GIL for large updates, so the digest is computed on the
other core while the writer converts its next tensor, and no second pass over the file is needed. The
thread keeps a reference to each buffer until it is hashed; a writer waits in :meth:`OutputFile.write` while
more than :data:`IN_FLIGHT` bytes are unhashed, so memory stays small whatever the file's size. A buffer
handed to ``write`` must not be changed afterwards (the writers hand over each tensor's fresh bytes;
writes under 1 MiB are copied, so reused header scratch is safe).

Every :data:`WRITEBACK_STEP` bytes, the thread asks Linux to start writing the range just written to disk
(``sync_file_range(SYNC_FILE_RANGE_WRITE)``; nothing elsewhere), so that the final ``fsync`` waits for
little instead of for the whole file.

A clean exit of the ``with`` block waits for the digest, fsyncs, closes, and records a :class:`SealedFile`
(path, size, SHA-256, and the identity of the file then) as :attr:`OutputFile.sealed` and in the
:func:`recording` open in this context, where the conversion finds it without changing the writers'
signature. An exception in the block stops the thread (none is left running), closes the file and records
nothing; removing the file is the caller's business. The file cannot seek: a writer that patches its file
after writing (``openai``) uses a plain ``open``, and its file is hashed afterwards as any other.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["IN_FLIGHT", "WRITEBACK_STEP", "OutputFile", "SealedFile", "recording"]

IN_FLIGHT = 64 * 1024 * 1024  # unhashed bytes a writer may run ahead of the hash
WRITEBACK_STEP = 64 * 1024 * 1024  # writeback is started for each such range as it is completed
_SMALL = 1024 * 1024  # writes below this are copied, and hashed together
_SLICE = 8 * 1024 * 1024  # one hash update at most: an abort waits no longer than that
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>


@dataclass(frozen=True)
class SealedFile:
    """A file written through :class:`OutputFile`: its digest holds while its identity is unchanged."""

    path: Path  # absolute
    size_bytes: int
    sha256: str
    inode: int
    mtime_ns: int

    def holds_for(self, st: os.stat_result) -> bool:
        """Whether ``st`` (the file's ``stat`` now) is still the file that was hashed."""
        return (st.st_ino, st.st_size, st.st_mtime_ns) == (self.inode, self.size_bytes, self.mtime_ns)


_recorder: ContextVar[dict[Path, SealedFile] | None] = ContextVar("whisperctl_output_files", default=None)


@contextlib.contextmanager
def recording() -> Iterator[dict[Path, SealedFile]]:
    """Collect, by absolute path, the :class:`SealedFile` of every :class:`OutputFile` closed cleanly in
    the block (in this thread or context)."""
    sealed: dict[Path, SealedFile] = {}
    token = _recorder.set(sealed)
    try:
        yield sealed
    finally:
        _recorder.reset(token)


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Any = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - a libc without it
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


_sync_file_range = _load_sync_file_range()


class _Hasher:
    """A thread that hashes the buffers it is given, in order, and starts the writeback of the ranges it is
    told are written."""

    def __init__(self, fd: int, writeback: bool) -> None:
        self._fd = fd
        self._writeback = writeback and _sync_file_range is not None
        self._hash = hashlib.sha256()
        self._queue: deque[memoryview | tuple[int, int]] = deque()
        self._pending = 0  # bytes given and not yet hashed
        self._done = False
        self._stopped = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="whisperctl-output-hash", daemon=True)
        self._thread.start()

    def hash(self, view: memoryview) -> None:
        with self._cond:
            self._raise_error()
            self._queue.append(view)
            self._pending += view.nbytes
            self._cond.notify_all()

    def start_writeback(self, offset: int, length: int) -> None:
        """Writeback of this range, once the thread reaches it (it is written by then)."""
        if self._writeback:
            with self._cond:
                self._queue.append((offset, length))
                self._cond.notify_all()

    def wait_below(self, limit: int) -> None:
        with self._cond:
            while self._pending > limit and self._error is None:
                self._cond.wait()
            self._raise_error()

    def finish(self) -> str:
        """The digest of everything given, once hashed."""
        with self._cond:
            self._done = True
            self._cond.notify_all()
        self._thread.join()
        self._raise_error()
        return self._hash.hexdigest()

    def stop(self) -> None:
        """Drop what is queued and end the thread (at most one update away); idempotent."""
        with self._cond:
            self._stopped = True
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._done and not self._stopped:
                        self._cond.wait()
                    if self._stopped or not self._queue:
                        return
                    item = self._queue.popleft()
                if isinstance(item, tuple):
                    self._start_writeback(*item)
                else:
                    self._hash_view(item)
                del item  # not kept while waiting for the next one
        except BaseException as exc:  # said by the writer's next call
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def _hash_view(self, view: memoryview) -> None:
        for start in range(0, view.nbytes, _SLICE):
            if self._stopped:
                return
            part = view[start : start + _SLICE]
            self._hash.update(part)
            with self._cond:
                self._pending -= part.nbytes
                self._cond.notify_all()

    def _start_writeback(self, offset: int, length: int) -> None:
        assert _sync_file_range is not None
        if _sync_file_range(self._fd, offset, length, _SYNC_FILE_RANGE_WRITE) != 0:
            self._writeback = False  # a file system that does not take it: the final fsync does it all


class OutputFile(io.FileIO):
    """A new binary file (exclusive create) hashed and written back as it is written; see the module
    docstring. Write-only, sequential: :meth:`write` (and ``writelines``), :meth:`tell`; no seeking.
    ``in_flight``: the unhashed bytes a writer may run ahead; ``writeback_step``: how often writeback is
    started (0: never, the final fsync writes it all)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        in_flight: int = IN_FLIGHT,
        writeback_step: int = WRITEBACK_STEP,
    ) -> None:
        super().__init__(path, "xb")
        self.path = Path(os.path.abspath(path))
        self.sealed: SealedFile | None = None  # set by a clean close
        self._in_flight = in_flight
        self._step = writeback_step
        self._size = 0
        self._written_back = 0
        self._small = bytearray()
        try:
            self._hasher: _Hasher | None = _Hasher(self.fileno(), writeback_step > 0)
        except BaseException:
            super().close()
            raise

    def write(self, data: ReadableBuffer, /) -> int:
        hasher = self._live()
        view = memoryview(data).cast("B")  # bytes, whatever the buffer's item type
        n = view.nbytes
        if n < _SMALL:
            self._small += view
            if len(self._small) >= _SMALL:
                self._hash_small(hasher)
        else:
            self._hash_small(hasher)
            hasher.hash(view)  # hashed on the other core while it is written here
        done = 0
        while done < n:
            written = super().write(view[done:])
            if not written:  # pragma: no cover - a blocking file does not return 0 or None
                raise OSError(f"{self.path}: write made no progress")
            done += written
        self._size += n
        if self._step > 0 and self._size - self._written_back >= self._step:
            hasher.start_writeback(self._written_back, self._size - self._written_back)
            self._written_back = self._size
        if n >= _SMALL:
            hasher.wait_below(self._in_flight)
        return n

    def tell(self) -> int:
        return self._size

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, whence: int = 0, /) -> int:
        raise io.UnsupportedOperation("an OutputFile is written in order; it cannot seek")

    def truncate(self, size: int | None = None, /) -> int:
        raise io.UnsupportedOperation("an OutputFile is written in order; it cannot be truncated")

    def finish(self) -> SealedFile:
        """Wait for the digest, fsync, close, and record the file (in :attr:`sealed` and the open
        :func:`recording`). On any failure the file is closed with nothing recorded."""
        hasher = self._live()
        try:
            self._hash_small(hasher)
            digest = hasher.finish()
            os.fsync(self.fileno())
            st = os.fstat(self.fileno())
        finally:
            self.close()
        sealed = SealedFile(self.path, self._size, digest, st.st_ino, st.st_mtime_ns)
        self.sealed = sealed
        recorder = _recorder.get()
        if recorder is not None:
            recorder[self.path] = sealed
        return sealed

    def close(self) -> None:
        """Close without recording (after :meth:`finish`, or to abandon the file): the thread is stopped."""
        hasher, self._hasher = getattr(self, "_hasher", None), None
        if hasher is not None:
            hasher.stop()
        super().close()

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None and not self.closed:
            self.finish()
        else:
            self.close()

    def _live(self) -> _Hasher:
        if self._hasher is None or self.closed:
            raise ValueError(f"{self.path}: the output file is closed")
        return self._hasher

    def _hash_small(self, hasher: _Hasher) -> None:
        if self._small:
            hasher.hash(memoryview(bytes(self._small)))
            self._small.clear()

"""The big output file of a writer: hashed while it is written, written to disk as it goes.

``with OutputFile(path) as f: f.write(buffer)`` creates ``path`` (exclusively, as the writers always did).
A file of :data:`DIRECT_MIN` bytes or more (the writer gives its size ahead) is written around the page
cache where the file system allows it (Linux, most local file systems):
:class:`whisperctl.direct.DirectWriter` copies each buffer into aligned 64 MiB buffers, hashes each once
full on one thread and writes it with ``O_DIRECT`` on another while the writer fills the next, so the disk
gets large requests from the first byte on and the final ``fsync`` has only the disk's own cache left (3 GB
made durable in 6.6-7.2 s against 8.4-9.2 s buffered, on this project's disk).

Otherwise (a smaller file, ``direct=False``, a file system that refuses ``O_DIRECT``), each buffer is
written at once, in the calling thread, and a second thread follows the writes
(:class:`whisperctl.following.FollowingHasher`, the downloads' too): it reads back what was just written
(from the page cache, with ``pread``) and feeds it to SHA-256. hashlib releases the
GIL for large updates, so the digest is computed on the other core while the writer converts its next
tensor, and no second pass over the file is needed once it is closed. Reading back, rather than hashing
the writer's buffers, keeps no reference to them: a writer may reuse a buffer, or drop the pages of a
mapped input it has just passed through (``MADV_DONTNEED``) without the hash faulting them back in. A writer
waits in :meth:`OutputFile.write` while more than :data:`IN_FLIGHT` bytes are unhashed, so the pages to be
read back are still in the page cache.

Every :data:`WRITEBACK_STEP` bytes, the thread asks Linux to start writing the range just hashed to disk
(:class:`whisperctl.writeback.Writeback`: ``sync_file_range``; nothing elsewhere), so that the final
``fsync`` waits for little instead of for the whole file (below the kernel's dirty threshold, a few GB,
nothing would be written before it).

A clean exit of the ``with`` block waits for the digest, fsyncs, closes, and records a :class:`SealedFile`
(path, size, SHA-256, and the identity of the file then) as :attr:`OutputFile.sealed` and in the
:func:`recording` open in this context, where the conversion finds it without changing the writers'
signature. An exception in the block stops the thread (none is left running), closes the file and records
nothing; removing the file is the caller's business. The file cannot seek: a writer that patches its file
after writing (``openai``) uses a plain ``open``, and its file is hashed afterwards as any other.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from whisperctl.direct import DirectWriter, enable
from whisperctl.following import CHUNK, FollowingHasher

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["DIRECT_MIN", "IN_FLIGHT", "WRITEBACK_STEP", "OutputFile", "SealedFile", "recording"]

T = TypeVar("T")

IN_FLIGHT = 64 * 1024 * 1024  # unhashed bytes a writer may run ahead of the hash
# Files this large are written around the page cache. Smaller ones gain nothing from it: below the kernel's
# dirty thresholds (gigabytes) their buffered writes are memory copies and the fsync then waits for the disk
# either way, while the aligned buffers cost their first touch (80 MiB: 0.43 s direct, 0.24 s buffered;
# 1 GiB: even; 3 GB: 6.6-7.2 s against 8.4-9.2 s, on this project's disk).
DIRECT_MIN = 1024 * 1024 * 1024
WRITEBACK_STEP = 64 * 1024 * 1024  # writeback is started for each such range as it is hashed


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


class OutputFile(io.FileIO):
    """A new binary file (exclusive create) hashed and written to disk as it is written; see the module
    docstring. Sequential: :meth:`write` (and ``writelines``), :meth:`tell`; no seeking.
    ``size_hint``: the bytes the writer expects to write; ``direct``: write around the page cache where the
    file system allows it (True), never (False), or for a file of :data:`DIRECT_MIN` bytes or more (None).
    For buffered writes, ``in_flight``: the unhashed bytes a writer may run ahead; ``writeback_step``: how
    often writeback is started (0: never, the final fsync writes it all)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        size_hint: int | None = None,
        direct: bool | None = None,
        in_flight: int = IN_FLIGHT,
        writeback_step: int = WRITEBACK_STEP,
    ) -> None:
        super().__init__(path, "xb+")  # read too: a buffered file's hash reads back what was written
        self.path = Path(os.path.abspath(path))
        self.sealed: SealedFile | None = None  # set by a clean close
        self._size = 0
        self._hasher: FollowingHasher | None = None
        self._direct: DirectWriter | None = None
        self.direct = False  # written around the page cache (O_DIRECT)
        try:
            if direct is None:
                direct = size_hint is not None and size_hint >= DIRECT_MIN
            if direct and enable(self.fileno()):
                self._direct = DirectWriter(self.fileno())
                self.direct = True
            else:
                self._hasher = FollowingHasher(
                    self.fileno(), in_flight=in_flight, writeback_step=writeback_step
                )
        except BaseException:
            super().close()
            raise

    def write(self, data: ReadableBuffer, /) -> int:
        view = memoryview(data).cast("B")  # bytes, whatever the buffer's item type
        n = view.nbytes
        if self._direct is not None and not self.closed:
            self._direct.write(view)
            self._size += n
            return n
        hasher = self._live()
        for start in range(0, n, CHUNK):  # a large buffer in steps, so that the hash follows closely
            done, end = start, min(n, start + CHUNK)
            while done < end:
                written = super().write(view[done:end])
                if not written:  # pragma: no cover - a blocking file does not return 0 or None
                    raise OSError(f"{self.path}: write made no progress")
                done += written
            self._size += end - start
            hasher.advance(self._size)
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
        try:
            if self._direct is not None and not self.closed:
                digest = self._direct.finish()
            else:
                digest = self._live().finish()
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

    def finish_while(self, work: Callable[[], T]) -> T:
        """:meth:`finish`, with ``work`` run on another thread meanwhile, and its result. Finishing is
        mostly a wait on the disk, which holds no GIL: a writer builds its small files (the tokenizer's BPE
        merges: about a second of pure Python) while its big one is made durable. Should the finish fail,
        its error is raised once ``work`` has ended."""
        with ThreadPoolExecutor(1, thread_name_prefix="whisperctl-meanwhile") as pool:
            done = pool.submit(work)
            self.finish()
        return done.result()

    def close(self) -> None:
        """Close without recording (after :meth:`finish`, or to abandon the file): the thread is stopped."""
        hasher, self._hasher = getattr(self, "_hasher", None), None
        if hasher is not None:
            hasher.abort()
        direct, self._direct = getattr(self, "_direct", None), None
        if direct is not None:
            direct.abort()
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

    def _live(self) -> FollowingHasher:
        if self._hasher is None or self.closed:
            raise ValueError(f"{self.path}: the output file is closed")
        return self._hasher

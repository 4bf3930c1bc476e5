"""The writers' output file: hashed in a thread as it is written, recorded on a clean close, nothing left
running after a failure."""

from __future__ import annotations

import errno
import hashlib
import io
import mmap
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from whisperctl.models.formats.output import OutputFile, SealedFile, recording


def _hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("whisperctl-hasher", "whisperctl-writer"))]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("direct", "in_flight", "step"),
    [(True, 0, 0), (False, 64 << 20, 64 << 20), (False, 1 << 20, 1 << 20), (False, 0, 0)],
)
def test_the_digest_is_the_files_whatever_the_writes(
    tmp_path: Path, direct: bool, in_flight: int, step: int
) -> None:
    rng = np.random.default_rng(7)
    big = rng.standard_normal((3, 700_000)).astype(np.float32)  # 8.4 MB, written as rows and whole
    half = rng.standard_normal(1_500_000).astype(np.float16)
    mapped_file = tmp_path / "mapped.bin"
    mapped_file.write_bytes(rng.bytes(3_000_001))
    path = tmp_path / "out.bin"
    with (
        mapped_file.open("rb") as src,
        mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as mm,
        recording() as sealed,
        OutputFile(path, direct=direct, in_flight=in_flight, writeback_step=step) as f,
    ):
        for i in range(5000):  # many small writes, as the ggml header and tensor headers are
            f.write(i.to_bytes(4, "little") * (i % 7))
        f.write(big.data)
        for row in big:
            f.write(memoryview(row))
        f.write(memoryview(half))
        view = memoryview(mm)
        f.write(view[1:])  # a mapped input passed through, at an odd offset
        f.write(view[:1])
        f.writelines([b"tail", bytearray(b"-end")])
        assert f.direct == direct
        # Buffered, every byte is in the file at once; direct, up to two buffers wait for their write.
        assert f.tell() == path.stat().st_size if not direct else f.tell() >= path.stat().st_size
        del view
    assert f.closed and f.sealed is not None
    assert f.sealed.sha256 == _sha256(path) and f.sealed.size_bytes == path.stat().st_size
    assert sealed == {path.absolute(): f.sealed}
    assert f.sealed.holds_for(path.stat())
    assert _hash_threads() == []


@pytest.mark.parametrize("direct", [True, False])
def test_a_buffer_reused_at_once_is_hashed_as_written(tmp_path: Path, direct: bool) -> None:
    """A scratch buffer may change after write: the buffered hash reads back the file, the direct writer
    copies."""
    scratch = bytearray(5 << 20)
    with OutputFile(tmp_path / "r.bin", direct=direct, in_flight=64 << 20) as f:
        for i in range(6):
            scratch[:] = bytes([i]) * len(scratch)
            f.write(scratch)
    assert f.sealed is not None and f.sealed.sha256 == _sha256(tmp_path / "r.bin")


def test_nothing_is_recorded_outside_a_recording_or_after_a_failure(tmp_path: Path) -> None:
    with OutputFile(tmp_path / "a.bin") as f:
        f.write(b"x" * (2 << 20))
    assert f.sealed is not None and f.sealed.sha256 == _sha256(tmp_path / "a.bin")
    g = OutputFile(tmp_path / "b.bin", in_flight=1 << 20)

    def fail_while_writing() -> None:
        with g:
            g.write(np.ones(4 << 20, np.uint8).data)
            g.write(b"header")
            _ = 1 / 0

    with recording() as sealed, pytest.raises(ZeroDivisionError):
        fail_while_writing()
    assert sealed == {} and g.sealed is None and g.closed
    assert _hash_threads() == []


@pytest.mark.parametrize("direct", [True, False])
def test_an_exception_in_the_middle_leaves_no_thread(tmp_path: Path, direct: bool) -> None:
    big = np.zeros(64 << 20, np.uint8)  # more than in flight or a buffer: the writer waits on the thread
    f = OutputFile(tmp_path / "c.bin", direct=direct, in_flight=1 << 20)

    def interrupted() -> None:
        with f:
            f.write(big.data)
            f.write(big.data)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert f.closed and f.sealed is None
    assert _hash_threads() == []
    with pytest.raises(ValueError, match="closed"):
        f.write(b"late")


def test_it_creates_exclusively_and_cannot_seek(tmp_path: Path) -> None:
    path = tmp_path / "d.bin"
    path.write_bytes(b"already here")
    with pytest.raises(FileExistsError):
        OutputFile(path)
    assert _hash_threads() == []
    path.unlink()
    with OutputFile(path) as f:
        f.write(b"abc")
        assert not f.seekable()
        with pytest.raises(io.UnsupportedOperation):
            f.seek(0)
        with pytest.raises(io.UnsupportedOperation):
            f.truncate(1)
    assert path.read_bytes() == b"abc"


def test_a_file_changed_after_it_was_sealed_no_longer_matches(tmp_path: Path) -> None:
    path = tmp_path / "e.bin"
    with OutputFile(path) as f:
        f.write(b"0123456789")
    sealed = f.sealed
    assert isinstance(sealed, SealedFile) and sealed.holds_for(path.stat())
    with path.open("r+b") as patch:  # as a writer that patches its file afterwards would
        patch.write(b"9")
    assert not sealed.holds_for(path.stat())


@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """Files this process writes may not grow past 3 MiB (a write past it fails with EFBIG, as a full
    disk fails with ENOSPC); restored afterwards."""
    resource = pytest.importorskip("resource")
    limit = 3 << 20
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.mark.parametrize("direct", [True, False])
def test_a_write_error_is_the_oserror_and_stops_the_thread(
    tmp_path: Path, file_size_limit: int, direct: bool
) -> None:
    f = OutputFile(tmp_path / "f.bin", direct=direct)

    def write_past_the_limit() -> None:
        with f:
            for _ in range(4):
                f.write(np.ones(1 << 20, np.uint8).data)

    with recording() as sealed, pytest.raises(OSError, match="File too large") as caught:
        write_past_the_limit()
    assert caught.value.errno == errno.EFBIG
    assert f.closed and sealed == {} and (tmp_path / "f.bin").stat().st_size == file_size_limit
    assert _hash_threads() == []


@pytest.mark.parametrize("direct", [True, False])
def test_work_runs_while_the_file_is_finished(tmp_path: Path, direct: bool) -> None:
    """finish_while: the file sealed, the work's result returned; the work's error raised once the file is
    finished, no thread left either way."""
    seen: list[str] = []

    def work() -> str:
        seen.append(threading.current_thread().name)
        return "built"

    with recording() as sealed, OutputFile(tmp_path / "a.bin", direct=direct) as f:
        f.write(b"x" * (3 << 20))
        assert f.finish_while(work) == "built"
    assert f.sealed is not None and sealed == {f.path: f.sealed}
    assert f.sealed.sha256 == _sha256(tmp_path / "a.bin")
    assert seen and seen[0] != threading.main_thread().name

    def failing() -> str:
        raise ValueError("the tokenizer failed")

    g = OutputFile(tmp_path / "b.bin", direct=direct)
    g.write(b"y" * 100)
    with pytest.raises(ValueError, match="tokenizer failed"):
        g.finish_while(failing)
    assert g.sealed is not None and g.closed
    assert [t for t in threading.enumerate() if t.name.startswith("whisperctl-meanwhile")] == []
    assert _hash_threads() == []

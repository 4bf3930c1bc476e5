"""Writing around the page cache: the bytes and the digest are those given, the padding of the last write
is cut, the page cache is left alone, and a file system that wants more than the alignment gets the rest
buffered."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import cached_bytes
from whisperctl import direct
from whisperctl.direct import ALIGN, DirectWriter, enable
from whisperctl.models.formats.output import DIRECT_MIN, OutputFile


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("whisperctl-writer")]


def _open(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    if not enable(fd):
        os.close(fd)
        pytest.skip(f"{path.parent}: its file system takes no O_DIRECT")
    return fd


def _direct_on(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.mark.parametrize("size", [0, 1, ALIGN - 1, ALIGN, 3 * 8192, 3 * 8192 + 5, 100_003])
def test_every_byte_in_order_and_the_padding_cut(tmp_path: Path, size: int) -> None:
    data = np.random.default_rng(size).bytes(size)
    path = tmp_path / "out.bin"
    fd = _open(path)
    try:
        writer = DirectWriter(fd, buffer_size=8192)  # many buffers' worth: every hand-over is crossed
        pieces = [1, 4095, 7, 8192, 16_000, 3]
        at, i = 0, 0
        while at < size:
            n = pieces[i % len(pieces)]
            writer.write(memoryview(data[at : at + n]))
            at, i = at + n, i + 1
        digest = writer.finish()
        assert writer.size == size
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert _writer_threads() == []


def test_the_page_cache_is_left_alone(tmp_path: Path) -> None:
    """32 MiB written directly leaves (next to) none of it cached; buffered, all of it is."""
    data = np.random.default_rng(1).bytes(32 << 20)
    for direct_, path in ((True, tmp_path / "direct.bin"), (False, tmp_path / "buffered.bin")):
        with OutputFile(path, direct=direct_) as f:
            f.write(data)
        if direct_ and not f.direct:
            pytest.skip(f"{tmp_path}: its file system takes no O_DIRECT")
        assert f.sealed is not None and f.sealed.sha256 == hashlib.sha256(data).hexdigest()
    assert cached_bytes(tmp_path / "direct.bin") <= ALIGN  # at most the padded tail, written through
    assert cached_bytes(tmp_path / "buffered.bin") == len(data)


def test_a_file_system_wanting_more_alignment_gets_the_rest_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a file system whose blocks are larger than ALIGN answers an O_DIRECT write: EINVAL (simulated
    on the second write); O_DIRECT is turned off and the same bytes go on buffered."""
    real_pwrite = os.pwrite
    calls: list[bool] = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        calls.append(_direct_on(fd))
        if len(calls) == 2 and _direct_on(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct.os, "pwrite", pwrite)
    data = np.random.default_rng(2).bytes(5 * 8192 + 77)
    path = tmp_path / "out.bin"
    fd = _open(path)
    try:
        writer = DirectWriter(fd, buffer_size=8192)
        writer.write(memoryview(data))
        digest = writer.finish()
        assert not _direct_on(fd)
    finally:
        os.close(fd)
    assert calls[:3] == [True, True, False] and not any(calls[2:])
    assert path.read_bytes() == data and digest == hashlib.sha256(data).hexdigest()


def test_a_write_error_reaches_the_caller_and_no_thread_is_left(tmp_path: Path) -> None:
    path = tmp_path / "ro.bin"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # every pwrite fails: EBADF
    try:
        if not enable(fd):
            pytest.skip(f"{tmp_path}: its file system takes no O_DIRECT")
        writer = DirectWriter(fd, buffer_size=8192)

        def write_then_finish() -> None:
            for _ in range(4):  # the fourth buffer waits for one the threads gave back after failing
                writer.write(memoryview(bytes(8192)))
            writer.finish()

        with pytest.raises(OSError, match="Bad file descriptor") as caught:
            write_then_finish()
        assert caught.value.errno == errno.EBADF
        with pytest.raises(OSError, match="Bad file descriptor"):
            writer.write(memoryview(b"late"))
        writer.abort()
        writer.abort()
    finally:
        os.close(fd)
    assert _writer_threads() == []


def test_an_output_file_where_o_direct_is_refused_is_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("whisperctl.models.formats.output.enable", lambda fd: False)
    with OutputFile(tmp_path / "b.bin") as f:
        assert not f.direct
        f.write(b"abc" * 1000)
    assert (tmp_path / "b.bin").read_bytes() == b"abc" * 1000


def test_buffer_sizes_must_keep_the_alignment() -> None:
    with pytest.raises(ValueError, match="multiple"):
        DirectWriter(0, buffer_size=ALIGN + 1)


def test_only_a_large_file_is_written_around_the_page_cache(tmp_path: Path) -> None:
    """Below DIRECT_MIN the page cache costs nothing the disk does not; the aligned buffers would."""
    expected = {None: False, 80 << 20: False, DIRECT_MIN - 1: False, DIRECT_MIN: True}
    for i, (hint, direct_) in enumerate(expected.items()):
        with OutputFile(tmp_path / f"{i}.bin", size_hint=hint) as f:
            f.write(b"data")
            if direct_ and not f.direct:
                pytest.skip(f"{tmp_path}: its file system takes no O_DIRECT")
            assert f.direct == direct_, hint
        assert (tmp_path / f"{i}.bin").read_bytes() == b"data"

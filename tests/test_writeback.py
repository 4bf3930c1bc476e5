"""Writeback started as a file grows: ranges in order, at least a step at a time, off where refused."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from whisperctl import writeback
from whisperctl.store.hashing import FollowingHasher, sha256_file
from whisperctl.writeback import Writeback

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")


@linux
def test_ranges_start_a_step_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with open(path, "wb") as f:
        f.write(os.urandom(3 << 20))
        f.flush()
        wb = Writeback(f.fileno(), step=1 << 20)
        assert wb.enabled
        wb.advance(512 << 10)
        assert wb.done == 0  # less than a step
        wb.advance(1 << 20)
        assert wb.done == 1 << 20
        wb.advance(2 << 20)
        assert wb.done == 2 << 20
        wb.advance(3 << 20)
        assert wb.done == 3 << 20 and wb.enabled


@linux
def test_a_descriptor_that_takes_none_turns_it_off() -> None:
    read_end, write_end = os.pipe()
    try:
        wb = Writeback(write_end, step=1)
        wb.advance(10)
        assert not wb.enabled and wb.done == 0
        wb.advance(20)  # nothing more is tried
        assert wb.done == 0
    finally:
        os.close(read_end)
        os.close(write_end)


def test_without_the_call_nothing_is_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writeback, "_sync_file_range", None)
    with open(tmp_path / "f", "wb") as f:
        wb = Writeback(f.fileno(), step=1)
        assert not wb.enabled
        wb.advance(100)
        assert wb.done == 0


def test_the_following_hasher_still_hashes_every_byte(tmp_path: Path) -> None:
    data = os.urandom(9 << 20)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        hasher = FollowingHasher(fd)
        for at in range(0, len(data), 1 << 20):  # written in order, the frontier moving with it
            os.pwrite(fd, data[at : at + (1 << 20)], at)
            hasher.advance(at + (1 << 20))
        assert hasher.finish(len(data)) == sha256_file(path)
    finally:
        os.close(fd)

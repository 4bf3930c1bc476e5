"""The store's file rules, each written once: temporary names, no-follow opens, stamps, locks, placement."""

from __future__ import annotations

import asyncio
import errno
import os
import re
import time
from pathlib import Path

import pytest

from whisperctl.errors import IntegrityError
from whisperctl.models.registry import ModelSpec
from whisperctl.store import layout
from whisperctl.store.cache import Cache
from whisperctl.store.files import atomic_write_text, copy_to_new, open_nofollow
from whisperctl.store.locks import lock_holder, lock_unless_busy, model_lock, probe
from whisperctl.store.place import place_verified, remove_stale_temporaries, stale_temporaries
from whisperctl.store.prune import STALE_TMP_SECONDS, scan
from whisperctl.store.stamps import fingerprint, read_stamp

from .helpers import sha256_hex
from .test_fleet import LockHolder

SRC = Path(__file__).resolve().parent.parent / "src" / "whisperctl"


def _spec(data: bytes, name: str = "mine") -> ModelSpec:
    return ModelSpec(
        name=name,
        url=f"http://127.0.0.1:1/{name}.pt",
        sha256=sha256_hex(data),
        filename=f"{name}.pt",
        size_bytes=len(data),
        source="registry",
    )


def _sources() -> dict[Path, str]:
    return {path: path.read_text("utf-8") for path in SRC.rglob("*.py")}


# -- one temporary-name rule ---------------------------------------------------------------------------------
def test_temporary_names_are_built_and_parsed_by_one_rule(tmp_path: Path) -> None:
    for target in ("tiny.pt", "tiny.pt.part.json", "large-v3.pt", "tiny.pt.json", "SHA256SUMS"):
        made = {layout.temporary_path(tmp_path / target).name for _ in range(20)}
        assert len(made) == 20  # a fresh name per writer
        for name in made:
            assert re.fullmatch(rf"\.{re.escape(target)}\.[0-9a-f]{{12}}\.tmp", name)
            assert layout.temporary_target(name) == target
        assert layout.temporary_path(tmp_path / "sub" / target).parent == tmp_path / "sub"
    others = ("tiny.pt", ".tiny.pt.tmp", ".tiny.pt.0123456789AB.tmp", ".tiny.pt.0123456789a.tmp", "x.tmp")
    for other in others:
        assert layout.temporary_target(other) is None, other


def test_no_module_but_layout_spells_a_temporary_name() -> None:
    # The pattern was built in three places and parsed by two regexes; now layout.py alone knows it.
    for path, text in _sources().items():
        if path.name == "layout.py":
            continue
        assert "token_hex" not in text, path
        assert not re.search(r"""\.tmp["'$]""", text), path
        assert "[0-9a-f]{12}" not in text, path


def test_no_module_but_files_composes_a_no_follow_open() -> None:
    for path, text in _sources().items():
        if path.name == "files.py" and path.parent.name == "store":
            assert text.count('"O_NOFOLLOW"') == 1
        else:
            assert "O_NOFOLLOW" not in text, path


def test_every_writer_leaves_names_that_the_cleaners_recognise(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cache.ensure()
    spec = _spec(b"weights")
    # What a kill -9 inside each writer leaves: the final placement's private copy, a sidecar's and a stamp's
    # atomic writes.
    left = [
        layout.temporary_path(cache.path_for(spec)),
        layout.temporary_path(cache.partial_state_path(spec)),
        layout.temporary_path(cache.stamp_path(spec)),
    ]
    unrelated = [cache.root / ".other.pt.0123456789ab.tmp", cache.root / ".mine.pt.part.0123456789ab.tmp"]
    for path in [*left, *unrelated]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert sorted(stale_temporaries(cache, spec)) == sorted(left[:2])  # the download's own, under its lock
    old = time.time() + 2 * STALE_TMP_SECONDS
    plan = scan(cache, [spec.filename], now=old)
    assert sorted(i.path for i in plan.items if i.kind == "temporary") == sorted(left)
    assert set(unrelated) <= set(plan.unknown)  # not attributable to a known model's file: never removed
    remove_stale_temporaries(cache, spec)
    assert [p.exists() for p in left] == [False, False, True]


def test_atomic_write_leaves_no_temporary_when_it_fails(tmp_path: Path) -> None:
    target = tmp_path / "stamp.json"
    target.mkdir()  # os.replace of a file onto a directory fails
    with pytest.raises(IsADirectoryError):
        atomic_write_text(target, "{}")
    assert os.listdir(tmp_path) == ["stamp.json"]
    atomic_write_text(tmp_path / "other.json", "{}")
    assert sorted(os.listdir(tmp_path)) == ["other.json", "stamp.json"]


# -- no-follow opens -----------------------------------------------------------------------------------------
def test_open_nofollow_never_writes_through_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "note"
    link.symlink_to(victim)
    with pytest.raises(OSError, match="Too many levels of symbolic links") as caught:
        open_nofollow(link, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    assert caught.value.errno == errno.ELOOP
    with pytest.raises(FileExistsError):
        copy_to_new(os.open(victim, os.O_RDONLY), link)
    assert victim.read_text() == "precious"


def test_copy_to_new_hashes_what_it_writes(tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 17)
    (tmp_path / "src").write_bytes(data)
    fd = os.open(tmp_path / "src", os.O_RDONLY)
    try:
        digest, st = copy_to_new(fd, tmp_path / "dst")
    finally:
        os.close(fd)
    assert digest == sha256_hex(data) and st.st_size == len(data)
    assert (tmp_path / "dst").read_bytes() == data


# -- stamps --------------------------------------------------------------------------------------------------
def test_a_stamp_matches_its_file_only_as_it_was_hashed(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    data = b"model bytes"
    spec = _spec(data)
    path = cache.path_for(spec)
    path.write_bytes(data)
    st = path.stat()
    stamp = cache.write_stamp(spec, st, spec.sha256)
    assert read_stamp(cache.stamp_path(spec)) == stamp
    assert (stamp.size, stamp.mtime_ns, stamp.inode) == fingerprint(st)
    assert stamp.matches(st) and stamp.matches(st, device=st.st_dev)
    assert not stamp.matches(st, device=st.st_dev + 1)  # an inode means nothing on another device
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert not stamp.matches(path.stat())
    cache.stamp_path(spec).write_text("{not json")
    assert read_stamp(cache.stamp_path(spec)) is None


# -- locks ---------------------------------------------------------------------------------------------------
def test_one_lock_for_rm_prune_and_download(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.ensure()
    assert probe(cache, "m.pt") is None and not cache.lock_path("m.pt").exists()  # probing creates nothing
    with LockHolder(tmp_path, "m.pt") as holder:
        who = f"process {holder.proc.pid} on "
        assert lock_holder(cache, "m.pt").startswith(who)
        assert (probe(cache, "m.pt") or "").startswith(who)
        with lock_unless_busy(cache, "m.pt") as busy:
            assert busy is not None and busy.startswith(who)
        waits: list[str] = []

        async def wait_briefly() -> None:
            async with model_lock(cache, "m.pt", poll=0.01, on_wait=waits.append):
                pass

        async def bounded() -> None:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(wait_briefly(), 0.3)

        asyncio.run(bounded())
        assert len(waits) == 1 and waits[0].startswith(who)  # said once, not at every poll
    with lock_unless_busy(cache, "m.pt") as busy:
        assert busy is None
        assert probe(cache, "m.pt") is not None  # held: a lock is per open file, even in one process

    async def download() -> bool:
        async with model_lock(cache, "m.pt", poll=0.01) as locked:
            assert lock_holder(cache, "m.pt") == f"process {os.getpid()} on {os.uname().nodename}"
            return locked

    assert asyncio.run(download()) is True
    assert not cache.owner_path("m.pt").exists()  # the note goes with the lock


def test_where_no_lock_can_be_taken_everyone_carries_on(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.lock_path("m.pt").mkdir(parents=True)  # as on a filesystem whose locks fail
    notes: list[str] = []

    async def download() -> bool:
        async with model_lock(cache, "m.pt", poll=0.01, on_unlockable=notes.append) as locked:
            return locked

    assert asyncio.run(download()) is False
    assert len(notes) == 1 and "going on without the lock, the digest check still decides" in notes[0]
    with lock_unless_busy(cache, "m.pt") as busy:
        assert busy is None
    assert probe(cache, "m.pt") is None


# -- the final placement -------------------------------------------------------------------------------------
def _partial(cache: Cache, spec: ModelSpec, data: bytes) -> int:
    cache.ensure()
    part = cache.partial_path(spec)
    part.write_bytes(data)
    cache.partial_state_path(spec).write_text("{}")
    return os.open(part, os.O_RDONLY)


def test_place_verified_renames_its_own_partial_file_and_stamps_it(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    data = os.urandom(4096)
    spec = _spec(data)
    fd = _partial(cache, spec, data)
    try:
        inode = os.fstat(fd).st_ino
        assert place_verified(cache, spec, spec.sha256, fd) is None
    finally:
        os.close(fd)
    final = cache.path_for(spec)
    assert final.read_bytes() == data and final.stat().st_ino == inode  # moved, not copied
    assert cache.entry(spec).status == "verified"
    assert sorted(os.listdir(tmp_path)) == [".whisperctl", "mine.pt"]  # no partial, sidecar or temporary


def test_place_verified_copies_when_another_process_took_the_partial_name(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    data = os.urandom(4096)
    spec = _spec(data)
    fd = _partial(cache, spec, data)
    part = cache.partial_path(spec)
    try:
        part.unlink()  # where locks do not work, another download put its own unfinished file there
        part.write_bytes(b"\0" * 10)
        assert place_verified(cache, spec, spec.sha256, fd) is None
        assert cache.path_for(spec).read_bytes() == data and part.read_bytes() == b"\0" * 10
        with pytest.raises(IntegrityError, match="changed on disk"):  # bytes that no longer hash right
            place_verified(cache, spec, "0" * 64, fd)
    finally:
        os.close(fd)
    assert not stale_temporaries(cache, spec)

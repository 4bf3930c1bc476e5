"""Cache directory resolution and the five statuses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from whisperctl.errors import CacheError
from whisperctl.models.registry import ModelSpec, Registry
from whisperctl.store.cache import Cache, default_cache_dir, resolve_cache_dir

from .helpers import sha256_hex


def _spec(data: bytes, name: str = "mine") -> ModelSpec:
    return ModelSpec(
        name=name,
        url=f"http://127.0.0.1:1/{name}.pt",
        sha256=sha256_hex(data),
        filename=f"{name}.pt",
        size_bytes=len(data),
        source="registry",
    )


def test_default_is_openai_whispers(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert default_cache_dir() == isolated_env / ".cache" / "whisper"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "whisper"
    # An empty XDG_CACHE_HOME counts as unset.
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert default_cache_dir() == isolated_env / ".cache" / "whisper"


def test_default_agrees_with_openai_whisper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    whisper = pytest.importorskip("whisper")
    import inspect

    # openai-whisper computes its download root inline in load_model(); evaluate that expression here.
    source = inspect.getsource(whisper.load_model)
    assert 'os.path.join(os.getenv("XDG_CACHE_HOME", default), "whisper")' in source
    for xdg in (None, str(tmp_path / "xdg")):
        if xdg is None:
            monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        default = os.path.join(os.path.expanduser("~"), ".cache")
        theirs = Path(os.path.join(os.getenv("XDG_CACHE_HOME", default), "whisper"))
        assert default_cache_dir() == theirs


def test_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "whisper"
    monkeypatch.setenv("WHISPERCTL_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.setenv("WHISPERCTL_CACHE_DIR", "~/models")
    assert resolve_cache_dir() == Path.home() / "models"


def test_missing_and_partial(cache_dir: Path) -> None:
    cache = Cache(cache_dir)
    spec = _spec(b"x" * 100)
    assert cache.entry(spec).status == "missing"
    cache.partial_path(spec).write_bytes(b"x" * 10)
    entry = cache.entry(spec)
    assert entry.status == "partial"
    assert entry.partial_path == cache_dir / "mine.pt.part"
    assert not entry.exists


def test_a_cache_that_does_not_exist_yet(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "not" / "yet")
    assert cache.entry(_spec(b"x")).status == "missing"
    assert not (tmp_path / "not").exists(), "reading the status must not create the cache"


def test_present_verified_corrupt(cache_dir: Path) -> None:
    data = b"checkpoint bytes" * 1000
    spec = _spec(data)
    cache = Cache(cache_dir)
    path = cache.path_for(spec)
    path.write_bytes(data)  # as openai-whisper would leave it: no stamp
    assert cache.entry(spec).status == "present"

    cache.write_stamp(spec, path.stat(), sha256_hex(data))
    entry = cache.entry(spec)
    assert entry.status == "verified"
    assert entry.stamp is not None and entry.stamp.sha256 == spec.sha256
    assert entry.size_on_disk == len(data)

    # A failed verification records the measured digest: the file is corrupt until it changes.
    cache.write_stamp(spec, path.stat(), "0" * 64)
    assert cache.entry(spec).status == "corrupt"


def test_any_change_to_the_file_invalidates_the_stamp(cache_dir: Path) -> None:
    data = b"a" * 4096
    spec = _spec(data)
    cache = Cache(cache_dir)
    path = cache.path_for(spec)
    path.write_bytes(data)
    cache.write_stamp(spec, path.stat(), spec.sha256)
    assert cache.entry(spec).status == "verified"

    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # touched: mtime differs
    assert cache.entry(spec).status == "present"

    cache.write_stamp(spec, path.stat(), spec.sha256)
    replacement = cache_dir / "new"
    replacement.write_bytes(data)
    os.utime(replacement, ns=(st.st_atime_ns, path.stat().st_mtime_ns))
    os.replace(replacement, path)  # same size and mtime, but a replaced file has a new inode
    assert cache.entry(spec).status == "present"

    cache.write_stamp(spec, path.stat(), spec.sha256)
    with path.open("ab") as f:  # grown
        f.write(b"!")
    assert cache.entry(spec).status == "present"


def test_stamp_layout_is_atomic_and_hidden(cache_dir: Path) -> None:
    data = b"z" * 10
    spec = _spec(data)
    cache = Cache(cache_dir)
    cache.path_for(spec).write_bytes(data)
    cache.write_stamp(spec, cache.path_for(spec).stat(), spec.sha256)
    stamp_file = cache_dir / ".whisperctl" / "stamps" / "mine.pt.json"
    payload = json.loads(stamp_file.read_text())
    assert payload["sha256"] == spec.sha256 and payload["layout"] == 1
    assert sorted(p.name for p in stamp_file.parent.iterdir()) == ["mine.pt.json"], "no temporary left"


@pytest.mark.parametrize("garbage", ["", "{", "[]", '{"size": "x"}', '{"size": 1}'])
def test_unreadable_stamp_means_present(cache_dir: Path, garbage: str) -> None:
    data = b"q" * 10
    spec = _spec(data)
    cache = Cache(cache_dir)
    cache.path_for(spec).write_bytes(data)
    cache.stamp_path(spec).parent.mkdir(parents=True)
    cache.stamp_path(spec).write_text(garbage)
    assert cache.entry(spec).status == "present"


def test_alias_shares_one_file(cache_dir: Path) -> None:
    reg = Registry()
    cache = Cache(cache_dir)
    assert (
        cache.path_for(reg.get("large")) == cache.path_for(reg.get("large-v3")) == cache_dir / "large-v3.pt"
    )
    assert cache.path_for(reg.get("turbo")) == cache_dir / "large-v3-turbo.pt"


def test_cache_path_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "cachefile"
    target.write_text("not a dir")
    with pytest.raises(CacheError, match="not a directory"):
        Cache(target).entry(_spec(b"x"))
    assert CacheError.exit_code == 6


def test_model_path_is_a_directory(cache_dir: Path) -> None:
    spec = _spec(b"x")
    (cache_dir / "mine.pt").mkdir()
    with pytest.raises(CacheError, match="not a regular file"):
        Cache(cache_dir).entry(spec)

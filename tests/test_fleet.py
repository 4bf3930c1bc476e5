"""Fleets and CI: manifests, freeze, export to a mirror tree, rm, prune, du, cache keys, shared caches."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .helpers import sha256_hex
from .httpserver import HTTPServer

KiB = 1024
MiB = 1024 * KiB
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens


@dataclass(frozen=True)
class Blob:
    """A registry model made of random bytes, so its digest is genuine."""

    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return sha256_hex(self.data)

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"


def make_blobs(*sizes: int) -> list[Blob]:
    return [Blob(f"m{i}", os.urandom(size)) for i, size in enumerate(sizes)]


def write_registry(path: Path, blobs: list[Blob], url: str = UNREACHABLE) -> Path:
    path.write_text(
        "".join(
            f'[models.{b.name}]\nurl = "{url}/{b.filename}"\nsha256 = "{b.sha256}"\nsize = {len(b.data)}\n\n'
            for b in blobs
        ),
        "utf-8",
    )
    return path


def whisperctl(cache: Path, registry: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "whisperctl", "--cache-dir", str(cache), "--registry", str(registry), *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a whisperctl child: this source tree first, no proxies, no colours."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(PYTHONPATH=os.pathsep.join(sys.path), NO_COLOR="1", NO_PROXY="127.0.0.1", **extra)
    return env


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- shared caches -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_shared_cache_without_working_locks_is_never_corrupted(tmp_path: Path, server: HTTPServer) -> None:
    # A lock that cannot be taken at all (here a directory where the lock file goes; on some network
    # filesystems flock fails): every process downloads at once, and the digest check alone must keep the
    # cache correct. Before the fix, one process renamed another's unfinished partial file into place.
    (blob,) = make_blobs(3 * MiB)
    server.add(f"/files/{blob.filename}", blob.data, rate_limit=1 * MiB)
    registry = write_registry(tmp_path / "models.toml", [blob], server.url("/files"))
    cache = tmp_path / "shared"
    (cache / ".whisperctl" / "locks" / f"{blob.filename}.lock").mkdir(parents=True)
    procs = [
        subprocess.Popen(
            whisperctl(cache, registry, "download", blob.name),
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert all("going on without the lock" in err for err in errors), errors
    assert len(server.requests_for(f"/files/{blob.filename}", "GET")) == 4  # no lock: four downloads
    assert file_sha256(cache / blob.filename) == blob.sha256
    assert sorted(os.listdir(cache)) == [".whisperctl", blob.filename]  # no partial, no private copy left

"""A fleet fed by nginx: `whisperctl export` makes the tree, nginx from Debian's packages serves it on
127.0.0.1, and 8 clients with caches of their own plus 4 sharing one cache download from it at once."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .nginx import Nginx, NginxUnavailableError, serve
from .test_fleet import (
    Lab,
    MiB,
    assert_fleet_verified,
    assert_one_download_each,
    child_env,
    run_fleet,
    whisperctl,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def fleet_lab(tmp_path: Path) -> Lab:
    lab = Lab(tmp_path / "lab", 2 * MiB, 2 * MiB, 1 * MiB)  # the origin is unreachable: only mirrors work
    lab.fill()  # the one connected machine
    return lab


@pytest.fixture
def nginx(fleet_lab: Lab, tmp_path: Path) -> Iterator[Nginx]:
    tree = tmp_path / "www" / "whisper"
    result = fleet_lab.cli("export", str(tree), "--all-cached")
    assert result.exit_code == 0, result.stderr
    with contextlib.ExitStack() as stack:
        try:
            # 512 KiB/s per connection: each download lasts seconds, so the clients overlap.
            server = stack.enter_context(serve(tree, tmp_path, rate="512k"))
        except NginxUnavailableError as exc:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(f"nginx is required in CI: {exc}")
            pytest.skip(f"nginx unavailable: {exc}")
        yield server


def test_fleet_downloads_from_nginx_serving_an_exported_tree(
    fleet_lab: Lab, nginx: Nginx, tmp_path: Path
) -> None:
    blobs = fleet_lab.blobs
    manifest = tmp_path / "models.txt"
    manifest.write_text("".join(f"{b.name}\n" for b in blobs), "utf-8")
    shared_cache = tmp_path / "shared"
    shared, private = [shared_cache] * 4, [tmp_path / f"node{i}" for i in range(8)]

    def argv(cache: Path) -> list[str]:
        # Every node runs `WHISPERCTL_MIRROR=... whisperctl download -r models.txt`; the shared cache's
        # clients use the server's other port, so that the access log tells them apart.
        mirror = nginx.url("shared" if cache == shared_cache else "private")
        command = whisperctl(cache, fleet_lab.registry, "download", "-r", str(manifest))
        return ["env", f"WHISPERCTL_MIRROR={mirror}", *command]

    errors = run_fleet(argv, shared + private, child_env())  # the shared-cache clients start first
    assert_fleet_verified(blobs, fleet_lab.registry, shared + private)
    assert_one_download_each(blobs, errors[:4])
    assert any("waiting for process" in err for err in errors[:4]), errors[:4]  # they did overlap

    # One full download per model for the shared cache, one per private cache, nothing else.
    log = nginx.log()
    full = {("GET", 200, None), ("GET", 206, "bytes=0-")}  # the engine asks for bytes=0-: ranges welcome
    for b in blobs:
        path = f"/{b.sha256}/{b.filename}"
        for server, clients in (("shared", 1), ("private", 8)):
            hits = [line for line in log if line.path == path and line.port == nginx.ports[server]]
            assert len(hits) == clients, (server, hits)
            assert all((h.method, h.status, h.range) in full and h.bytes_sent == len(b.data) for h in hits), (
                hits
            )
    assert len(log) == 9 * len(blobs), log

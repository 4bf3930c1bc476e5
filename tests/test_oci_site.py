"""A site cache: a second distribution registry as a pull-through proxy of the first (tests/registry.py), and
a fleet of whisperctl processes, each with its own cache, pulling through it at once."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from . import oci_client
from .oci_lab import OciLab
from .registry import Registry

MiB = 1024 * 1024
REPO = "fleet/whisper"
CLIENTS = 8


def _pull_all(lab: OciLab, site: Registry, caches: list[Path]) -> None:
    """Every model into each of ``caches`` through ``site``, one whisperctl process per cache, all at once."""
    env = lab.env(site)  # the clients know only the site cache: its CA, no credentials
    names = [b.name for b in lab.blobs]
    procs = [
        subprocess.Popen(
            lab.command("download", "--mirror", site.url(REPO), *names, cache=cache),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cache in caches
    ]
    errors = [proc.communicate(timeout=180)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * len(caches), errors
    expected = {b.filename: b.sha256 for b in lab.blobs}
    for cache in caches:
        assert lab.final_files(cache) == expected


def _blob_gets(reg: Registry, since: int = 0) -> Counter[str]:
    return Counter(
        line.path.rsplit(":", 1)[1]
        for line in reg.requests()[since:]
        if line.method == "GET" and "/blobs/sha256:" in line.path and line.status in (200, 206)
    )


def _stored(site: Registry, digest_hex: str) -> bool:
    v2 = site.storage / "docker" / "registry" / "v2"
    link = v2 / "repositories" / REPO / "_layers" / "sha256" / digest_hex / "link"
    return link.is_file() and (v2 / "blobs" / "sha256" / digest_hex[:2] / digest_hex / "data").is_file()


@pytest.mark.usefixtures("skopeo")
def test_eight_clients_pull_through_a_site_cache_at_once(
    tmp_path: Path, proxy_registry: Registry, token_registry: Registry
) -> None:
    upstream = token_registry
    lab = OciLab(tmp_path, 6 * MiB + 5, 3 * MiB + 11)
    push_env = lab.env(upstream)
    for blob in lab.blobs:
        oci_client.push_file(upstream.host, REPO, blob.name, lab.model_path(blob), tmp_path, push_env)
    pushed = len(upstream.requests())

    # Cold: the site cache has nothing yet. Distribution 2.8's proxy streams each request for a blob it has
    # not stored yet from the upstream, and fetches it once more to store its own copy: the upstream sees
    # between 2 fetches and one more than the site cache served meanwhile.
    _pull_all(lab, proxy_registry, [tmp_path / f"cold-{i}" for i in range(CLIENTS)])
    cold = _blob_gets(upstream, pushed)
    served_cold = _blob_gets(proxy_registry)
    assert all(2 <= cold[b.sha256] <= served_cold[b.sha256] + 1 for b in lab.blobs), (cold, served_cold)
    deadline = time.monotonic() + 30
    while not all(_stored(proxy_registry, b.sha256) for b in lab.blobs):
        assert time.monotonic() < deadline, "the site cache did not store the blobs within 30 s"
        time.sleep(0.05)

    # Warm: eight more machines at once; the upstream's log shows no further fetch of any blob.
    warm_from = len(upstream.requests())
    served_from = len(proxy_registry.requests())
    _pull_all(lab, proxy_registry, [tmp_path / f"warm-{i}" for i in range(CLIENTS)])
    assert _blob_gets(upstream, warm_from) == Counter()
    served = _blob_gets(proxy_registry, served_from)
    assert all(served[b.sha256] >= CLIENTS for b in lab.blobs), served

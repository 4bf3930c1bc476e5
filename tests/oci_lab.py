"""A lab for the OCI tests: registry models made of random bytes (genuine digests), a cache filled from a
mirror tree, and whisperctl run as a child process (``python -m whisperctl``) against a real registry."""

from __future__ import annotations

import subprocess
from pathlib import Path

from whisperctl import api

from .helpers import file_sha256
from .registry import Registry
from .test_fleet import UNREACHABLE, Blob, child_env, make_blobs, whisperctl, write_registry


class OciLab:
    def __init__(self, tmp: Path, *sizes: int, official: str = UNREACHABLE) -> None:
        """``official``: the base of the models' own URLs in the registry file (by default a dead port)."""
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp
        self.blobs = make_blobs(*sizes)
        self.registry = write_registry(tmp / "models.toml", self.blobs, official)
        self.cache = tmp / "cache"
        self.source = tmp / "source-tree"
        for b in self.blobs:
            (self.source / b.sha256).mkdir(parents=True)
            (self.source / b.sha256 / b.filename).write_bytes(b.data)

    def fill(self, *blobs: Blob) -> None:
        """Puts ``blobs`` (all by default) verified into the lab's cache, from the local tree."""
        api.download(
            [b.name for b in blobs or self.blobs],
            cache_dir=self.cache,
            registry=self.registry,
            mirrors=[str(self.source)],
            offline=True,
        )

    def model_path(self, blob: Blob) -> Path:
        """The model's file in the lab's own tree (not a cache): what an independent client pushes."""
        return self.source / blob.sha256 / blob.filename

    def command(self, *args: str, cache: Path | None = None) -> list[str]:
        return whisperctl(cache or self.cache, self.registry, *args)

    def run(
        self, *args: str, cache: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args, cache=cache),
            env=env if env is not None else child_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def env(self, reg: Registry, *, auth: bool = True, **extra: str) -> dict[str, str]:
        """A child's environment for ``reg``: its CA trusted, its credentials in REGISTRY_AUTH_FILE."""
        env = child_env(**extra)
        if reg.ca_file is not None:
            env["SSL_CERT_FILE"] = str(reg.ca_file)
        if auth and reg.username:
            env["REGISTRY_AUTH_FILE"] = str(reg.auth_json(self.tmp / f"auth-{reg.port}.json"))
        return env

    def final_files(self, cache: Path) -> dict[str, str]:
        """Every ``*.pt`` under its final name in ``cache``, with its SHA-256."""
        if not cache.is_dir():
            return {}
        return {p.name: file_sha256(p) for p in sorted(cache.glob("*.pt"))}


def blob_requests(reg: Registry, repository: str, digest_hex: str) -> list[tuple[str, int]]:
    """(method, status) of every request for the blob ``sha256:digest_hex`` in ``repository``, in order."""
    path = f"/v2/{repository}/blobs/sha256:{digest_hex}"
    return [(line.method, line.status) for line in reg.requests() if line.path.split("?")[0] == path]

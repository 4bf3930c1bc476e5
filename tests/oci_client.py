"""skopeo (Debian's package) as the independent OCI client of the interop tests and of bench/oci.py.

Nothing here imports whisperctl: the artifact pushed by :func:`push_file` is laid out by this module's own
JSON (an OCI image layout with one raw layer, CNCF ModelPack media types), and what whisperctl pushed is read
back with ``skopeo inspect --raw`` and ``skopeo copy``. Credentials and trust reach skopeo as they reach
whisperctl: REGISTRY_AUTH_FILE and SSL_CERT_FILE in ``env`` (see :meth:`tests.registry.Registry.env`).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from .registry import ensure_binary

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
TITLE = "org.opencontainers.image.title"


class SkopeoError(RuntimeError):
    """skopeo exited non-zero; the message ends with its stderr."""


def skopeo(*args: str, env: dict[str, str], timeout: float = 600) -> str:
    binary = ensure_binary("skopeo")
    done = subprocess.run(
        [binary, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise SkopeoError(f"skopeo {args[0]} exited with {done.returncode}: {done.stderr.strip()[-600:]}")
    return done.stdout


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_layout(layout: Path, model: Path, tag: str, config: dict[str, Any]) -> str:
    """An OCI image layout at ``layout`` holding ``model`` as the one layer of an artifact tagged ``tag``;
    returns the layer's digest ("sha256:..."). The model file is hard-linked (copied across devices)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layer = _sha256_file(model)
    target = blobs / layer
    if not target.exists():
        try:
            target.hardlink_to(model)
        except OSError:
            target.write_bytes(model.read_bytes())

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return digest

    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": ARTIFACT,
        "config": {"mediaType": CONFIG, "digest": "sha256:" + put(config_bytes), "size": len(config_bytes)},
        "layers": [
            {
                "mediaType": WEIGHT,
                "digest": "sha256:" + layer,
                "size": model.stat().st_size,
                "annotations": {TITLE: model.name},
            }
        ],
    }
    manifest_bytes = json.dumps(manifest).encode()
    entry = {
        "mediaType": MANIFEST,
        "digest": "sha256:" + put(manifest_bytes),
        "size": len(manifest_bytes),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}', "utf-8")
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}), "utf-8")
    return "sha256:" + layer


def push_file(host: str, repository: str, tag: str, model: Path, work: Path, env: dict[str, str]) -> str:
    """Pushes ``model`` as an artifact to ``host/repository:tag`` with skopeo; returns the layer digest."""
    layout = work / f"layout-{tag}"
    digest = write_layout(layout, model, tag, {"name": tag, "pushed_by": "skopeo"})
    skopeo(
        "copy", "--preserve-digests", f"oci:{layout}:{tag}", f"docker://{host}/{repository}:{tag}", env=env
    )
    return digest


def read_manifest(host: str, repository: str, reference: str, env: dict[str, str]) -> dict[str, Any]:
    """The manifest as the registry serves it, read by skopeo (``reference`` a tag or ``sha256:...``)."""
    sep = "@" if reference.startswith("sha256:") else ":"
    raw = skopeo("inspect", "--raw", f"docker://{host}/{repository}{sep}{reference}", env=env)
    manifest: dict[str, Any] = json.loads(raw)
    return manifest


def pull_dir(host: str, repository: str, reference: str, dest: Path, env: dict[str, str]) -> Path:
    """``skopeo copy`` into a ``dir:`` transport directory (blobs under their hex digests); returns it."""
    sep = "@" if reference.startswith("sha256:") else ":"
    skopeo("copy", f"docker://{host}/{repository}{sep}{reference}", f"dir:{dest}", env=env)
    return dest

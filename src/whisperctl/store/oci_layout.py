"""OCI image layouts: the directory format that skopeo and oras copy to and from registries
(``oci:DIR:TAG``, ``oras cp --from-oci-layout DIR:TAG``), for air gaps.

A layout holds ``oci-layout`` (its version), ``index.json`` (one manifest per model, tagged by the annotation
``org.opencontainers.image.ref.name``) and ``blobs/sha256/<hex>``: each model's file under its own SHA-256
(a hard link to the cached file where the filesystem allows, else a verified copy), its config and its
manifest. Blobs are written before the index that names them, each by ``os.replace`` of a temporary file, so a
reader never meets an index naming a missing blob. The same directory is a mirror (``--mirror DIR``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from whisperctl.errors import CacheError, sanitized
from whisperctl.models.registry import ModelSpec
from whisperctl.store.files import atomic_write_text, fsync_path
from whisperctl.store.mirror import ExportMethod, place_file
from whisperctl.store.stamps import Stamp

__all__ = [
    "ANNOTATION_REF_NAME",
    "INDEX_MEDIA_TYPE",
    "INDEX_NAME",
    "LAYOUT_FILE",
    "LayoutModel",
    "LayoutRecord",
    "LayoutReport",
    "blob_path",
    "is_layout",
    "write_layout",
]

LAYOUT_FILE = "oci-layout"
INDEX_NAME = "index.json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
_LAYOUT_TEXT = '{"imageLayoutVersion":"1.0.0"}'
_MAX_INDEX_BYTES = 16 * 1024 * 1024


def blob_path(root: Path, hex_digest: str) -> Path:
    """Where the blob ``sha256:<hex_digest>`` is in the layout at ``root``."""
    return root / "blobs" / "sha256" / hex_digest


def is_layout(path: Path) -> bool:
    """Whether ``path`` is an OCI image layout (a directory with an ``oci-layout`` file)."""
    return (path / LAYOUT_FILE).is_file()


@dataclass(frozen=True)
class LayoutModel:
    """What to write for one model: its cached file, the config and manifest blobs, the manifest's types."""

    spec: ModelSpec
    source: Path
    stamp: Stamp | None  # the cached file's, when it said verified
    config: bytes
    manifest: bytes
    media_type: str
    artifact_type: str


@dataclass(frozen=True)
class LayoutRecord:
    """One model in a layout: its file's blob (``linked``, ``copied`` or ``present``) and its manifest."""

    name: str
    sha256: str
    size_bytes: int
    path: Path
    method: ExportMethod
    manifest_digest: str


@dataclass(frozen=True)
class LayoutReport:
    root: Path
    index: Path
    records: list[LayoutRecord]

    @property
    def bytes_copied(self) -> int:
        return sum(r.size_bytes for r in self.records if r.method == "copied")


def write_layout(root: Path, models: Sequence[LayoutModel]) -> LayoutReport:
    """Write ``models`` into the layout at ``root`` (created, or added to: manifests of other tags stay).

    The index names the models written, even when a later one fails (as ``export`` keeps ``SHA256SUMS``)."""
    index_path = root / INDEX_NAME
    kept = _read_index(index_path)
    records: list[LayoutRecord] = []
    entries: dict[str, dict[str, Any]] = {}
    try:
        layout_file = root / LAYOUT_FILE
        if not layout_file.is_file() or layout_file.read_text("utf-8", "replace").strip() != _LAYOUT_TEXT:
            atomic_write_text(layout_file, _LAYOUT_TEXT + "\n")
        try:
            for m in models:
                records.append(_write_model(root, m))
                entries[m.spec.name] = {
                    "mediaType": m.media_type,
                    "artifactType": m.artifact_type,
                    "digest": records[-1].manifest_digest,
                    "size": len(m.manifest),
                    "annotations": {ANNOTATION_REF_NAME: m.spec.name},
                }
        finally:
            if entries:
                manifests = [e for e in kept if _ref_name(e) not in entries and _has_blob(root, e)]
                manifests += [entries[name] for name in sorted(entries)]
                index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests}
                atomic_write_text(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")
                with contextlib.suppress(OSError):
                    fsync_path(root)
    except OSError as exc:
        raise CacheError(
            f"{root}: cannot write the OCI layout ({exc.strerror or exc}); check the destination's "
            "permissions and free space"
        ) from exc
    return LayoutReport(root, index_path, records)


def _write_model(root: Path, m: LayoutModel) -> LayoutRecord:
    """The config, the manifest and the model's file (linked or copied, verified) as blobs."""
    _write_blob(root, m.config)
    manifest_digest = _write_blob(root, m.manifest)
    placed = place_file(m.spec, m.source, m.stamp, blob_path(root, m.spec.sha256))
    return LayoutRecord(
        m.spec.name, m.spec.sha256, placed.size_bytes, placed.path, placed.method, manifest_digest
    )


def _write_blob(root: Path, data: bytes) -> str:
    """Write a small JSON blob (ASCII) under its digest, unless a blob with that digest is there."""
    hex_digest = hashlib.sha256(data).hexdigest()
    path = blob_path(root, hex_digest)
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return f"sha256:{hex_digest}"
    atomic_write_text(path, data.decode("ascii"))
    return f"sha256:{hex_digest}"


def _read_index(path: Path) -> list[dict[str, Any]]:
    """The manifest entries of an existing ``index.json`` (none when there is no file)."""

    def unusable(cause: str) -> CacheError:
        return CacheError(
            f"{path}: not an OCI image index ({cause}); remove it, or export to another directory"
        )

    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise unusable(exc.strerror or str(exc)) from exc
    if len(data) > _MAX_INDEX_BYTES:
        raise unusable(f"more than {_MAX_INDEX_BYTES:,} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise unusable(f"not JSON: {sanitized(str(exc), 80)}") from None
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(manifests, list) or not all(isinstance(e, dict) for e in manifests):
        raise unusable("no list of manifests")
    return manifests


def _ref_name(entry: dict[str, Any]) -> object:
    annotations = entry.get("annotations")
    return annotations.get(ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None


def _has_blob(root: Path, entry: dict[str, Any]) -> bool:
    digest = entry.get("digest")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        return True  # another algorithm, or not ours to judge: kept as it was
    hex_digest = digest.removeprefix("sha256:")
    return len(hex_digest) == 64 and os.path.isfile(blob_path(root, hex_digest))

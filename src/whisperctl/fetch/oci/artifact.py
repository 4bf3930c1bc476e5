"""A model as an OCI artifact, after the CNCF ModelPack spec: one layer holding the ``.pt`` file as it is
(``application/vnd.cncf.model.weight.v1.raw``, its digest the model's SHA-256), a small JSON config (name,
dims, alignment heads, source URL), and an image manifest whose ``artifactType`` says "model".

Every byte is deterministic: the same model always gives the same config and manifest, hence the same
digests, whichever machine pushes it (no dates, sorted keys, no whitespace). :func:`parse_manifest` reads a
manifest back (from a registry or a layout: untrusted, bounded) and finds the model layer.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from whisperctl.errors import IntegrityError, sanitized
from whisperctl.models.registry import ModelSpec
from whisperctl.store.oci_layout import ANNOTATION_REF_NAME, INDEX_MEDIA_TYPE

__all__ = [
    "ANNOTATION_FILEPATH",
    "ANNOTATION_MODEL_NAME",
    "ANNOTATION_REF_NAME",
    "ANNOTATION_TITLE",
    "ARTIFACT_TYPE",
    "CONFIG_MEDIA_TYPE",
    "DOCKER_MANIFEST_MEDIA_TYPE",
    "INDEX_MEDIA_TYPE",
    "MANIFEST_MEDIA_TYPE",
    "MAX_MANIFEST_BYTES",
    "WEIGHT_MEDIA_TYPE",
    "Artifact",
    "Descriptor",
    "ParsedManifest",
    "build_artifact",
    "build_config",
    "build_manifest",
    "canonical_json",
    "parse_manifest",
]

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"  # read, never written
ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.cncf.model.config.v1+json"
WEIGHT_MEDIA_TYPE = "application/vnd.cncf.model.weight.v1.raw"

ANNOTATION_TITLE = "org.opencontainers.image.title"  # oras names the pulled file after it
ANNOTATION_DESCRIPTION = "org.opencontainers.image.description"
ANNOTATION_SOURCE = "org.opencontainers.image.source"
ANNOTATION_FILEPATH = "org.cncf.model.filepath"  # ModelPack: the file's path in the model
ANNOTATION_MODEL_NAME = "io.whisperctl.model.name"

# The distribution registry refuses manifests over 4 MiB; a model's is under 2 KiB.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def canonical_json(value: object) -> bytes:
    """``value`` as compact JSON with sorted keys, ASCII only: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor: what a manifest says of a blob."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Artifact:
    """The blobs of one model's artifact: the config's bytes, the model layer, and the manifest's bytes."""

    name: str
    config: bytes
    config_descriptor: Descriptor
    layer: Descriptor
    manifest: bytes

    @property
    def manifest_digest(self) -> str:
        return f"sha256:{hashlib.sha256(self.manifest).hexdigest()}"


def build_config(spec: ModelSpec) -> bytes:
    """The config blob (ModelPack's ``descriptor``/``config``/``modelfs``, plus whisperctl's own part with
    the dims and alignment heads), as :func:`canonical_json`."""
    whisper: dict[str, Any] = {"filename": spec.filename, "sha256": spec.sha256}
    if spec.dims is not None:
        whisper["dims"] = {k: getattr(spec.dims, k) for k in sorted(vars(spec.dims))}
    if spec.alignment_heads is not None:
        whisper["alignmentHeads"] = [list(pair) for pair in spec.alignment_heads]
    if spec.english_only is not None:
        whisper["englishOnly"] = spec.english_only
    config = {
        "descriptor": {"name": spec.name, "family": "whisper", "sourceURL": spec.url},
        "config": {"architecture": "whisper", "format": "pytorch"},
        "modelfs": {"type": "layers", "diffIds": [f"sha256:{spec.sha256}"]},
        "io.whisperctl": whisper,
    }
    return canonical_json(config)


def build_manifest(spec: ModelSpec, size: int, config: bytes) -> bytes:
    """The image manifest of ``spec``'s artifact: ``config`` (from :func:`build_config`) and one layer, the
    ``.pt`` file of ``size`` bytes whose digest is the model's SHA-256."""
    return build_artifact(spec, size, config=config).manifest


def build_artifact(spec: ModelSpec, size: int, *, config: bytes | None = None) -> Artifact:
    """Everything pushed for ``spec`` (a file of ``size`` bytes)."""
    config = build_config(spec) if config is None else config
    config_desc = Descriptor(CONFIG_MEDIA_TYPE, f"sha256:{hashlib.sha256(config).hexdigest()}", len(config))
    layer = Descriptor(
        WEIGHT_MEDIA_TYPE,
        f"sha256:{spec.sha256}",
        size,
        {ANNOTATION_TITLE: spec.filename, ANNOTATION_FILEPATH: spec.filename},
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": config_desc.to_dict(),
        "layers": [layer.to_dict()],
        "annotations": {
            ANNOTATION_TITLE: spec.filename,
            ANNOTATION_DESCRIPTION: f"OpenAI Whisper checkpoint {spec.name} ({spec.filename})",
            ANNOTATION_SOURCE: spec.url,
            ANNOTATION_MODEL_NAME: spec.name,
        },
    }
    return Artifact(spec.name, config, config_desc, layer, canonical_json(manifest))


@dataclass(frozen=True)
class ParsedManifest:
    """What a manifest says: its config, its layers, the model layer among them, and its annotations."""

    config: Descriptor
    layers: tuple[Descriptor, ...]
    model_layer: Descriptor
    annotations: dict[str, str]
    artifact_type: str | None

    @property
    def model_name(self) -> str | None:
        return self.annotations.get(ANNOTATION_MODEL_NAME)


def parse_manifest(data: bytes, *, where: str) -> ParsedManifest:
    """Read an image manifest (untrusted bytes from ``where``, a registry URL or a file) and find its model
    layer: the layer of the weight media type, else the one whose title ends in ``.pt``, else the only one.

    :class:`~whisperctl.errors.IntegrityError` (exit 4), one line, when it is too large, not JSON, not an
    image manifest, or holds no model layer."""

    def bad(what: str) -> IntegrityError:
        return IntegrityError(f"{where}: not a model's OCI manifest ({what}); push the model again")

    if len(data) > MAX_MANIFEST_BYTES:
        raise bad(f"{len(data):,} bytes, more than the {MAX_MANIFEST_BYTES:,} a manifest may have")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise bad(f"not JSON: {sanitized(str(exc), 80)}") from None
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise bad("no schemaVersion 2")
    media_type = doc.get("mediaType", MANIFEST_MEDIA_TYPE)
    if media_type not in (MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE):
        raise bad(f"media type {sanitized(str(media_type), 80)}, expected {MANIFEST_MEDIA_TYPE}")
    config = _descriptor(doc.get("config"), bad)
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise bad("no layers")
    layers = tuple(_descriptor(item, bad) for item in raw_layers)
    artifact_type = doc.get("artifactType")
    return ParsedManifest(
        config=config,
        layers=layers,
        model_layer=_model_layer(layers, bad),
        annotations=_annotations(doc.get("annotations"), bad),
        artifact_type=sanitized(artifact_type, 200) if isinstance(artifact_type, str) else None,
    )


def _model_layer(layers: tuple[Descriptor, ...], bad: Any) -> Descriptor:
    for layer in layers:
        if layer.media_type == WEIGHT_MEDIA_TYPE:
            return layer
    titled = [layer for layer in layers if layer.annotations.get(ANNOTATION_TITLE, "").endswith(".pt")]
    if len(titled) == 1:
        return titled[0]
    if len(layers) == 1:
        return layers[0]
    raise bad(f"{len(layers)} layers, none of media type {WEIGHT_MEDIA_TYPE}")


def _descriptor(item: object, bad: Any) -> Descriptor:
    if not isinstance(item, dict):
        raise bad("a descriptor that is not an object")
    media_type, digest, size = item.get("mediaType"), item.get("digest"), item.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise bad("a descriptor without a media type")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        shown = sanitized(digest, 80) if isinstance(digest, str) else "none"
        raise bad(f"digest {shown}, expected sha256:<64 hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad(f"size {sanitized(repr(size), 40)} of {digest}")
    return Descriptor(sanitized(media_type, 200), digest, size, _annotations(item.get("annotations"), bad))


def _annotations(value: object, bad: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise bad("annotations that are not strings")
    return {sanitized(str(k), 200): sanitized(v, 1000) for k, v in value.items()}

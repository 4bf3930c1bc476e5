"""The OCI artifact of a model (bytes, digests, parsing back) and `export --oci-layout`, also as a mirror."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from whisperctl.errors import IntegrityError
from whisperctl.fetch.oci.artifact import (
    ANNOTATION_MODEL_NAME,
    ANNOTATION_TITLE,
    ARTIFACT_TYPE,
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    MAX_MANIFEST_BYTES,
    WEIGHT_MEDIA_TYPE,
    build_artifact,
    parse_manifest,
)
from whisperctl.fetch.sources import choose_source
from whisperctl.fetch.sources.oci_layout import OCILayoutMirror
from whisperctl.models.registry import load_registry

from .helpers import file_sha256
from .test_fleet import Lab

KiB = 1024


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    return Lab(tmp_path, 64 * KiB, 96 * KiB)


def test_the_artifact_is_deterministic_and_parses_back(lab: Lab) -> None:
    b0, b1 = lab.blobs
    spec = lab.spec(b0)
    first, again = build_artifact(spec, len(b0.data)), build_artifact(lab.spec(b0), len(b0.data))
    assert (first.config, first.manifest) == (again.config, again.manifest)
    assert first.config_descriptor.digest == f"sha256:{hashlib.sha256(first.config).hexdigest()}"
    other = build_artifact(lab.spec(b1), len(b1.data))
    assert other.config_descriptor.digest != first.config_descriptor.digest

    doc = json.loads(first.manifest)
    assert doc["schemaVersion"] == 2
    assert (doc["mediaType"], doc["artifactType"]) == (MANIFEST_MEDIA_TYPE, ARTIFACT_TYPE)
    assert doc["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    assert doc["layers"] == [
        {
            "mediaType": WEIGHT_MEDIA_TYPE,
            "digest": f"sha256:{b0.sha256}",
            "size": len(b0.data),
            "annotations": {ANNOTATION_TITLE: b0.filename, "org.cncf.model.filepath": b0.filename},
        }
    ]
    config = json.loads(first.config)
    assert config["descriptor"]["name"] == "m0"
    assert config["descriptor"]["sourceURL"] == spec.url
    assert config["modelfs"]["diffIds"] == [f"sha256:{b0.sha256}"]

    parsed = parse_manifest(first.manifest, where="test")
    assert parsed.model_layer.hex == b0.sha256 and parsed.model_layer.size == len(b0.data)
    assert parsed.model_name == "m0" and parsed.artifact_type == ARTIFACT_TYPE
    assert parsed.annotations[ANNOTATION_MODEL_NAME] == "m0"
    assert parsed.config == first.config_descriptor


def test_the_official_models_config_carries_dims_and_alignment_heads() -> None:
    spec = load_registry(None).get("tiny")
    config = json.loads(build_artifact(spec, spec.size_bytes or 0).config)
    assert config["io.whisperctl"]["dims"]["n_text_layer"] == 4
    assert spec.alignment_heads is not None
    assert config["io.whisperctl"]["alignmentHeads"] == [list(p) for p in spec.alignment_heads]


def test_a_manifest_from_elsewhere_parses_by_title_or_single_layer() -> None:
    digest = "sha256:" + "ab" * 32
    layer = {"mediaType": "application/octet-stream", "digest": digest, "size": 5}
    oras_like = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest, "size": 2},
        "layers": [
            {**layer, "annotations": {ANNOTATION_TITLE: "notes.txt"}},
            {**layer, "size": 7, "annotations": {ANNOTATION_TITLE: "tiny.pt"}},
        ],
    }
    assert parse_manifest(json.dumps(oras_like).encode(), where="x").model_layer.size == 7
    oras_like["layers"] = [layer]
    assert parse_manifest(json.dumps(oras_like).encode(), where="x").model_layer.size == 5
    docker = {**oras_like, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}
    assert parse_manifest(json.dumps(docker).encode(), where="x").model_layer.size == 5


@pytest.mark.parametrize(
    ("data", "cause"),
    [
        (b"\x1b[31mnot json", "not JSON"),
        (b'{"schemaVersion": 1}', "no schemaVersion 2"),
        (
            b'{"schemaVersion": 2, "config": {"mediaType": "a", "digest": "sha256:12", "size": 1}}',
            "digest sha256:12",
        ),
        (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}', "media type"),
        (b" " * (MAX_MANIFEST_BYTES + 1), "bytes, more than"),
    ],
)
def test_a_bad_manifest_is_one_clean_line(data: bytes, cause: str) -> None:
    with pytest.raises(IntegrityError) as caught:
        parse_manifest(data, where="oci://r/m:tiny")
    message = str(caught.value)
    assert cause in message and message.startswith("oci://r/m:tiny: not a model's OCI manifest")
    assert "\n" not in message and "\x1b" not in message


def test_export_oci_layout_links_blobs_and_tags_each_model(lab: Lab) -> None:
    b0, b1 = lab.blobs
    lab.fill()
    layout = lab.tmp / "layout"
    result = lab.cli("export", "--oci-layout", str(layout), "m0", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"root", "index", "models", "bytes_copied"}
    assert [(m["name"], m["method"]) for m in report["models"]] == [("m0", "linked")]
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    blob = layout / "blobs" / "sha256" / b0.sha256
    assert blob.stat().st_ino == (lab.cache_dir / b0.filename).stat().st_ino

    # A second model joins the index; the first keeps its tag, and is found present.
    again = json.loads(lab.cli("export", "--oci-layout", str(layout), "m1", "m0", "--json").stdout)
    assert [(m["name"], m["method"]) for m in again["models"]] == [("m1", "linked"), ("m0", "present")]
    index = json.loads((layout / "index.json").read_text())
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    assert sorted(tags) == ["m0", "m1"]
    for b in (b0, b1):
        entry = tags[b.name]
        manifest = (layout / "blobs" / "sha256" / entry["digest"].removeprefix("sha256:")).read_bytes()
        assert entry["size"] == len(manifest) and entry["mediaType"] == MANIFEST_MEDIA_TYPE
        parsed = parse_manifest(manifest, where="layout")
        assert parsed.model_layer.hex == b.sha256
        assert file_sha256(layout / "blobs" / "sha256" / parsed.config.hex) == parsed.config.hex
    assert not list(layout.rglob("*.tmp"))


def test_export_oci_layout_refuses_a_corrupt_model_before_writing(lab: Lab) -> None:
    lab.fill()
    (lab.cache_dir / "m1.pt").write_bytes(b"changed" * 100)
    layout = lab.tmp / "layout"
    result = lab.cli("export", "--oci-layout", str(layout), "m0", "m1")
    assert result.exit_code == 4, result.stderr
    assert "m1:" in result.stderr and "verify --repair m1" in result.stderr
    assert not layout.exists()
    missing = Lab(lab.tmp / "empty", 1).cli("export", "--oci-layout", str(layout), "m0")
    assert missing.exit_code == 5 and "not in the cache" in missing.stderr


def test_a_layout_is_a_mirror(lab: Lab) -> None:
    b0, b1 = lab.blobs
    lab.fill()
    layout = lab.tmp / "layout"
    assert lab.cli("export", "--oci-layout", str(layout), "-r", str(_manifest(lab))).exit_code == 0
    assert isinstance(choose_source(str(layout)), OCILayoutMirror)
    assert isinstance(choose_source(layout.as_uri()), OCILayoutMirror)
    fresh = lab.tmp / "fresh"
    result = lab.cli("download", "m0", "m1", "--mirror", str(layout), "--offline", cache=fresh)
    assert result.exit_code == 0, result.stderr
    for b in (b0, b1):
        assert file_sha256(fresh / b.filename) == b.sha256
        assert lab.status(b, fresh) == "verified"


def _manifest(lab: Lab) -> Path:
    path = lab.tmp / "models.txt"
    path.write_text("m0\nm1\n", "utf-8")
    return path


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_reads_the_layout(lab: Lab) -> None:
    b0, _ = lab.blobs
    lab.fill()
    layout = lab.tmp / "layout"
    assert lab.cli("export", "--oci-layout", str(layout), "m0", "m1").exit_code == 0
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{layout}:m0"], capture_output=True, check=True, timeout=60
    ).stdout
    assert parse_manifest(raw, where="skopeo").model_layer.hex == b0.sha256
    copy = lab.tmp / "copy"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{layout}:m0", f"oci:{copy}:m0"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert file_sha256(copy / "blobs" / "sha256" / b0.sha256) == b0.sha256
    fresh = lab.tmp / "fresh"
    assert lab.cli("download", "m0", "--mirror", str(copy), "--offline", cache=fresh).exit_code == 0
    assert lab.status(b0, fresh) == "verified"


def test_a_failed_model_leaves_an_index_of_those_written(lab: Lab) -> None:
    b0, b1 = lab.blobs
    lab.fill()
    layout = lab.tmp / "layout"
    in_the_way = layout / "blobs" / "sha256" / b1.sha256
    (in_the_way / "not-a-blob").parent.mkdir(parents=True)
    (in_the_way / "not-a-blob").write_bytes(b"")
    result = lab.cli("export", "--oci-layout", str(layout), "m0", "m1")
    assert result.exit_code == 6, result.stderr
    assert str(layout) in result.stderr and result.stderr.count("\n") == 1
    index = json.loads((layout / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == ["m0"]
    assert file_sha256(layout / "blobs" / "sha256" / b0.sha256) == b0.sha256
    assert not list(layout.rglob("*.tmp"))

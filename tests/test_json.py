"""``--json``: one conversion for every record (cli/records.py), and the README's words for it.

Every record class the CLI prints goes through ``to_json``; these tests pin each one's keys to what the
README documents, check that the views name real classes and fields, and that the status words and exit
codes the README lists are exactly those of the code.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from pathlib import Path

import pytest

from whisperctl import api
from whisperctl.api.fleet import (
    CacheKey,
    DiskUsage,
    ExportRecord,
    ExportReport,
    FrozenModel,
    PruneItem,
    PruneReport,
    RemovedFile,
    RemoveRecord,
    RemoveReport,
    UsageEntry,
)
from whisperctl.api.oci import LayoutRecord, LayoutReport, PushRecord, PushReport
from whisperctl.cli.records import VIEWS, to_json
from whisperctl.errors import ExitCode
from whisperctl.fetch.download import DownloadRecord, DownloadStatus
from whisperctl.models.dims import ModelDimensions, ParameterCounts, count_parameters
from whisperctl.models.formats import ModelFile, TensorInfo
from whisperctl.models.registry import ModelSpec, Registry
from whisperctl.store.cache import Cache, CacheEntry, Status
from whisperctl.store.verify import VerifyRecord

README = Path(__file__).resolve().parents[1] / "README.md"


def _classes() -> dict[str, type]:
    from whisperctl.models.loader import LoadReport, PartReport  # torch: only this test needs it

    classes: list[type] = [
        ParameterCounts,
        ModelDimensions,
        ModelSpec,
        ModelFile,
        LoadReport,
        PartReport,
        CacheEntry,
        api.CheckpointInfo,
        api.ConvertRecord,
        api.WrittenFile,
        VerifyRecord,
        DownloadRecord,
        FrozenModel,
        ExportReport,
        ExportRecord,
        RemoveReport,
        RemoveRecord,
        RemovedFile,
        PruneReport,
        PruneItem,
        DiskUsage,
        UsageEntry,
        CacheKey,
        LayoutReport,
        LayoutRecord,
        PushReport,
        PushRecord,
    ]
    return {cls.__name__: cls for cls in classes}


def test_every_view_names_a_record_class_and_its_fields() -> None:
    classes = _classes()
    for name, view in VIEWS.items():
        assert name in classes, f"VIEWS names {name}, which is no record class the CLI prints"
        fields = {f.name for f in dataclasses.fields(classes[name])}
        named = set(view.omit) | set(view.rename) | set(view.lift)
        assert named <= fields, (name, named - fields)


def test_plain_values() -> None:
    class Colour(enum.Enum):
        RED = "red"

    @dataclasses.dataclass
    class Inner:
        where: Path
        pairs: tuple[tuple[int, int], ...]

    @dataclasses.dataclass
    class Outer:
        inner: Inner
        status: Status
        code: ExitCode
        colour: Colour
        table: dict[str, float]
        nothing: None = None

    data = to_json(
        Outer(Inner(Path("/a/b"), ((1, 2),)), Status.VERIFIED, ExitCode.NOT_CACHED, Colour.RED, {"x": 1.5})
    )
    assert data == {
        "inner": {"where": "/a/b", "pairs": [[1, 2]]},
        "status": "verified",
        "code": 5,
        "colour": "red",
        "table": {"x": 1.5},
        "nothing": None,
    }
    assert type(json.loads(json.dumps(data))["code"]) is int
    with pytest.raises(TypeError, match="no JSON form for object"):
        to_json(object())


def test_a_model_is_one_object_with_its_cache_status(cache_dir: Path) -> None:
    entry = Cache(cache_dir).entry(Registry().get("large-v3-turbo"))
    data = to_json(entry)
    assert isinstance(data, dict)
    assert data["name"] == "large-v3-turbo" and data["aliases"] == ["turbo"]
    assert data["status"] == "missing" and data["path"] == str(cache_dir / "large-v3-turbo.pt")
    assert data["size_bytes"] is None and data["size_on_disk"] is None and data["sha256_measured"] is None
    heads = data["alignment_heads"]
    assert (
        isinstance(heads, dict)
        and heads["count"] == len(heads["pairs"]) == 6
        and heads["source"] == "official"
    )
    dims = entry.spec.dims
    assert dims is not None and data["dims"] == dims.as_dict()
    assert data["parameters"] == count_parameters(dims).as_dict()
    assert "stamp" not in data and "spec" not in data


def _checkpoint(tmp: Path) -> ModelFile:
    dims = ModelDimensions(80, 1500, 384, 6, 4, 51865, 448, 384, 6, 4)
    tensors = {"a": TensorInfo((2, 3), "float16", "a"), "b": TensorInfo((4,), "float32", "b")}
    return ModelFile(
        format="hf",
        path=tmp,
        files=(tmp / "model.safetensors",),
        size_bytes=1234,
        dims=dims,
        tensors=tensors,
        alignment_heads=((2, 1), (3, 0)),
        heads_origin="generation_config.json",
        details=(("tokenizer", "tokenizer.json"),),
    )


def test_a_checkpoint_file_shows_counts_not_tensors(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    info = api.CheckpointInfo(path=tmp_path, entry=None, checkpoint=ckpt, problems=["p"], sha256="ab")
    data = to_json(info)
    assert data == {
        "path": str(tmp_path),
        "format": "hf",
        "files": [str(tmp_path / "model.safetensors")],
        "size_bytes": 1234,
        "dims": ckpt.dims.as_dict(),
        "parameters": to_json(ParameterCounts(7_632_384, 29_552_256)),
        "tensors": 2,
        "dtypes": {"float16": 1, "float32": 1},
        "tensor_bytes": 2 * 6 + 4 * 4,
        "alignment_heads": {"count": 2, "pairs": [[2, 1], [3, 0]], "origin": "generation_config.json"},
        "details": {"tokenizer": "tokenizer.json"},
        "error": None,
        "problems": ["p"],
        "sha256": "ab",
        "matches": [],
        "readable": True,
    }
    unreadable = to_json(api.CheckpointInfo(path=tmp_path / "y.pt", entry=None, checkpoint=None, error="bad"))
    assert isinstance(unreadable, dict) and set(unreadable) == set(data)  # the same keys, null
    assert unreadable["readable"] is False and unreadable["dims"] is None and unreadable["error"] == "bad"


def test_records_keys_are_the_documented_ones(tmp_path: Path) -> None:
    p = tmp_path / "m.pt"
    verify = to_json(VerifyRecord("m", p, Status.CORRUPT, "a" * 64, "b" * 64, 10, None))
    assert verify == {
        "name": "m",
        "path": str(p),
        "status": "corrupt",
        "sha256_expected": "a" * 64,
        "sha256_actual": "b" * 64,
        "size_bytes": 10,
        "error": None,
    }
    failed = DownloadRecord(
        "m", p, None, None, DownloadStatus.FAILED, 1.5, None, "boom", ExitCode.NETWORK, 0, ("w",)
    )
    assert to_json(failed) == {
        "name": "m",
        "path": str(p),
        "sha256": None,
        "size_bytes": None,
        "status": "failed",
        "seconds": 1.5,
        "source": None,
        "error": "boom",
        "exit_code": 3,
        "resumed_from": 0,
        "warnings": ["w"],
    }
    export = to_json(
        ExportReport(tmp_path, tmp_path / "SHA256SUMS", [ExportRecord("m", "a", 5, p, "copied")])
    )
    assert export == {
        "root": str(tmp_path),
        "sums": str(tmp_path / "SHA256SUMS"),
        "models": [{"name": "m", "sha256": "a", "size_bytes": 5, "path": str(p), "method": "copied"}],
        "bytes_copied": 5,
    }
    removed = RemoveReport([RemoveRecord("m", [RemovedFile(p, 7)]), RemoveRecord("n", [])])
    assert to_json(removed) == {
        "models": [
            {
                "name": "m",
                "files": [{"path": str(p), "size_bytes": 7}],
                "status": "removed",
                "bytes_freed": 7,
            },
            {"name": "n", "files": [], "status": "absent", "bytes_freed": 0},
        ],
        "bytes_freed": 7,
    }
    prune = to_json(PruneReport(tmp_path, True, [PruneItem(p, 3, "lock", "why")], [p], []))
    assert isinstance(prune, dict)
    assert {k: prune[k] for k in ("dry_run", "bytes_freed", "in_use", "unknown")} == {
        "dry_run": True,
        "bytes_freed": 3,
        "in_use": [str(p)],
        "unknown": [],
    }
    assert prune["removed"] == [{"path": str(p), "size_bytes": 3, "kind": "lock", "reason": "why"}]
    usage = to_json(DiskUsage(tmp_path, [UsageEntry("m", "m.pt", Status.PARTIAL, 0, 4)], 2, [(p, 1)]))
    assert usage == {
        "root": str(tmp_path),
        "models": [
            {
                "name": "m",
                "filename": "m.pt",
                "status": "partial",
                "file_bytes": 0,
                "partial_bytes": 4,
                "total_bytes": 4,
            }
        ],
        "state_bytes": 2,
        "unknown": [{"path": str(p), "size_bytes": 1}],
        "total_bytes": 7,
    }
    assert to_json(CacheKey("whisper-1-x", 1, [("m", "a")])) == {
        "key": "whisper-1-x",
        "layout": 1,
        "models": [{"name": "m", "sha256": "a"}],
    }
    assert to_json([FrozenModel("m", "m.pt", "a", 5, p)]) == [
        {"name": "m", "filename": "m.pt", "sha256": "a", "size_bytes": 5, "path": str(p)}
    ]


def test_load_report_keys(tmp_path: Path) -> None:
    from whisperctl.models.loader import LoadReport, PartReport

    report = LoadReport(
        name="m",
        path=tmp_path / "m.pt",
        into="whisperctl",
        device="cpu",
        dtype="float32",
        parameters=ParameterCounts(1, 2),
        parts=(PartReport("encoder", "cpu", "float32", 1, 4),),
        alignment_heads=3,
        alignment_heads_source="registry",
        integrity="SHA-256 verified (stamp)",
        seconds={"open": 0.5, "total": 1.0},
        peak_rss_bytes=10,
        peak_gpu_bytes=None,
    )
    data = to_json(report)
    assert isinstance(data, dict)
    assert data["alignment_heads"] == {"count": 3, "source": "registry"}
    assert data["parameters"] == {"encoder": 1, "decoder": 2, "total": 3}
    assert data["parts"] == [
        {"name": "encoder", "device": "cpu", "dtype": "float32", "parameters": 1, "bytes": 4}
    ]
    assert set(data) == {
        "name",
        "path",
        "into",
        "device",
        "dtype",
        "parameters",
        "parts",
        "alignment_heads",
        "integrity",
        "seconds",
        "peak_rss_bytes",
        "peak_gpu_bytes",
        "checkpoint_dtype",
        "mapped",
        "format",
    }


def _section(title: str) -> str:
    text = README.read_text("utf-8")
    start = text.index(title)
    following = re.search(r"^#{2,3} ", text[start + len(title) :], flags=re.M)  # the next heading
    return text[start : start + len(title) + following.start()] if following else text[start:]


def _table_words(section: str) -> list[str]:
    return re.findall(r"^\| `([a-z_-]+)` \|", section, flags=re.M)


def test_readme_lists_exactly_the_status_words() -> None:
    section = _section("### Statuses")
    words = _table_words(section)
    assert words == [s.value for s in Status] + [s.value for s in DownloadStatus]


def test_readme_lists_exactly_the_exit_codes() -> None:
    section = _section("## Exit codes")
    codes = [int(c) for c in re.findall(r"^\| (\d+) \|", section, flags=re.M)]
    assert codes == [int(c) for c in ExitCode]

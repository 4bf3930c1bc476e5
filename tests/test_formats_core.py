"""The core of every format: the loader on any ModelFile, the openai writer, `info` on files and directories
without PyTorch, alignment heads from the files, and where the sparse alignment heads go on MPS."""

from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import whisperctl  # noqa: E402
from whisperctl.models import loader  # noqa: E402
from whisperctl.models.dims import ModelDimensions, count_parameters  # noqa: E402
from whisperctl.models.formats import read_model  # noqa: E402

from .helpers import Cli, write_registry  # noqa: E402
from .test_loader import SMALLEST, save_checkpoint  # noqa: E402

ENGLISH = ModelDimensions(**{**SMALLEST.as_dict(), "n_vocab": 51864})


@pytest.fixture(scope="module")
def pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("pt") / "small.pt", SMALLEST, seed=7)


@pytest.fixture(scope="module")
def converted(pt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same model in every format, written by whisperctl convert."""
    root = tmp_path_factory.mktemp("formats")
    outs = {"openai": root / "o.pt", "hf": root / "hf", "ct2": root / "ct2", "ggml": root / "g.bin"}
    for fmt, out in outs.items():
        whisperctl.convert(pt, out, fmt)
    return outs


def _state(path: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = torch.load(path, weights_only=True)["model_state_dict"]
    return sd


def test_pt_to_openai_is_bit_exact_and_loads_in_openai_whisper(pt: Path, converted: dict[str, Path]) -> None:
    out = converted["openai"]
    before, after = _state(pt), _state(out)
    assert list(after) == list(before)
    assert all(after[k].dtype == torch.float16 and torch.equal(after[k], v) for k, v in before.items())
    assert torch.load(out, weights_only=True)["dims"] == SMALLEST.as_dict()
    whisper = pytest.importorskip("whisper")
    model = whisper.load_model(str(out), device="cpu")
    assert model.dims.n_text_layer == SMALLEST.n_text_layer


def test_openai_writer_fills_a_valid_archive_tensor_by_tensor(pt: Path, tmp_path: Path) -> None:
    """The archive is written with empty storages, then filled: every record's CRC-32 must be the real
    one (zipfile checks them), and an fp32 output must hold exactly the fp16 values, widened."""
    import zipfile

    out = tmp_path / "wide.pt"
    whisperctl.convert(pt, out, "openai", dtype="fp32")
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
    before, after = _state(pt), _state(out)
    assert all(
        after[k].dtype == torch.float32 and torch.equal(after[k], v.float()) for k, v in before.items()
    )
    same = tmp_path / "same.pt"
    whisperctl.convert(pt, same, "openai")
    with zipfile.ZipFile(same) as zf:
        assert zf.testzip() is None


@pytest.mark.parametrize("fmt", ["hf", "ct2", "ggml"])
def test_every_format_back_to_openai_is_the_same_file(
    fmt: str, converted: dict[str, Path], tmp_path: Path
) -> None:
    back = tmp_path / "back.pt"
    whisperctl.convert(converted[fmt], back, "openai")
    assert back.read_bytes() == converted["openai"].read_bytes()


@pytest.mark.parametrize("fmt", ["hf", "ct2"])
def test_directory_outputs_carry_checkable_sums(fmt: str, converted: dict[str, Path]) -> None:
    out = converted[fmt]
    sums = (out / "SHA256SUMS").read_text("utf-8").splitlines()
    listed = {line.split("  ", 1)[1] for line in sums}
    assert listed == {p.name for p in out.iterdir()} - {"SHA256SUMS"}
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out, check=True)


@pytest.mark.parametrize("into", ["whisperctl", "whisper"])
def test_every_format_loads_to_the_same_logits(converted: dict[str, Path], into: str) -> None:
    if into == "whisper":
        pytest.importorskip("whisper")
    mel = torch.randn(
        1, SMALLEST.n_mels, 2 * SMALLEST.n_audio_ctx, generator=torch.Generator().manual_seed(0)
    )
    tokens = torch.tensor([[50258, 50259, 50359, 50363]])
    outputs = {}
    for fmt, path in converted.items():
        loaded = whisperctl.load(path, device="cpu", into=into)  # type: ignore[arg-type]
        assert loaded.report.format == fmt
        with torch.no_grad():
            outputs[fmt] = loaded.model(mel, tokens)
    for fmt, logits in outputs.items():
        assert torch.equal(logits, outputs["openai"]), fmt


def test_alignment_heads_from_the_files_are_reported_by_origin(converted: dict[str, Path]) -> None:
    sources = {}
    for fmt, path in converted.items():
        report = whisperctl.load(path, device="cpu").report
        sources[fmt] = (report.alignment_heads_source, report.alignment_heads)
    assert sources["hf"][0] == "generation_config.json"
    assert sources["ct2"][0] == "config.json"
    assert sources["openai"] == ("default", 8) and sources["ggml"] == ("default", 8)
    # The writers kept the default heads the .pt had (the last half of the decoder layers).
    assert read_model(converted["hf"]).alignment_heads == read_model(converted["ct2"]).alignment_heads
    assert sources["hf"][1] == sources["ct2"][1] == 8


def test_the_releaser_covers_every_file_of_a_model(tmp_path: Path) -> None:
    paths = []
    maps = []
    for i in range(3):
        path = tmp_path / f"shard-{i}.bin"
        path.write_bytes(bytes([i]) * (4 * mmap.PAGESIZE))
        paths.append(path)
        with open(path, "rb") as f:
            maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY))
    release = loader._Releaser(tuple(paths))
    if not sys.platform.startswith("linux"):
        assert release.ranges == []
        return
    assert len(release.ranges) >= 3
    for mm in maps:
        view = torch.frombuffer(mm, dtype=torch.uint8)
        start = view.data_ptr()
        assert any(lo <= start < hi for lo, hi in release.ranges)
        release(view)  # dropped pages come back from the file, unchanged
        assert int(view[0]) == mm[0]
    for mm in maps:
        mm.close()


def test_mps_keeps_the_sparse_alignment_heads_on_the_cpu(converted: dict[str, Path]) -> None:
    """MPS holds no sparse tensors: the heads stay on the CPU there (tested here with the device type
    alone; no Mac was used), and go with the model on every other device."""
    whisper = pytest.importorskip("whisper")
    assert loader.heads_device(torch.device("mps")) == torch.device("cpu")
    assert loader.heads_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert loader.heads_device(torch.device("cpu")) == torch.device("cpu")
    model = whisperctl.load(converted["openai"], device="cpu", into="whisper").model
    assert isinstance(model, whisper.model.Whisper)
    count = loader._set_heads(model, "whisper", ((2, 1), (1, 3)), torch.device("mps"))
    assert count == 2 and model.alignment_heads.is_sparse
    assert model.alignment_heads.device == torch.device("cpu")
    # What openai-whisper's timing.find_alignment reads: the (layer, head) pairs, through .indices().
    assert sorted(map(tuple, model.alignment_heads.indices().T.tolist())) == [(1, 3), (2, 1)]


_NO_TORCH = textwrap.dedent(
    """
    import sys
    from whisperctl.cli.app import app
    try:
        app(sys.argv[1:], prog_name="whisperctl")
    except SystemExit as exc:
        code = exc.code
    print("TORCH" if "torch" in sys.modules else "NO TORCH", code, file=sys.stderr)
    """
)


def _info_without_torch(*args: str) -> tuple[dict[str, object], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True, env=env, timeout=120
    )
    return (json.loads(r.stdout) if "--json" in args else {"text": r.stdout}), r.stderr


@pytest.mark.parametrize("fmt", ["openai", "hf", "ct2", "ggml"])
def test_info_reads_every_format_without_torch(fmt: str, converted: dict[str, Path]) -> None:
    data, err = _info_without_torch("info", str(converted[fmt]), "--json")
    assert err.strip().endswith("NO TORCH 0"), err
    assert data["format"] == fmt and data["dims"] == SMALLEST.as_dict()
    assert data["parameters"] == count_parameters(SMALLEST).as_dict() | {
        "total": count_parameters(SMALLEST).total
    }
    assert data["tensors"] == 113 and data["problems"] == [] and data["readable"] is True
    text, err = _info_without_torch("info", str(converted[fmt]))
    assert "NO TORCH 0" in err
    assert f"format           {fmt}" in str(text["text"])


def test_info_of_a_cached_name_takes_parameters_and_languages_from_the_file(
    tmp_path: Path, cache_dir: Path, cli: Cli
) -> None:
    path = save_checkpoint(cache_dir / "mini-en.pt", ENGLISH, seed=2)
    digest = __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    registry = write_registry(
        tmp_path / "models.toml",
        f'[models.mini-en]\nurl = "http://127.0.0.1:9/mini-en.pt"\nsha256 = "{digest}"\n',
    )
    r = cli("--cache-dir", str(cache_dir), "--registry", str(registry), "info", "mini-en")
    assert r.exit_code == 0, r.stderr
    assert "unknown until the checkpoint is read" not in r.stdout
    total = count_parameters(ENGLISH).total
    assert f"parameters       {total:,} total" in r.stdout and "(from the file)" in r.stdout
    assert "languages        English (n_vocab 51864 in the file)" in r.stdout


def test_in_memory_and_verify_on_a_directory(converted: dict[str, Path], cli: Cli) -> None:
    loaded = whisperctl.load(converted["hf"], device="cpu", dtype="fp16", in_memory=True)
    assert loaded.report.format == "hf" and not loaded.report.mapped
    mapped = whisperctl.load(converted["hf"], device="cpu", dtype="fp16")
    assert mapped.report.mapped
    for a, b in zip(loaded.model.parameters(), mapped.model.parameters(), strict=True):
        assert torch.equal(a, b)
    r = cli("info", str(converted["ct2"]), "--verify")
    assert r.exit_code == 2 and "sha256sum -c SHA256SUMS" in r.stderr
    r = cli("load", str(converted["ct2"]), "--sha256", "0" * 64)
    assert r.exit_code == 2 and "is a directory" in r.stderr

"""The numpy data path of ``convert``: ``.pt`` spans, :func:`open_arrays`, no PyTorch for hf, ct2, ggml."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import whisperctl  # noqa: E402
from whisperctl.errors import IntegrityError  # noqa: E402
from whisperctl.models.dims import state_dict_shapes  # noqa: E402
from whisperctl.models.formats import ggml, openai, read_model  # noqa: E402
from whisperctl.models.formats.arrays import bf16_to_fp32, open_arrays  # noqa: E402
from whisperctl.models.formats.weights import open_weights  # noqa: E402

from .helpers import resident_bytes  # noqa: E402
from .test_loader import SMALLEST, make_state_dict, save_checkpoint  # noqa: E402

SHARED = ("encoder.blocks.0.attn.query.weight", "encoder.blocks.0.attn.key.weight")
STRIDED = "encoder.blocks.1.mlp.0.weight"


def _views_checkpoint(path: Path, dtype: Any) -> Path:
    """A checkpoint whose state dict holds what torch.save keeps as views: two tensors sharing one storage
    (the second at an offset) and a transposed, non-contiguous one."""
    sd = make_state_dict(SMALLEST, seed=3, dtype=dtype)
    n = SMALLEST.n_audio_state
    both = torch.randn(2 * n * n, generator=torch.Generator().manual_seed(4)).to(dtype)
    sd[SHARED[0]], sd[SHARED[1]] = both[: n * n].view(n, n), both[n * n :].view(n, n)
    sd[STRIDED] = torch.randn(n, 4 * n).to(dtype).t()
    torch.save({"dims": SMALLEST.as_dict(), "model_state_dict": sd}, path)
    return path


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_pt_spans_hold_the_bytes_torch_load_gives(dtype: Any, tmp_path: Path) -> None:
    path = _views_checkpoint(tmp_path / "views.pt", dtype)
    model = openai.read(path)
    spans = {k: t.span for k, t in model.tensors.items()}
    assert spans[STRIDED] is None  # only PyTorch reads a strided view
    assert all(s is not None for k, s in spans.items() if k != STRIDED)
    first, second = spans[SHARED[0]], spans[SHARED[1]]
    assert first is not None and second is not None
    assert second.offset - first.offset == first.nbytes  # one storage, the second at an offset
    expected = torch.load(path, weights_only=True)["model_state_dict"]
    arrays = open_arrays(model)
    for name, tensor in expected.items():
        array = arrays[name]
        assert array.dtype == tensor.numpy().dtype and array.shape == tuple(tensor.shape), name
        assert np.ascontiguousarray(array).tobytes() == tensor.contiguous().numpy().tobytes(), name
    # The loader's tensors are the same memory as the arrays: torch.from_numpy, no copy.
    weights = open_weights(model)
    name = "decoder.token_embedding.weight"
    assert weights[name].data_ptr() == weights.arrays[name].__array_interface__["data"][0]


def _rewrite(src: Path, dst: Path, method: int) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=method)
    return dst


def test_a_pt_whose_entries_are_compressed_is_refused_in_one_line(tmp_path: Path) -> None:
    """torch.save never compresses; a .pt that does is refused (exit 4) before anything is read, for any
    output (a compressed entry could be a zip bomb)."""
    source = save_checkpoint(tmp_path / "plain.pt", SMALLEST, seed=6)
    deflated = _rewrite(source, tmp_path / "deflated.pt", zipfile.ZIP_DEFLATED)
    for to in ("hf", "ggml", "openai"):
        r = _child(["convert", str(deflated), str(tmp_path / f"out-{to}"), "--to", to])
        lines = r.stderr.strip().splitlines()
        # The one line, then the child's (the openai writer imports PyTorch before the source is read).
        assert len(lines) == 2 and lines[1] == ("TORCH 4" if to == "openai" else "NO TORCH 4"), r.stderr
        assert "is compressed" in lines[0] and str(deflated) in lines[0], r.stderr
        assert not (tmp_path / f"out-{to}").exists()
    # Stored again by zipfile (local headers unlike torch.save's, no alignment padding): spans still right.
    stored = _rewrite(source, tmp_path / "stored.pt", zipfile.ZIP_STORED)
    expected = torch.load(source, weights_only=True)["model_state_dict"]
    arrays = open_arrays(openai.read(stored))
    assert all(arrays[k].tobytes() == v.numpy().tobytes() for k, v in expected.items())


def _last_local_header(path: Path) -> int:
    """Where the last storage entry's local header starts (only the central directory follows it)."""
    with zipfile.ZipFile(path) as zf:
        return max(i.header_offset for i in zf.infolist() if "/data/" in i.filename)


@pytest.mark.parametrize("damage", ["signature", "name", "extra past the end"])
def test_a_damaged_local_header_is_one_line(damage: str, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "model.pt", SMALLEST, seed=7)
    data = bytearray(path.read_bytes())
    start = _last_local_header(path)
    if damage == "signature":
        data[start : start + 4] = b"PK\x00\x00"
    elif damage == "name":
        data[start + 30] ^= 0x20  # the entry's name, as its local header spells it
    else:
        data[start + 28 : start + 30] = struct.pack("<H", 0xFFFF)  # its data said to start past the end
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as caught:
        read_model(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    expected = {
        "signature": "has no local header where its directory says",
        "name": "its local header disagrees with its directory",
        "extra past the end": "claims more bytes than the file holds",
    }
    assert expected[damage] in message, message
    r = _child(["convert", str(path), str(tmp_path / "out"), "--to", "hf"])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1] == "NO TORCH 4" and expected[damage] in lines[0], r.stderr


_CHILD = textwrap.dedent(
    """
    import sys
    if sys.argv[1] == "block":
        sys.modules["torch"] = None  # as if PyTorch were not installed: importing it raises ImportError
    from whisperctl.cli.app import app
    code = 0
    try:
        app(sys.argv[2:], prog_name="whisperctl")
    except SystemExit as exc:
        code = exc.code
    print("TORCH" if sys.modules.get("torch") is not None else "NO TORCH", code, file=sys.stderr)
    """
)


def _child(args: list[str], *, block: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", _CHILD, "block" if block else "allow", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same model as a .pt and as an HF directory (converted here, in this process)."""
    folder = tmp_path_factory.mktemp("sources")
    pt = save_checkpoint(folder / "model.pt", SMALLEST, seed=8)
    whisperctl.convert(pt, folder / "hf", "hf")
    return {"pt": pt, "hf": folder / "hf"}


@pytest.mark.parametrize("source", ["pt", "hf"])
@pytest.mark.parametrize("to", ["hf", "ct2", "ggml"])
def test_convert_never_imports_torch(source: str, to: str, sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _child(["convert", str(sources[source]), str(out), "--to", to, "--json"])
    assert r.stderr.strip().endswith("NO TORCH 0"), r.stderr
    assert json.loads(r.stdout)["format"] == to
    converted, original = read_model(out), read_model(sources["pt"])
    theirs, ours = open_arrays(converted), open_arrays(original)
    for name in state_dict_shapes(SMALLEST):
        assert np.array_equal(theirs[name], ours[name]), name  # fp16 to fp16: bit-exact


def test_convert_to_ct2_works_without_torch(sources: dict[str, Path], tmp_path: Path) -> None:
    """Without PyTorch installed at all (the writer imports neither it nor ctranslate2)."""
    out = tmp_path / "ct2"
    r = _child(["convert", str(sources["pt"]), str(out), "--to", "ct2"], block=True)
    assert r.stderr.strip().endswith("NO TORCH 0"), r.stderr
    assert read_model(out).dims == SMALLEST


def test_without_torch_only_openai_output_is_refused(sources: dict[str, Path], tmp_path: Path) -> None:
    r = _child(["convert", str(sources["pt"]), str(tmp_path / "out.bin"), "--to", "ggml"], block=True)
    assert r.stderr.strip().endswith("NO TORCH 0"), r.stderr
    r = _child(["convert", str(sources["hf"]), str(tmp_path / "out.pt"), "--to", "openai"], block=True)
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == "NO TORCH 2" and len(lines) == 2, r.stderr
    assert "converting to openai needs PyTorch" in lines[0] and "pip install" in lines[0]


def test_bf16_safetensors_to_hf_fp32_is_exact(sources: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    bf16 = tmp_path / "bf16"
    bf16.mkdir()
    for item in sources["hf"].iterdir():
        if item.name not in ("model.safetensors", "SHA256SUMS"):
            (bf16 / item.name).write_bytes(item.read_bytes())
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(sources["hf"] / "model.safetensors").items()}
    save_file(tensors, bf16 / "model.safetensors", metadata={"format": "pt"})
    model = read_model(bf16)
    assert model.dtype == "bfloat16"
    # The loader's tensors: bfloat16 views of the file, equal to what was saved.
    weights = open_weights(model)
    name = "decoder.token_embedding.weight"
    assert weights[name].dtype == torch.bfloat16
    assert torch.equal(weights[name], tensors["model.decoder.embed_tokens.weight"])
    out = tmp_path / "fp32"
    whisperctl.convert(bf16, out, "hf", dtype="fp32")
    written = load_file(out / "model.safetensors")
    assert all(written[k].dtype == torch.float32 for k in written)
    assert all(torch.equal(written[k], v.float()) for k, v in tensors.items() if k in written)


def test_bf16_to_fp32_is_exact_for_every_value() -> None:
    bits = np.arange(1 << 16, dtype=np.uint16)
    ours = bf16_to_fp32(bits)
    theirs = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    assert ours.dtype == np.float32
    assert ours.view(np.uint32).tobytes() == theirs.view(np.uint32).tobytes()  # NaNs and zeros included


@pytest.mark.skipif(sys.platform != "linux", reason="pages are released on Linux only")
def test_numpy_arrays_release_their_pages_as_they_are_written(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    from whisperctl.models.formats import ggml_write

    model = openai.read(sources["pt"])
    arrays = open_arrays(model)
    sum(float(a.astype(np.float32).sum()) for a in arrays.values())  # every page read once
    assert resident_bytes(sources["pt"]) > 0.9 * model.tensor_bytes
    ggml_write.write(model, arrays, tmp_path / "out.bin", dtype="float16")
    assert resident_bytes(sources["pt"]) < 0.25 * model.tensor_bytes
    expected = torch.load(sources["pt"], weights_only=True)["model_state_dict"]
    assert all(arrays[k].tobytes() == v.numpy().tobytes() for k, v in expected.items())
    assert ggml.read(tmp_path / "out.bin").dims == SMALLEST

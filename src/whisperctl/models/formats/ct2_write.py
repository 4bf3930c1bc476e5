"""Write a CTranslate2 Whisper directory that ``ctranslate2.models.Whisper`` and faster-whisper load offline.

``model.bin`` is written here, variable by variable, byte for byte as CTranslate2's model-spec API
(``WhisperSpec`` revision 3, optimized with ``quantization=dtype``) saves the same model: the layout that
:mod:`.ct2` reads, the variables in the order of their sorted names, every float variable in the target
dtype, the scalars CTranslate2 4 stores (head counts, activation, flags) as it types them. Fused attention
projections are written as their parts one after another (openai-whisper's key projection has no bias: its
place in the fused bias is written as zeros), so no fused array is ever built. A variable whose value equals
a variable earlier in that order is stored, as CTranslate2 stores it, as an alias of the earliest such one
(the output projection always aliases the token embedding, to which it is tied). Each part is read from the
mapped input in chunks of at most :data:`CHUNK` elements, converted, written, and its pages of the input
released, so the process holds about one chunk beyond what is mapped, whatever the model's size.

``config.json`` holds what ``WhisperSpec``'s config holds (alignment heads, language ids, suppressed tokens);
the vocabulary, ``tokenizer.json`` and ``preprocessor_config.json`` come from :mod:`.tokenizer`.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from whisperctl.errors import IntegrityError, UsageError
from whisperctl.models.dims import ModelDimensions
from whisperctl.models.formats.arrays import PageReleaser
from whisperctl.models.formats.base import ModelFile
from whisperctl.models.formats.ct2 import CT2_DTYPES, VERSION
from whisperctl.models.formats.output import OutputFile
from whisperctl.models.formats.tokenizer import (
    Vocabulary,
    preprocessor_config,
    require_tokenizers,
    tokenizer_json,
    write_json,
)

__all__ = ["CHUNK", "SPEC", "write"]

SPEC, REVISION = "WhisperSpec", 3
CHUNK = 8 << 20  # elements converted at a time (32 MiB of float32)
_SAMPLE = 32  # elements from each end of a part that tell two values apart before they are compared
_FLOATS = ("float16", "float32")

# A part of a variable: an openai-whisper tensor name, or a count of zeros (the fused key bias).
Part = str | int


@dataclass(frozen=True)
class Variable:
    """One variable of ``model.bin``: its parts in order (float), or its raw little-endian bytes (scalar)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    parts: tuple[Part, ...] = ()
    raw: bytes = b""


def _scalars(d: ModelDimensions) -> list[Variable]:
    """The scalar attributes WhisperSpec stores: ``(name, dtype, value)`` as CTranslate2 4 types them."""
    values = [
        ("decoder/activation", "int8", 3),  # GELU
        ("decoder/alibi", "int8", 0),
        ("decoder/alibi_use_positive_positions", "int8", 0),
        ("decoder/alignment_heads", "int16", 1),
        ("decoder/alignment_layer", "int16", -1),
        ("decoder/num_heads", "int16", d.n_text_head),
        ("decoder/pre_norm", "int8", 1),
        ("decoder/scale_alibi", "int8", 0),
        ("decoder/scale_embeddings", "int8", 0),
        ("decoder/start_from_zero_embedding", "int8", 0),
        ("encoder/num_heads", "int16", d.n_audio_head),
    ]
    size = {"int8": 1, "int16": 2}
    return [
        Variable(name, (), dtype, raw=value.to_bytes(size[dtype], "little", signed=True))
        for name, dtype, value in values
    ]


def layout(d: ModelDimensions, dtype: str) -> list[Variable]:
    """Every variable of the model's ``model.bin``, sorted by name (the order CTranslate2 writes them in)."""
    out: list[Variable] = []

    def add(name: str, shape: tuple[int, ...], *parts: Part) -> None:
        out.append(Variable(name, shape, dtype, parts))

    def linear(scope: str, source: str, rows: int, cols: tuple[int, ...], bias: bool = True) -> None:
        add(f"{scope}/weight", (rows, *cols), f"{source}.weight")
        if bias:
            add(f"{scope}/bias", (rows,), f"{source}.bias")

    def norm(scope: str, source: str, n: int) -> None:
        add(f"{scope}/gamma", (n,), f"{source}.weight")
        add(f"{scope}/beta", (n,), f"{source}.bias")

    def fused(scope: str, source: str, n: int, projs: tuple[str, ...]) -> None:
        add(f"{scope}/weight", (n * len(projs), n), *(f"{source}.{p}.weight" for p in projs))
        add(f"{scope}/bias", (n * len(projs),), *(n if p == "key" else f"{source}.{p}.bias" for p in projs))

    def layer(side: str, i: int, n: int) -> None:
        scope, source = f"{side}/layer_{i}", f"{side}.blocks.{i}"
        fused(f"{scope}/self_attention/linear_0", f"{source}.attn", n, ("query", "key", "value"))
        linear(f"{scope}/self_attention/linear_1", f"{source}.attn.out", n, (n,))
        norm(f"{scope}/self_attention/layer_norm", f"{source}.attn_ln", n)
        if side == "decoder":
            linear(f"{scope}/attention/linear_0", f"{source}.cross_attn.query", n, (n,))
            fused(f"{scope}/attention/linear_1", f"{source}.cross_attn", n, ("key", "value"))
            linear(f"{scope}/attention/linear_2", f"{source}.cross_attn.out", n, (n,))
            norm(f"{scope}/attention/layer_norm", f"{source}.cross_attn_ln", n)
        linear(f"{scope}/ffn/linear_0", f"{source}.mlp.0", 4 * n, (n,))
        linear(f"{scope}/ffn/linear_1", f"{source}.mlp.2", n, (4 * n,))
        norm(f"{scope}/ffn/layer_norm", f"{source}.mlp_ln", n)

    a, t = d.n_audio_state, d.n_text_state
    linear("encoder/conv1", "encoder.conv1", a, (d.n_mels, 3))
    linear("encoder/conv2", "encoder.conv2", a, (a, 3))
    add("encoder/position_encodings/encodings", (d.n_audio_ctx, a), "encoder.positional_embedding")
    norm("encoder/layer_norm", "encoder.ln_post", a)
    add("decoder/embeddings/weight", (d.n_vocab, t), "decoder.token_embedding.weight")
    add("decoder/projection/weight", (d.n_vocab, t), "decoder.token_embedding.weight")
    add("decoder/position_encodings/encodings", (d.n_text_ctx, t), "decoder.positional_embedding")
    norm("decoder/layer_norm", "decoder.ln", t)
    for i in range(d.n_audio_layer):
        layer("encoder", i, a)
    for i in range(d.n_text_layer):
        layer("decoder", i, t)
    return sorted([*out, *_scalars(d)], key=lambda v: v.name)


class _Source:
    """The model's tensors as numpy arrays in the target dtype, read in chunks and released once written."""

    def __init__(self, model: ModelFile, weights: Mapping[str, Any], dtype: str) -> None:
        self.model, self.weights, self.dtype = model, weights, np.dtype(dtype)
        self.release = PageReleaser(model.files)

    def _flat(self, value: Any) -> Any:
        """A tensor of the mapping as a flat numpy array (a view of the mapped input where it can be one)."""
        try:
            array = np.asarray(value)
        except TypeError:  # a bfloat16 tensor, which numpy has no dtype for: widened by its own float()
            array = np.asarray(value.float())
        return np.ascontiguousarray(array).reshape(-1)

    def chunks(self, var: Variable) -> Iterator[Any]:
        """``var``'s elements in order, converted, at most :data:`CHUNK` at a time."""
        for part in var.parts:
            if isinstance(part, int):
                yield np.zeros(part, self.dtype)
                continue
            value = self.weights[part]
            flat, mapped = self._flat(value), value.reshape(-1)  # views, for the contiguous tensors read
            for start in range(0, flat.size, CHUNK):
                yield flat[start : start + CHUNK].astype(self.dtype, copy=False)
                # The chunk's pages of the input go as soon as it is written, not with the whole tensor.
                self.release(mapped[start : start + CHUNK])
            del flat, mapped

    def ends(self, var: Variable) -> Any:
        """The first and last :data:`_SAMPLE` elements of ``var``, converted (what tells values apart)."""
        size = prod(var.shape)
        each = size // len(var.parts)

        def take(part: Part, first: bool, k: int) -> Any:
            if isinstance(part, int):
                return np.zeros(k, self.dtype)
            value = self.weights[part]
            flat = self._flat(value)
            taken = (flat[:k] if first else flat[flat.size - k :]).astype(self.dtype)
            del flat
            self.release(value)
            return taken

        pieces: list[Any] = []
        for first, parts in ((True, var.parts), (False, var.parts[::-1])):
            need = min(_SAMPLE, size)
            for part in parts:
                k = min(need, each)
                pieces.append(take(part, first, k))
                need -= k
                if not need:
                    break
        return np.concatenate(pieces)

    def same(self, a: Variable, b: Variable) -> bool:
        """Whether two variables of one shape hold equal values (as ``==`` says: -0 equals 0, NaN nothing)."""
        left, right = self.chunks(a), self.chunks(b)
        x: Any = np.zeros(0, self.dtype)
        y: Any = x
        while True:
            if not x.size:
                x = next(left, None)
            if not y.size:
                y = next(right, None)
            if x is None or y is None:
                return x is None and y is None
            n = min(x.size, y.size)
            if not np.array_equal(x[:n], y[:n]):
                return False
            x, y = x[n:], y[n:]


def aliases(variables: list[Variable], source: _Source) -> dict[str, str]:
    """``{alias: target}``: each variable whose value equals that of a variable before it (in name order),
    and the earliest such one, as CTranslate2's ``_alias_variables`` finds them."""
    found: dict[str, str] = {}
    seen: dict[tuple[Any, ...], list[Variable]] = {}
    by_parts: dict[tuple[Part, ...], str] = {}
    for var in variables:
        if not var.shape:
            continue  # scalars are never aliased
        if var.parts in by_parts:  # the same tensors (the tied projection): the same value, NaN or not
            target = by_parts[var.parts]
            found[var.name] = found.get(target, target)
            continue
        by_parts[var.parts] = var.name
        ends = source.ends(var)
        if np.isnan(ends).any():
            continue  # equal to nothing, as ``==`` says
        key = (var.shape, var.dtype, (ends + 0).tobytes())  # + 0 makes -0 the 0 that == takes it for
        candidates = seen.setdefault(key, [])
        match = next((c for c in candidates if source.same(c, var)), None)
        if match is None:
            candidates.append(var)
        else:
            found[var.name] = match.name
    return found


def _string(f: BinaryIO, text: str) -> None:
    data = text.encode("utf-8") + b"\x00"
    f.write(struct.pack("<H", len(data)))
    f.write(data)


def write_model_bin(f: BinaryIO, variables: list[Variable], alias: dict[str, str], source: _Source) -> None:
    """``model.bin``: the header, every variable not aliased (streamed from ``source``), then the aliases."""
    stored = [v for v in variables if v.name not in alias]
    f.write(struct.pack("<I", VERSION))
    _string(f, SPEC)
    f.write(struct.pack("<II", REVISION, len(stored)))
    for var in stored:
        _string(f, var.name)
        f.write(
            struct.pack(
                f"<B{len(var.shape)}IBI",
                len(var.shape),
                *var.shape,
                CT2_DTYPES.index(var.dtype),
                prod(var.shape) * np.dtype(var.dtype).itemsize,
            )
        )
        if var.raw:
            f.write(var.raw)
            continue
        for chunk in source.chunks(var):
            f.write(memoryview(chunk).cast("B"))
    f.write(struct.pack("<I", len(alias)))
    for name in sorted(alias):
        _string(f, name)
        _string(f, alias[name])


def config(model: ModelFile, vocab: Vocabulary) -> dict[str, Any]:
    """What ``WhisperSpec``'s config holds, as its ``config.json`` holds it."""
    d = model.dims
    heads = model.alignment_heads
    if heads is None:  # openai-whisper's default: every head of the last half of the decoder layers
        heads = tuple(
            (layer, h) for layer in range(d.n_text_layer // 2, d.n_text_layer) for h in range(d.n_text_head)
        )
    return {
        "alignment_heads": [list(p) for p in heads],
        "lang_ids": sorted(vocab.special.language_ids.values()),
        "suppress_ids": vocab.suppress_tokens,
        "suppress_ids_begin": [vocab.encode_piece(" ")[0], vocab.special.eot],
    }


def write(model: ModelFile, weights: Mapping[str, Any], out: Path, *, dtype: str) -> list[Path]:
    """``model.bin``, ``config.json``, the vocabulary, ``tokenizer.json`` and ``preprocessor_config.json``.

    Raises :class:`UsageError` for a dtype other than float16 and float32, :class:`IntegrityError` when a
    tensor is missing, does not hold floats or disagrees with the dims.
    """
    if dtype not in _FLOATS:
        raise UsageError(
            f"ct2 files are written in float16 or float32, not {dtype}; use --dtype fp16 or fp32"
        )
    if sys.byteorder != "little":
        raise UsageError(
            "writing ct2 needs a little-endian machine (CTranslate2's model.bin is little-endian)"
        )
    variables = layout(model.dims, dtype)
    for var in variables:
        for part in var.parts:
            if isinstance(part, str):
                _check(model, part, var)
    vocab = Vocabulary(model.dims.n_vocab, "converting to ct2")
    require_tokenizers("ct2")  # known before the weights are read

    def tokenizer_files() -> list[Path]:
        return [
            tokenizer_json(vocab, out, "ct2"),
            write_json(out / "vocabulary.json", vocab.tokens),
            write_json(out / "config.json", config(model, vocab)),
            write_json(out / "preprocessor_config.json", preprocessor_config(model.dims.n_mels)),
        ]

    source = _Source(model, weights, dtype)
    alias = aliases(variables, source)
    size = sum(prod(v.shape) * np.dtype(v.dtype).itemsize for v in variables if v.name not in alias)
    with OutputFile(out / "model.bin", size_hint=size) as f:  # hashed as written; digest to SHA256SUMS
        write_model_bin(f, variables, alias, source)
        written = f.finish_while(tokenizer_files)
    return [out / "model.bin", *written]


def _check(model: ModelFile, name: str, var: Variable) -> None:
    info = model.tensors.get(name)
    expected = (var.shape[0] // len(var.parts), *var.shape[1:])
    if info is None or tuple(info.shape) != expected:
        got = "missing" if info is None else f"of shape {list(info.shape)}"
        raise IntegrityError(f"{model.path}: tensor {name} is {got}, the dims need {list(expected)}")
    if info.dtype not in ("float16", "float32", "bfloat16"):
        raise IntegrityError(
            f"{model.path}: tensor {name} holds {info.dtype}, not floats; it cannot be written"
        )

"""Write the ggml file whisper.cpp loads, laid out as its own ``models/convert-pt-to-ggml.py`` lays it out.

The header holds the hparams in whisper.cpp's order and ``ftype`` (1 for float16, 0 for float32); the mel
filters are openai-whisper's own (``mel_filters.npz``: ``mel_80``, or ``mel_128`` for large-v3 and turbo);
the vocabulary is the model's tiktoken file, every ordinary token's bytes in rank order (whisper.cpp names
the special tokens itself). Tensors follow in openai-whisper's state-dict order, one at a time from the
mapped source: in a float16 file the 1-D tensors, the conv biases and both positional embeddings stay
float32, as whisper.cpp requires. numpy casts and writes them (no PyTorch).
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Mapping
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from whisperctl.errors import IntegrityError, UsageError
from whisperctl.models.dims import state_dict_shapes
from whisperctl.models.formats import assets
from whisperctl.models.formats.arrays import PageReleaser, as_dtype
from whisperctl.models.formats.base import ModelFile
from whisperctl.models.formats.ggml import HPARAMS, MAGIC, stored_dtype, stored_shape
from whisperctl.models.formats.output import OutputFile

__all__ = ["write"]

_FTYPES = {"float32": 0, "float16": 1}
_TTYPES = {"float32": 0, "float16": 1}
_PURPOSE = "converting to ggml"


def write(model: ModelFile, weights: Mapping[str, Any], out: Path, *, dtype: str) -> list[Path]:
    """Write ``model`` (its dims, and ``weights`` by openai-whisper name) to the new file ``out``.

    Raises :class:`UsageError` for a dtype other than float16 and float32, for mel filters openai-whisper
    does not ship (``n_mels`` other than 80 and 128) or when openai-whisper is not installed;
    :class:`IntegrityError` when a tensor is missing or its shape disagrees with the dims.
    """
    if dtype not in _FTYPES:
        raise UsageError(f"ggml files hold float16 or float32 tensors, not {dtype}; use --dtype fp16 or fp32")
    if sys.byteorder != "little":
        raise UsageError("writing ggml needs a little-endian machine (whisper.cpp's files are little-endian)")
    dims = model.dims
    expected = state_dict_shapes(dims)
    for name, shape in expected.items():
        tensor = weights.get(name)
        if tensor is None or tuple(np.shape(tensor)) != shape:
            got = "missing" if tensor is None else f"of shape {list(np.shape(tensor))}"
            raise IntegrityError(f"{model.path}: tensor {name} is {got}, the dims need {list(shape)}")
    filters = _mel_filters(dims.n_mels)
    vocabulary = _vocabulary(dims.n_vocab)
    ftype = _FTYPES[dtype]
    release = PageReleaser(model.files)
    size = sum(
        prod(shape) * np.dtype(stored_dtype(name, len(shape), ftype)).itemsize
        for name, shape in expected.items()
    )
    with OutputFile(out, size_hint=size) as f:  # hashed as written; the digest goes to the report
        f.write(struct.pack("<I", MAGIC))
        f.write(struct.pack(f"<{len(HPARAMS) + 1}i", *(getattr(dims, k) for k in HPARAMS), ftype))
        f.write(struct.pack("<2i", *filters.shape))
        f.write(filters.tobytes())
        f.write(vocabulary)
        for name, shape in expected.items():
            source = weights[name]
            _write_tensor(f, name, source, stored_dtype(name, len(shape), ftype))
            release(source)
            del source
    return [out]


def _mel_filters(n_mels: int) -> Any:
    """openai-whisper's mel filterbank for ``n_mels`` as a float32 ``(n_mels, n_fft // 2 + 1)`` array."""
    path = assets.assets_dir(_PURPOSE) / "mel_filters.npz"
    with np.load(path) as npz:
        key = f"mel_{n_mels}"
        if key not in npz.files:
            shipped = ", ".join(sorted((k.removeprefix("mel_") for k in npz.files), key=int))
            raise UsageError(
                f"{_PURPOSE} needs mel filters for n_mels={n_mels}, and openai-whisper ships them for "
                f"{shipped} only; whisper.cpp cannot run this model"
            )
        return np.ascontiguousarray(npz[key], dtype="<f4")


def _vocabulary(n_vocab: int) -> bytes:
    """The token count, then each token's length and bytes in rank order (what whisper.cpp reads)."""
    ranks = assets.tiktoken_ranks(n_vocab, _PURPOSE)
    tokens = sorted(ranks, key=ranks.__getitem__)
    return len(tokens).to_bytes(4, "little") + b"".join(
        len(token).to_bytes(4, "little") + token for token in tokens
    )


def _write_tensor(f: BinaryIO, name: str, tensor: Any, dtype: str) -> None:
    # One tensor converted at a time; a mapped array already in the target dtype is written from the map.
    data = as_dtype(tensor, dtype)
    shape = stored_shape(name, tuple(data.shape))
    encoded = name.encode("utf-8")
    f.write(struct.pack(f"<3i{len(shape)}i", len(shape), len(encoded), _TTYPES[dtype], *reversed(shape)))
    f.write(encoded)
    f.write(data.reshape(-1).view("u1").data)

"""What every format reads into: one :class:`ModelFile`, the same for ``.pt``, HF, CTranslate2 and ggml.

A reader (one module per format, no PyTorch) parses only headers, configs and pickles, and describes every
tensor in openai-whisper's own names and shapes (``encoder.blocks.0.attn.query.weight``), with where its bytes
lie in the file (a :class:`Span`) when the format stores raw arrays. The loader, ``info`` and every writer
work on that one description; :mod:`.arrays` turns it into numpy arrays mapped from the files, and
:mod:`.weights` those into PyTorch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Literal

from whisperctl.models.dims import ModelDimensions

__all__ = ["DTYPE_SIZES", "FORMATS", "FormatName", "HeadsOrigin", "ModelFile", "Span", "TensorInfo"]

FormatName = Literal["openai", "hf", "ct2", "ggml"]
FORMATS: tuple[FormatName, ...] = ("openai", "hf", "ct2", "ggml")
# Where a model's alignment heads were read: a file of the model ("generation_config.json", "config.json",
# "checkpoint") or nowhere in it (None: the registry entry or the default then applies).
HeadsOrigin = str | None

DTYPE_SIZES: dict[str, int] = {
    "float16": 2,
    "float32": 4,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


@dataclass(frozen=True)
class Span:
    """Where one stored array lies in a file: ``shape`` elements of ``dtype`` from byte ``offset``, C order.

    ``rows`` selects rows ``[start, stop)`` along the first axis (CTranslate2 stores the query, key and value
    projections as one fused matrix); the tensor's own shape (:attr:`TensorInfo.shape`) is then that of the
    selection, reshaped when the element counts agree (ggml stores a conv bias as ``(n, 1)``).
    """

    file: Path
    offset: int
    shape: tuple[int, ...]
    dtype: str
    rows: tuple[int, int] | None = None

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the model, in openai-whisper's name and shape."""

    shape: tuple[int, ...]
    dtype: str
    source: str  # its name in the file (the HF or CT2 name; the same for .pt)
    span: Span | None = None  # None: a pickled tensor only PyTorch's weights-only loader reads (strided)

    @property
    def itemsize(self) -> int:
        return DTYPE_SIZES[self.dtype]

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True)
class ModelFile:
    """A readable Whisper model in any format, as its reader found it (nothing loaded)."""

    format: FormatName
    path: Path  # the file or directory given
    files: tuple[Path, ...]  # every file whose bytes the tensors come from
    size_bytes: int  # of those files together
    dims: ModelDimensions
    tensors: dict[str, TensorInfo]  # by openai-whisper state-dict key
    alignment_heads: tuple[tuple[int, int], ...] | None = None
    heads_origin: HeadsOrigin = None
    # Facts a user wants from `info`, in order: ("tokenizer", "tokenizer.json"), ("spec", "WhisperSpec 3").
    details: tuple[tuple[str, str], ...] = field(default=())

    @property
    def dtypes(self) -> dict[str, int]:
        """Tensor count per dtype, e.g. ``{"float16": 167}``."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            counts[t.dtype] = counts.get(t.dtype, 0) + 1
        return counts

    @property
    def dtype(self) -> str:
        """The one dtype of every tensor, or ``"mixed"``."""
        dtypes = self.dtypes
        return next(iter(dtypes)) if len(dtypes) == 1 else "mixed"

    @property
    def elements(self) -> int:
        return sum(t.numel for t in self.tensors.values())

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

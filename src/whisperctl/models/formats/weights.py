"""A :class:`~.base.ModelFile`'s tensors as PyTorch tensors, mapped from its files, in openai-whisper's names.

Raw-array formats (safetensors, CTranslate2, ggml) are mapped privately (copy-on-write, ``MAP_PRIVATE``) and
each tensor is a view of the mapping: nothing is read before it is touched, and nothing is copied unless the
bytes are misaligned for their dtype. Pickle zips (``.pt``, ``pytorch_model.bin``) go through PyTorch's
weights-only loader with ``mmap=True``. The mappings live as long as the tensors do.
"""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import pickle
import platform
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from whisperctl.errors import IntegrityError
from whisperctl.models.formats.base import ModelFile, Span, TensorInfo

__all__ = ["TORCH_DTYPES", "PageReleaser", "Weights", "open_weights", "torch_load"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def open_weights(model: ModelFile) -> Weights:
    """Every tensor of ``model``, keyed by openai-whisper name, with the shapes its reader announced.

    Raises :class:`IntegrityError` (exit 4) when a file changed since it was read (shorter than a span) or
    PyTorch refuses a pickle.
    """
    return Weights(model)


class Weights(Mapping[str, torch.Tensor]):
    """A model's tensors, made when asked for: a view of the mapped file is made once and kept (it costs
    nothing), while a tensor stored misaligned for its dtype (ggml and CTranslate2 pack their arrays) is
    copied anew at each access and not kept, so that a writer going tensor by tensor holds one copy at a
    time, not 60% of a large model. A change made in place to such a copy is therefore not kept either."""

    def __init__(self, model: ModelFile) -> None:
        self.model = model
        self._maps: dict[Path, mmap.mmap] = {}
        self._pickled: dict[Path, dict[str, Any]] = {}
        self._views: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        view = self._views.get(name)
        if view is not None:
            return view
        info = self.model.tensors[name]  # KeyError for a name the model does not have
        if info.span is None:
            tensor = _from_pickle(self.model, self._pickle(name), name, info)
        else:
            span = info.span
            if span.file not in self._maps:
                self._maps[span.file] = _map(span.file)
            tensor = _from_span(self._maps[span.file], span, info, name)
            if span.offset % TORCH_DTYPES[span.dtype].itemsize:
                return tensor  # a copy: not kept
        self._views[name] = tensor
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.model.tensors)

    def __len__(self) -> int:
        return len(self.model.tensors)

    def _pickle(self, name: str) -> dict[str, Any]:
        if len(self.model.files) != 1:
            raise ValueError(f"{self.model.path}: {name} has no span and the model has several files")
        source = self.model.files[0]
        if source not in self._pickled:
            self._pickled[source] = torch_load(source)
        return self._pickled[source]


def _map(path: Path) -> mmap.mmap:
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path}: cannot be mapped ({exc}); check the file") from None


def _from_span(mm: mmap.mmap, span: Span, info: TensorInfo, name: str) -> torch.Tensor:
    dtype = TORCH_DTYPES[span.dtype]
    count = span.nbytes // dtype.itemsize
    if span.offset < 0 or span.offset + span.nbytes > len(mm):
        raise IntegrityError(
            f"{span.file}: {name} lies past the end of the file (changed since it was read?); read it again"
        )
    if span.offset % dtype.itemsize:
        # Misaligned for its dtype: a copy of this one tensor.
        raw = bytearray(mm[span.offset : span.offset + span.nbytes])
        flat = torch.frombuffer(raw, dtype=dtype, count=count) if count else torch.empty(0, dtype=dtype)
    else:
        flat = torch.frombuffer(mm, dtype=dtype, count=count, offset=span.offset)
    tensor = flat.view(span.shape)
    if span.rows is not None:
        tensor = tensor[span.rows[0] : span.rows[1]]
    if tuple(tensor.shape) != info.shape:
        tensor = tensor.reshape(info.shape)
    return tensor


def torch_load(path: Path, *, in_memory: bool = False) -> dict[str, Any]:
    """A pickle zip through PyTorch's weights-only loader, mapped (or read into memory); its refusals are
    one line (exit 4)."""
    try:
        if in_memory:
            obj = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IntegrityError(
            f"{path}: refused by PyTorch's weights-only loader ({first}); load only files you trust"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IntegrityError(f"{path}: PyTorch cannot read it ({first}); download it again") from None
    if not isinstance(obj, dict):
        raise IntegrityError(f"{path}: PyTorch read {type(obj).__name__}, not a dict of tensors")
    return obj


def _from_pickle(model: ModelFile, obj: dict[str, Any], name: str, info: TensorInfo) -> torch.Tensor:
    table = obj.get("model_state_dict", obj) if model.format == "openai" else obj
    tensor = table.get(info.source) if isinstance(table, dict) else None
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != info.shape:
        raise IntegrityError(
            f"{model.path}: {info.source} is not what its pickle said when read (changed?); read it again"
        )
    return tensor


# madvise(2)'s MADV_DONTNEED, the generic value that x86-64 and arm64 use.
_MADV_DONTNEED = 4


class PageReleaser:
    """Drops a written tensor's pages of the mapped input from this process (Linux on x86-64 and arm64).

    Every page of the input that was read stays resident in this process until unmapped, so converting
    large-v3 would otherwise end with its 3 GB in the resident set. ``MADV_DONTNEED`` unmaps the pages (they
    stay in the page cache, and are read again if touched): it is advised only for mappings of the model's
    own files that hold no page modified in place (``/proc/self/smaps``: no ``Anonymous`` page, the private
    copies that writing to a page makes), whose content it therefore cannot change, and never for memory the
    caller allocated.
    """

    def __init__(self, files: tuple[Path, ...]) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.madvise: Any = None
        if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
            return
        # The files are mapped when their first tensor is asked for (Weights is lazy), so the mappings are
        # looked up again when a tensor falls outside those known, until every file has been seen.
        self.names = {os.path.realpath(p) for p in files}
        self.seen: set[str] = set()
        try:
            libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return
        self.madvise = libc.madvise
        self.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.madvise.restype = ctypes.c_int

    def _inside(self, start: int, end: int) -> bool:
        return any(lo <= start and end <= hi for lo, hi in self.ranges)

    def __call__(self, tensor: torch.Tensor) -> None:
        if self.madvise is None or not tensor.is_contiguous() or tensor.device.type != "cpu":
            return
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        if not self._inside(start, end) and self.seen != self.names:
            try:
                self.ranges, self.seen = _clean_mappings(self.names)
            except OSError:
                self.madvise = None
                return
        if not self._inside(start, end):
            return
        # Whole pages inside the mapping; a page shared with the next tensor is simply read again.
        first = start - start % mmap.PAGESIZE
        self.madvise(first, end - first, _MADV_DONTNEED)  # its failure changes nothing


def _clean_mappings(names: set[str]) -> tuple[list[tuple[int, int]], set[str]]:
    """The address ranges mapped from ``names`` in which no page was modified since it was mapped, and
    which of ``names`` are mapped at all."""
    ranges: list[tuple[int, int]] = []
    seen: set[str] = set()
    current: tuple[int, int] | None = None
    with open("/proc/self/smaps", encoding="utf-8", errors="replace") as smaps:
        for line in smaps:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and not fields[0].endswith(":"):
                path = line.split(maxsplit=5)[5].rstrip("\n") if len(fields) >= 6 else ""
                lo, hi = fields[0].split("-")
                current = (int(lo, 16), int(hi, 16)) if path in names else None
                if path in names:
                    seen.add(path)
            elif current is not None and fields[:1] == ["Anonymous:"]:
                if fields[1] == "0":
                    ranges.append(current)
                current = None
    return ranges, seen

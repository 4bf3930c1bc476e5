"""A :class:`~.base.ModelFile`'s tensors as numpy arrays, mapped from its files, in openai-whisper's names.

Every tensor with a :class:`~.base.Span` (safetensors, CTranslate2, ggml, and the contiguous tensors of a
``torch.save`` zip) is a view of a private mapping of its file (copy-on-write, ``MAP_PRIVATE``): nothing is
read before it is touched, and nothing is copied unless the bytes are misaligned for their dtype. Only a
pickled tensor without a span (a strided view saved as is) goes through PyTorch's weights-only loader,
imported then. Converting to hf, ct2 and ggml therefore never imports PyTorch; :mod:`.weights` makes the
loader's PyTorch tensors from the same views (``torch.from_numpy``, no copy).

numpy has no bfloat16: a bfloat16 span is mapped as ``uint16`` (:meth:`Arrays.raw`), and :class:`Arrays`
gives it widened to float32, exactly (:func:`bf16_to_fp32`), so that a writer casting with ``astype`` never
reads bfloat16 bits as another type.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from whisperctl.errors import IntegrityError, TorchMissingError
from whisperctl.models.formats.base import ModelFile, Span, TensorInfo

__all__ = [
    "NUMPY_DTYPES",
    "Arrays",
    "PageReleaser",
    "as_dtype",
    "bf16_to_fp32",
    "open_arrays",
    "torch_load",
]

# Little-endian, as every format stores them; bfloat16's bits as uint16 (numpy has no bfloat16).
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "bfloat16": np.dtype("<u2"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "int16": np.dtype("<i2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "bool": np.dtype("?"),
}


def open_arrays(model: ModelFile) -> Arrays:
    """Every tensor of ``model`` as a numpy array, keyed by openai-whisper name, with the shapes its reader
    announced (bfloat16 ones widened to float32).

    Raises :class:`IntegrityError` (exit 4) when a file changed since it was read (shorter than a span) or
    PyTorch refuses a pickle; :class:`~whisperctl.errors.TorchMissingError` when a tensor only PyTorch can
    read (no span) is asked for and PyTorch is not installed.
    """
    return Arrays(model)


def bf16_to_fp32(bits: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """bfloat16 values (their bits, as ``uint16``) as float32, exactly: a bfloat16 is the high half of the
    float32 of the same value."""
    wide = bits.astype("<u4")
    wide <<= 16
    return wide.view("<f4")


def as_dtype(value: Any, dtype: str) -> npt.NDArray[Any]:
    """``value`` (a numpy array, or a CPU PyTorch tensor) as a C-contiguous array of ``dtype`` (a name of
    :data:`NUMPY_DTYPES` other than bfloat16); no copy when it is one already."""
    if not isinstance(value, np.ndarray) and str(getattr(value, "dtype", "")) == "torch.bfloat16":
        value = value.float()  # a PyTorch bfloat16 tensor (the loader's Weights): numpy cannot hold it
    return np.ascontiguousarray(np.asarray(value), dtype=NUMPY_DTYPES[dtype])


class Arrays(Mapping[str, npt.NDArray[Any]]):
    """A model's tensors, made when asked for: a view of the mapped file is made once and kept (it costs
    nothing), while a tensor stored misaligned for its dtype (ggml and CTranslate2 pack their arrays) or
    widened from bfloat16 is copied anew at each access and not kept, so that a writer going tensor by
    tensor holds one copy at a time, not 60% of a large model. A change made in place to such a copy is
    therefore not kept either."""

    def __init__(self, model: ModelFile) -> None:
        self.model = model
        self._maps: dict[Path, mmap.mmap] = {}
        self._pickled: dict[Path, dict[str, Any]] = {}
        self._views: dict[str, npt.NDArray[Any]] = {}

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        array = self.raw(name)
        if self.model.tensors[name].dtype == "bfloat16":
            return bf16_to_fp32(array)
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(self.model.tensors)

    def __len__(self) -> int:
        return len(self.model.tensors)

    def kept(self, name: str) -> bool:
        """Whether ``name``'s array is a view kept by this mapping (not a copy made for one access)."""
        return name in self._views

    def raw(self, name: str) -> npt.NDArray[Any]:
        """``name`` as stored: bfloat16 as its ``uint16`` bits."""
        view = self._views.get(name)
        if view is not None:
            return view
        info = self.model.tensors[name]  # KeyError for a name the model does not have
        if info.span is None:
            array = _from_pickle(self.model, self._pickle(name), info)
        else:
            span = info.span
            if span.file not in self._maps:
                self._maps[span.file] = _map(span.file)
            array = _from_span(self._maps[span.file], span, info, name)
            if span.offset % NUMPY_DTYPES[span.dtype].itemsize:
                return array  # a copy: not kept
        self._views[name] = array
        return array

    def _pickle(self, name: str) -> dict[str, Any]:
        if len(self.model.files) != 1:
            raise ValueError(f"{self.model.path}: {name} has no span and the model has several files")
        source = self.model.files[0]
        if source not in self._pickled:
            self._pickled[source] = torch_load(source, purpose=f"reading {name} of {source.name}")
        return self._pickled[source]


def _map(path: Path) -> mmap.mmap:
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path}: cannot be mapped ({exc}); check the file") from None


def _from_span(mm: mmap.mmap, span: Span, info: TensorInfo, name: str) -> npt.NDArray[Any]:
    dtype = NUMPY_DTYPES[span.dtype]
    count = span.nbytes // dtype.itemsize
    if span.offset < 0 or span.offset + span.nbytes > len(mm):
        raise IntegrityError(
            f"{span.file}: {name} lies past the end of the file (changed since it was read?); read it again"
        )
    if not count:
        flat = np.empty(0, dtype=dtype)
    elif span.offset % dtype.itemsize:
        # Misaligned for its dtype: a copy of this one tensor (a bytearray: aligned, and writable).
        flat = np.frombuffer(bytearray(mm[span.offset : span.offset + span.nbytes]), dtype=dtype)
    else:
        flat = np.frombuffer(mm, dtype=dtype, count=count, offset=span.offset)
    array = flat.reshape(span.shape)
    if span.rows is not None:
        array = array[span.rows[0] : span.rows[1]]
    if array.shape != info.shape:
        array = array.reshape(info.shape)
    return array


def torch_load(path: Path, *, in_memory: bool = False, purpose: str = "loading") -> dict[str, Any]:
    """A pickle zip through PyTorch's weights-only loader, mapped (or read into memory); its refusals are
    one line (exit 4), and a missing PyTorch is :class:`~whisperctl.errors.TorchMissingError` for
    ``purpose``."""
    import io
    import pickle

    try:
        import torch
    except ImportError:
        raise TorchMissingError(purpose) from None
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


def _from_pickle(model: ModelFile, obj: dict[str, Any], info: TensorInfo) -> npt.NDArray[Any]:
    import torch

    table = obj.get("model_state_dict", obj) if model.format == "openai" else obj
    tensor = table.get(info.source) if isinstance(table, dict) else None
    if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != info.shape:
        raise IntegrityError(
            f"{model.path}: {info.source} is not what its pickle said when read (changed?); read it again"
        )
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)  # its bits: numpy has no bfloat16
    array: npt.NDArray[Any] = tensor.numpy().view(NUMPY_DTYPES[info.dtype])
    return array


# madvise(2)'s MADV_DONTNEED, the generic value that x86-64 and arm64 use.
_MADV_DONTNEED = 4


class PageReleaser:
    """Drops a written tensor's pages of the mapped input from this process (Linux on x86-64 and arm64).

    Every page of the input that was read stays resident in this process until unmapped, so converting
    large-v3 would otherwise end with its 3 GB in the resident set. ``MADV_DONTNEED`` unmaps the pages (they
    stay in the page cache, and are read again if touched): it is advised only for mappings of the model's
    own files that hold no page modified in place (``/proc/self/smaps``: no ``Anonymous`` page, the private
    copies that writing to a page makes), whose content it therefore cannot change, and never for memory the
    caller allocated. It takes numpy arrays and CPU PyTorch tensors alike.
    """

    def __init__(self, files: tuple[Path, ...]) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.madvise: Any = None
        if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
            return
        # The files are mapped when their first tensor is asked for (Arrays is lazy), so the mappings are
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

    def __call__(self, tensor: Any) -> None:
        if self.madvise is None:
            return
        extent = _extent(tensor)
        if extent is None:
            return
        start, end = extent
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


def _extent(tensor: Any) -> tuple[int, int] | None:
    """The addresses ``[start, end)`` of a contiguous numpy array's or CPU PyTorch tensor's bytes."""
    if isinstance(tensor, np.ndarray):
        if not tensor.flags.c_contiguous or not tensor.nbytes:
            return None
        start = int(tensor.__array_interface__["data"][0])
        return start, start + tensor.nbytes
    if hasattr(tensor, "data_ptr") and tensor.device.type == "cpu" and tensor.is_contiguous():
        start = int(tensor.data_ptr())
        return start, start + tensor.numel() * tensor.element_size()
    return None


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

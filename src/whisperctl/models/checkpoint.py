"""Read a Whisper checkpoint's ``dims`` and tensor list without PyTorch and without reading the weights.

A checkpoint written by ``torch.save`` (PyTorch >= 1.6, as every official Whisper checkpoint of
openai-whisper 20250625) is a zip archive of uncompressed entries: ``<archive>/data.pkl`` (the pickled
object graph, a few hundred KB) and one ``<archive>/data/<key>`` entry per tensor storage. This module reads
the zip's central directory and ``data.pkl`` only, with an unpickler that knows nothing but the handful of
names a tensor dictionary needs, so that:

* ``whisperctl info`` shows dims, dtypes and tensor shapes in milliseconds, without importing torch;
* the loader refuses a malformed or hostile file before torch ever opens it: a pickle that names any other
  callable (a code-running ``__reduce__`` payload) fails here, and so does a compressed entry (zip bomb), a
  storage that lies outside its entry, or dims that do not match the tensors;
* every tensor stored contiguously gets the byte offset of its data in the file (its entry's data starts
  after the entry's local header, whose name and extra field lengths are read from that header itself), so
  that its bytes can be mapped without PyTorch (:class:`~.formats.base.Span`).
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from math import prod
from pathlib import Path
from typing import Any, Protocol

from whisperctl.errors import IntegrityError
from whisperctl.models.dims import ModelDimensions, count_parameters, state_dict_shapes

__all__ = [
    "MAX_COMPUTED_BYTES",
    "Checkpoint",
    "TensorMeta",
    "TensorTable",
    "check_size",
    "check_tensors",
    "read_checkpoint",
    "read_state_dict",
    "validate",
]

# The legacy storage classes that torch.save names for each dtype, and their element sizes.
_STORAGES: dict[str, tuple[str, int]] = {
    "HalfStorage": ("float16", 2),
    "FloatStorage": ("float32", 4),
    "BFloat16Storage": ("bfloat16", 2),
    "DoubleStorage": ("float64", 8),
    "LongStorage": ("int64", 8),
    "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2),
    "CharStorage": ("int8", 1),
    "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1),
}
ITEMSIZE = dict(_STORAGES.values())
FLOAT_DTYPES = frozenset({"float16", "float32", "bfloat16"})
MAX_PICKLE_BYTES = 64 * 1024 * 1024  # an official data.pkl is under 200 KB
# The causal mask (n_text_ctx^2 float32) is computed, not read: a file must not make us allocate more for it
# than the weights it holds, or this much, whichever is larger.
MAX_COMPUTED_BYTES = 1 << 30
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # a zip local file header (30 bytes)
_LOCAL_SIG = 0x04034B50


@dataclass(frozen=True)
class TensorMeta:
    """What the pickle says about one tensor: enough to check it, nothing read from its storage."""

    shape: tuple[int, ...]
    dtype: str
    storage_key: str
    storage_numel: int
    offset: int  # in elements, into the storage
    contiguous: bool = True  # C order in its storage (strides of its shape), as torch.save writes parameters
    # Where its first element lies in the file, when it is contiguous (None: only PyTorch can read it).
    file_offset: int | None = None

    @property
    def itemsize(self) -> int:
        return ITEMSIZE[self.dtype]

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file as read by :func:`read_checkpoint`."""

    path: Path
    size_bytes: int
    dims: ModelDimensions
    tensors: dict[str, TensorMeta]
    # (layer, head) pairs from an optional top-level "alignment_heads" key (whisperctl convert writes it;
    # openai-whisper's load_model ignores keys it does not know).
    alignment_heads: tuple[tuple[int, int], ...] | None = None

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


class _Tensor(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...


class TensorTable(Protocol):
    """What the checks need of a model read from a file: a :class:`Checkpoint`, or a
    :class:`~whisperctl.models.formats.base.ModelFile` of any format."""

    @property
    def path(self) -> Path: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def dims(self) -> ModelDimensions: ...
    @property
    def tensors(self) -> Mapping[str, _Tensor]: ...
    @property
    def tensor_bytes(self) -> int: ...


@dataclass(frozen=True)
class _Storage:
    dtype: str
    key: str
    numel: int


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_: Any, **__: Any) -> TensorMeta:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    if not (
        isinstance(offset, int)
        and isinstance(size, tuple)
        and isinstance(stride, tuple)
        and len(size) == len(stride)
        and all(isinstance(v, int) and v >= 0 for v in (offset, *size, *stride))
    ):
        raise pickle.UnpicklingError(f"malformed tensor geometry {size!r} / {stride!r} at {offset!r}")
    extent = offset + (sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1 if prod(size) else 0)
    if extent > storage.numel:
        raise pickle.UnpicklingError(
            f"a tensor of shape {size} reaches element {extent} of storage {storage.key}, "
            f"which holds {storage.numel}"
        )
    return TensorMeta(
        shape=size,
        dtype=storage.dtype,
        storage_key=storage.key,
        storage_numel=storage.numel,
        offset=offset,
        contiguous=_c_order(size, stride),
    )


def _c_order(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether ``stride`` lays ``size`` out in C order (axes of one element may have any stride)."""
    expected = 1
    for n, s in zip(reversed(size), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


class _Unpickler(pickle.Unpickler):
    """Allows what a dictionary of tensors needs, and nothing else: no callable of the file's choosing."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGES:
            return name
        raise pickle.UnpicklingError(
            f"it refers to {module}.{name}, which a weights-only load never calls "
            "(a checkpoint holds tensors and plain data; this one could run code)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        if kind not in _STORAGES or not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage reference {pid!r:.80}")
        return _Storage(dtype=_STORAGES[kind][0], key=key, numel=numel)


def _fail(
    path: Path, what: str, fix: str = "download it again or check where it came from"
) -> IntegrityError:
    return IntegrityError(f"{path}: {what}; {fix}")


def read_checkpoint(path: Path | str) -> Checkpoint:
    """The dims and tensor list of a checkpoint, from its zip directory and pickle only.

    Raises :class:`IntegrityError` (exit 4) naming the problem for anything that is not a well-formed Whisper
    checkpoint: not a zip (or truncated), compressed or oversized entries, a pickle that names a callable,
    storages that do not fit their entries, missing or bad ``dims``. It does not compare the tensors with the
    dims: see :func:`check_tensors`.
    """
    path = Path(path)
    size, obj, records, prefix = _load(path)
    return _checkpoint(path, size, obj, records, prefix)


def read_state_dict(path: Path | str) -> tuple[int, dict[str, TensorMeta]]:
    """The size and tensor list of a ``torch.save`` zip holding a flat state dict (``pytorch_model.bin``).

    The same restricted unpickler and checks as :func:`read_checkpoint`, without ``dims``.
    """
    path = Path(path)
    size, obj, records, prefix = _load(path)
    if not isinstance(obj, dict):
        raise _fail(path, f"not a state dict: it holds {type(obj).__name__}, not a dict of tensors")
    return size, _tensors(path, obj, records, prefix)


def _load(path: Path) -> tuple[int, Any, dict[str, _Entry], str]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as raw, zipfile.ZipFile(raw) as zf:
            infos = zf.infolist()
            records = _check_entries(path, infos, size, raw)
            pickles = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
            if len(pickles) != 1:
                raise _fail(path, "not a PyTorch checkpoint (no single data.pkl in the archive)")
            prefix = pickles[0].filename[: -len("data.pkl")]
            data = zf.read(pickles[0])
    except zipfile.BadZipFile as exc:
        raise _fail(
            path,
            f"not a PyTorch zip checkpoint, or truncated ({exc})",
            "download it again (a file from PyTorch < 1.6 must be re-saved with torch.save)",
        ) from None
    except OSError as exc:
        raise _fail(
            path, f"cannot be read ({exc.strerror or exc})", "check the path and permissions"
        ) from None
    try:
        obj = _Unpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise IntegrityError(
            f"{path}: refused: {exc}; load only files you trust, from their source"
        ) from None
    except Exception as exc:  # a malformed pickle stream raises anything from EOFError to TypeError
        raise _fail(path, f"the checkpoint's pickle is malformed ({type(exc).__name__}: {exc})") from None
    return size, obj, records, prefix


@dataclass(frozen=True)
class _Entry:
    size: int  # bytes of data
    data_offset: int  # where they start in the file


def _check_entries(
    path: Path, infos: list[zipfile.ZipInfo], size: int, raw: io.BufferedReader
) -> dict[str, _Entry]:
    records: dict[str, _Entry] = {}
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise _fail(path, f"archive entry {info.filename} is compressed (torch.save never compresses)")
        if info.file_size > size or info.header_offset + info.file_size > size:
            raise _fail(path, f"archive entry {info.filename} claims more bytes than the file holds")
        if info.filename.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise _fail(path, f"its pickle is {info.file_size} bytes (at most {MAX_PICKLE_BYTES} expected)")
        records[info.filename] = _Entry(info.file_size, _data_offset(path, info, size, raw))
    return records


def _data_offset(path: Path, info: zipfile.ZipInfo, size: int, raw: io.BufferedReader) -> int:
    """Where ``info``'s data starts: after its local header, name and extra field, as the local header
    itself gives their lengths (torch.save pads the local extra field to align the data; the central
    directory's copy of it differs)."""
    raw.seek(info.header_offset)
    head = raw.read(_LOCAL.size)
    if len(head) != _LOCAL.size or _LOCAL.unpack(head)[0] != _LOCAL_SIG:
        raise _fail(path, f"archive entry {info.filename} has no local header where its directory says")
    fields = _LOCAL.unpack(head)
    name_length, extra_length = int(fields[9]), int(fields[10])
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    if fields[3] != zipfile.ZIP_STORED or raw.read(name_length) != info.orig_filename.encode(encoding):
        raise _fail(path, f"archive entry {info.filename}: its local header disagrees with its directory")
    start = info.header_offset + _LOCAL.size + name_length + extra_length
    if start + info.file_size > size:
        raise _fail(path, f"archive entry {info.filename} claims more bytes than the file holds")
    return start


def _checkpoint(path: Path, size: int, obj: Any, records: dict[str, _Entry], prefix: str) -> Checkpoint:
    if not isinstance(obj, dict) or "dims" not in obj or "model_state_dict" not in obj:
        kind = (
            f"a dict with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, dict) else type(obj).__name__
        )
        raise _fail(path, f"not a Whisper checkpoint: it holds {kind}, not 'dims' and 'model_state_dict'")
    dims_obj, sd = obj["dims"], obj["model_state_dict"]
    if not isinstance(dims_obj, dict):
        raise _fail(path, f"'dims' is {type(dims_obj).__name__}, not a dict of ten integers")
    try:
        dims = ModelDimensions.from_mapping(dims_obj)
    except ValueError as exc:
        raise _fail(path, f"bad dims: {exc}") from None
    if not isinstance(sd, dict):
        raise _fail(path, f"'model_state_dict' is {type(sd).__name__}, not a dict of tensors")
    tensors = _tensors(path, sd, records, prefix)
    heads = _heads(path, obj.get("alignment_heads"))
    return Checkpoint(path=path, size_bytes=size, dims=dims, tensors=tensors, alignment_heads=heads)


def _heads(path: Path, value: Any) -> tuple[tuple[int, int], ...] | None:
    """The optional ``alignment_heads``: a list of ``[layer, head]`` pairs of non-negative integers."""
    if value is None:
        return None

    def pair(p: Any) -> bool:
        return isinstance(p, list | tuple) and len(p) == 2 and all(type(v) is int and v >= 0 for v in p)

    if not isinstance(value, list | tuple) or not all(pair(p) for p in value):
        raise _fail(path, f"'alignment_heads' is not a list of [layer, head] pairs ({value!r:.60})")
    return tuple((p[0], p[1]) for p in value)


def _tensors(
    path: Path, sd: dict[Any, Any], records: dict[str, _Entry], prefix: str
) -> dict[str, TensorMeta]:
    tensors: dict[str, TensorMeta] = {}
    not_tensors = []
    for key, value in sd.items():
        if isinstance(key, str) and isinstance(value, TensorMeta):
            tensors[key] = value
        else:
            not_tensors.append(f"{key!s:.60} ({type(value).__name__})")
    if not_tensors:
        raise _fail(path, f"entries that are not tensors: {', '.join(not_tensors[:5])}")
    for key, t in tensors.items():
        entry = records.get(f"{prefix}data/{t.storage_key}")
        if entry is None:
            raise _fail(path, f"tensor {key} has no storage entry data/{t.storage_key} (truncated?)")
        if t.storage_numel * t.itemsize != entry.size:
            raise _fail(
                path, f"tensor {key}: its storage entry holds {entry.size} bytes, not what it declares"
            )
        # The unpickler checked that the tensor's elements lie inside its storage, and the storage fills
        # its entry exactly, which lies inside the file: its bytes are the entry's, from its offset on.
        if t.contiguous:
            tensors[key] = replace(t, file_offset=entry.data_offset + t.offset * t.itemsize)
    return tensors


def check_tensors(ckpt: TensorTable) -> list[str]:
    """Every way the tensors disagree with the dims: missing, unexpected, wrongly shaped, not floating point.

    An empty list means that a model built from ``ckpt.dims`` loads the state dict strictly. Dims that
    describe far more parameters or layers than the file holds are said in one line, without listing.
    """
    d = ckpt.dims
    expected_count = 9 + 15 * d.n_audio_layer + 24 * d.n_text_layer
    if expected_count > 2 * len(ckpt.tensors) + 64:
        return [f"its dims describe {expected_count:,} tensors but the file holds {len(ckpt.tensors):,}"]
    expected = state_dict_shapes(d)
    problems = []
    missing = [k for k in expected if k not in ckpt.tensors]
    unexpected = [k for k in ckpt.tensors if k not in expected]
    shapes = [
        f"{k} {list(t.shape)} (expected {list(expected[k])})"
        for k, t in ckpt.tensors.items()
        if k in expected and t.shape != expected[k]
    ]
    dtypes = [f"{k} ({t.dtype})" for k, t in ckpt.tensors.items() if t.dtype not in FLOAT_DTYPES]
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", shapes),
        ("not floating point", dtypes),
    ):
        if items:
            more = f" and {len(items) - 3} more" if len(items) > 3 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:3])}{more}")
    # Shapes alone do not bound the memory: a tensor may be a stride-0 view of one element, of the right
    # shape, that becomes a full-size tensor once converted.
    size = check_size(ckpt)
    return [size, *problems] if size else problems


def check_size(ckpt: TensorTable) -> str | None:
    """A dims/file-size mismatch too large to be a matter of shapes, said before anything is allocated."""
    total = count_parameters(ckpt.dims).total
    if total * 2 > ckpt.size_bytes:  # even at 2 bytes a parameter, the file cannot hold them
        return (
            f"its dims describe {total:,} parameters (at least {total * 2:,} bytes) "
            f"but its files hold {ckpt.size_bytes:,} bytes"
        )
    return None


def validate(ckpt: TensorTable) -> None:
    """Refuse, in one message and before any allocation, a checkpoint that cannot load strictly."""
    problems = check_tensors(ckpt)
    if problems:
        raise IntegrityError(
            f"{ckpt.path}: refused: its tensors do not match its dims ({'; '.join(problems)}); "
            "it is not a Whisper checkpoint of these dims, or it is damaged"
        )
    mask_bytes = ckpt.dims.n_text_ctx**2 * 4
    if mask_bytes > max(MAX_COMPUTED_BYTES, ckpt.tensor_bytes):
        raise IntegrityError(
            f"{ckpt.path}: refused: n_text_ctx={ckpt.dims.n_text_ctx} needs a {mask_bytes:,}-byte "
            f"causal mask, more than the {ckpt.tensor_bytes:,} bytes of weights; the dims are implausible"
        )

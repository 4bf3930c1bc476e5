"""Write openai-whisper's own format: what ``torch.save({"dims": ..., "model_state_dict": ...})`` writes.

What ``whisper.load_model`` reads (and whisperctl): the dims as a dict of ten integers and the state dict
in openai-whisper's names, in the dtype asked for (float16 like the official files, or float32); and the
model's alignment heads, when it has its own (not the default), under an extra ``alignment_heads`` key.

Memory: tensor by tensor. ``torch.save`` needs the whole dictionary, so it is given one of uninitialised
tensors (``torch.empty``: pages reserved, never touched) under ``torch.serialization.skip_data()``, which
writes the archive with every storage's place left empty. Each tensor is then converted on its own, written
into its storage's place, and its CRC-32 patched into the archive's records; the pages of the mapped input
it came from leave the process. The archive is the one ``torch.save`` of the real tensors writes but for
its ``.data/serialization_id`` record (an identifier torch derives from the bytes it wrote; here from the
empty places), and converting float16 to float32 holds one converted tensor at a time, not the model.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from whisperctl.models.checkpoint import read_checkpoint
from whisperctl.models.dims import state_dict_shapes
from whisperctl.models.formats.arrays import PageReleaser
from whisperctl.models.formats.base import ModelFile
from whisperctl.models.formats.weights import TORCH_DTYPES

__all__ = ["write"]

_LOCAL = struct.Struct("<IHHHHHIIIHH")  # a zip local file header (30 bytes)
_LOCAL_SIG, _CENTRAL_SIG, _DESCRIPTOR_SIG = 0x04034B50, 0x02014B50, 0x08074B50
_WRITE_CHUNK = 64 << 20


def write(model: ModelFile, weights: Mapping[str, Any], out: Path, *, dtype: str) -> list[Path]:
    """Write ``out`` (a file that does not exist yet) from ``weights`` (numpy arrays or tensors) in
    openai-whisper's format."""
    target = TORCH_DTYPES[dtype]
    # In openai-whisper's own order (its module order), whatever the source's: the same model and dtype
    # give the same file, so .pt -> hf -> .pt ends where it started, byte for byte.
    canonical = state_dict_shapes(model.dims)
    order = [k for k in canonical if k in model.tensors] + [k for k in model.tensors if k not in canonical]
    placeholders = {name: torch.empty(model.tensors[name].shape, dtype=target) for name in order}
    checkpoint: dict[str, object] = {"dims": model.dims.as_dict(), "model_state_dict": placeholders}
    heads = model.alignment_heads
    if heads and set(heads) != set(_default_heads(model)):
        # An extra key that openai-whisper's load_model ignores and whisperctl reads back (heads_origin
        # "checkpoint"), so that a model's heads survive .pt (HF -> .pt -> HF keeps them). The default
        # heads (what a .pt without the key gets) are left out: .pt -> HF -> .pt gives the same file.
        checkpoint["alignment_heads"] = [list(pair) for pair in heads]
    # Through a file object, the archive's inner folder is torch's fixed "archive", not derived from the
    # temporary name: the same model gives the same bytes.
    with open(out, "xb") as f, torch.serialization.skip_data():
        torch.save(checkpoint, f)
    del checkpoint, placeholders
    storages = {name: t.storage_key for name, t in read_checkpoint(out).tensors.items()}
    release = PageReleaser(model.files)
    with open(out, "r+b") as f, zipfile.ZipFile(out) as zf:
        prefix = next(i.filename for i in zf.infolist() if i.filename.endswith("data.pkl"))[
            : -len("data.pkl")
        ]
        central = _central_records(f, zf)
        for name in order:
            info = zf.getinfo(f"{prefix}data/{storages[name]}")
            source = weights[name]
            data = _tensor(source).to(device="cpu", dtype=target).contiguous()
            crc = _write_at(f, _data_offset(f, info), data)
            _patch_crc(f, info, central[info.filename], crc)
            release(source)
            del data, source
    return [out]


def _tensor(value: Any) -> torch.Tensor:
    """A numpy array as the tensor that shares its memory (a tensor as it is)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.from_numpy(np.asarray(value))


def _default_heads(model: ModelFile) -> list[tuple[int, int]]:
    """openai-whisper's default alignment heads: every head of the last half of the decoder layers."""
    d = model.dims
    return [(layer, h) for layer in range(d.n_text_layer // 2, d.n_text_layer) for h in range(d.n_text_head)]


def _data_offset(f: BinaryIO, info: zipfile.ZipInfo) -> int:
    f.seek(info.header_offset)
    fields = _LOCAL.unpack(f.read(_LOCAL.size))
    if fields[0] != _LOCAL_SIG:
        raise RuntimeError(f"torch.save wrote no local header for {info.filename}")
    return info.header_offset + _LOCAL.size + int(fields[9]) + int(fields[10])


def _write_at(f: BinaryIO, offset: int, data: torch.Tensor) -> int:
    """The tensor's bytes at ``offset``; their CRC-32."""
    raw = memoryview(data.view(torch.uint8).reshape(-1).numpy()) if data.numel() else memoryview(b"")
    f.seek(offset)
    crc = 0
    for start in range(0, len(raw), _WRITE_CHUNK):
        chunk = raw[start : start + _WRITE_CHUNK]
        f.write(chunk)
        crc = zlib.crc32(chunk, crc)
    return int(crc)


def _central_records(f: BinaryIO, zf: zipfile.ZipFile) -> dict[str, int]:
    """Where each entry's central directory record starts."""
    where: dict[str, int] = {}
    f.seek(zf.start_dir)
    for _ in zf.infolist():
        start = f.tell()
        head = f.read(46)
        sig, n, m, k = struct.unpack("<I", head[:4])[0], *struct.unpack("<HHH", head[28:34])
        if sig != _CENTRAL_SIG:
            raise RuntimeError("torch.save wrote an unexpected central directory")
        where[f.read(n).decode("utf-8")] = start
        f.seek(m + k, 1)
    return where


def _patch_crc(f: BinaryIO, info: zipfile.ZipInfo, central: int, crc: int) -> None:
    """The CRC-32 in the entry's central record, and in its local header or data descriptor."""
    packed = struct.pack("<I", crc)
    f.seek(central + 16)
    f.write(packed)
    if info.flag_bits & 0x08:  # a data descriptor follows the data: [signature] crc sizes
        f.seek(_data_offset(f, info) + info.compress_size)
        first = f.read(4)
        f.seek(-4 if struct.unpack("<I", first)[0] != _DESCRIPTOR_SIG else 0, 1)
        f.write(packed)
    else:
        f.seek(info.header_offset + 14)
        f.write(packed)

"""openai-whisper's own format: a ``torch.save`` zip of ``{"dims": ..., "model_state_dict": ...}``.

The reading is :mod:`whisperctl.models.checkpoint`'s (the restricted unpickler); this module describes the
result as a :class:`~.base.ModelFile`. Keys and shapes are openai-whisper's already. Every tensor stored in C
order in its (uncompressed) storage entry has a :class:`~.base.Span` there, so that its bytes are mapped
without PyTorch; any other (a strided view saved as is) has none, and PyTorch's weights-only loader reads it.
"""

from __future__ import annotations

from pathlib import Path

from whisperctl.models.checkpoint import TensorMeta, read_checkpoint
from whisperctl.models.formats.base import ModelFile, Span, TensorInfo

__all__ = ["read", "sniff", "tensor_info"]


def sniff(head: bytes) -> bool:
    """A zip archive (what ``torch.save`` writes); whose pickle it holds is for :func:`read` to say."""
    return head.startswith(b"PK\x03\x04")


def read(path: Path) -> ModelFile:
    ckpt = read_checkpoint(path)
    return ModelFile(
        format="openai",
        path=ckpt.path,
        files=(ckpt.path,),
        size_bytes=ckpt.size_bytes,
        dims=ckpt.dims,
        tensors={k: tensor_info(ckpt.path, k, t) for k, t in ckpt.tensors.items()},
        alignment_heads=ckpt.alignment_heads,
        heads_origin="checkpoint" if ckpt.alignment_heads is not None else None,
    )


def tensor_info(path: Path, name: str, meta: TensorMeta) -> TensorInfo:
    """One tensor of a ``torch.save`` zip at ``path`` (a ``.pt`` or a ``pytorch_model.bin``), with its span
    when it has one."""
    span = None
    if meta.file_offset is not None:
        span = Span(file=path, offset=meta.file_offset, shape=meta.shape, dtype=meta.dtype)
    return TensorInfo(shape=meta.shape, dtype=meta.dtype, source=name, span=span)

"""openai-whisper's own format: a ``torch.save`` zip of ``{"dims": ..., "model_state_dict": ...}``.

The reading is :mod:`whisperctl.models.checkpoint`'s (the restricted unpickler); this module describes the
result as a :class:`~.base.ModelFile`. Keys and shapes are openai-whisper's already.
"""

from __future__ import annotations

from pathlib import Path

from whisperctl.models.checkpoint import read_checkpoint
from whisperctl.models.formats.base import ModelFile, TensorInfo

__all__ = ["read", "sniff"]


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
        tensors={k: TensorInfo(shape=t.shape, dtype=t.dtype, source=k) for k, t in ckpt.tensors.items()},
        alignment_heads=ckpt.alignment_heads,
        heads_origin="checkpoint" if ckpt.alignment_heads is not None else None,
    )

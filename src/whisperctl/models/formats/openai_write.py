"""Write openai-whisper's own format: ``torch.save({"dims": ..., "model_state_dict": ...})``.

What ``whisper.load_model`` reads (and whisperctl): the dims as a dict of ten integers and the state dict
in openai-whisper's names, in the dtype asked for (float16 like the official files, or float32); and the
model's alignment heads, when it has its own (not the default), under an extra ``alignment_heads`` key.

Memory: ``torch.save`` needs the whole dictionary before it writes. A tensor already in the target dtype
and alone in its storage goes in as it is (a view of the mapped input: nothing is copied, the pages stream
from the input file to the output). A tensor converted to another dtype, or sliced from a larger stored
array (CTranslate2's fused query/key/value), is a new tensor, and every such tensor is held until the
dictionary is written: converting float16 to float32 holds the float32 model (twice the input), float32 to
float16 holds the float16 model (half the input), on top of the mapped input. Measured on base's dims (a
145 MB fp16 file; 226 MB of every peak is PyTorch itself): fp16 -> fp16 384 MB peak RSS, fp16 -> fp32
676 MB.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from whisperctl.models.dims import state_dict_shapes
from whisperctl.models.formats.base import ModelFile
from whisperctl.models.formats.weights import TORCH_DTYPES

__all__ = ["write"]


def write(model: ModelFile, weights: Mapping[str, torch.Tensor], out: Path, *, dtype: str) -> list[Path]:
    """Write ``out`` (a file that does not exist yet) from ``weights`` in openai-whisper's format."""
    target = TORCH_DTYPES[dtype]
    # In openai-whisper's own order (its module order), whatever the source's: the same model and dtype
    # give the same file, so .pt -> hf -> .pt ends where it started, byte for byte.
    canonical = state_dict_shapes(model.dims)
    order = [k for k in canonical if k in model.tensors] + [k for k in model.tensors if k not in canonical]
    state_dict: dict[str, torch.Tensor] = {}
    for name in order:
        state_dict[name] = _alone(weights[name], target)
    # Through a file object, the archive's inner folder is torch's fixed "archive", not derived from the
    # temporary name: the same model gives the same bytes.
    checkpoint: dict[str, object] = {"dims": model.dims.as_dict(), "model_state_dict": state_dict}
    heads = model.alignment_heads
    if heads and set(heads) != set(_default_heads(model)):
        # An extra key that openai-whisper's load_model ignores and whisperctl reads back (heads_origin
        # "checkpoint"), so that a model's heads survive .pt (HF -> .pt -> HF keeps them). The default
        # heads (what a .pt without the key gets) are left out: .pt -> HF -> .pt gives the same file.
        checkpoint["alignment_heads"] = [list(pair) for pair in heads]
    with open(out, "xb") as f:
        torch.save(checkpoint, f)
    return [out]


def _default_heads(model: ModelFile) -> list[tuple[int, int]]:
    """openai-whisper's default alignment heads: every head of the last half of the decoder layers."""
    d = model.dims
    return [(layer, h) for layer in range(d.n_text_layer // 2, d.n_text_layer) for h in range(d.n_text_head)]


def _alone(tensor: torch.Tensor, target: torch.dtype) -> torch.Tensor:
    """``tensor`` in ``target``, with a storage of its own bytes (``torch.save`` writes whole storages)."""
    if tensor.dtype != target:
        return tensor.to(target).contiguous()
    own = tensor.numel() * tensor.element_size()
    if tensor.is_contiguous() and tensor.storage_offset() == 0 and tensor.untyped_storage().nbytes() == own:
        return tensor
    return tensor.contiguous().clone()

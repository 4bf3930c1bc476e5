"""A :class:`~.base.ModelFile`'s tensors as PyTorch tensors, mapped from its files, in openai-whisper's names.

The mapping is :mod:`.arrays`'s: each tensor here is ``torch.from_numpy`` of its numpy view (the same
memory, no copy), a bfloat16 one viewed back from its ``uint16`` bits; a tensor only PyTorch can read (a
pickled one without a span) is PyTorch's own, through the weights-only loader with ``mmap=True``. The
mappings live as long as the tensors do.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from whisperctl.models.formats.arrays import Arrays, torch_load
from whisperctl.models.formats.base import ModelFile

__all__ = ["TORCH_DTYPES", "Weights", "open_weights", "torch_load"]

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

    Raises :class:`~whisperctl.errors.IntegrityError` (exit 4) when a file changed since it was read
    (shorter than a span) or PyTorch refuses a pickle.
    """
    return Weights(model)


class Weights(Mapping[str, torch.Tensor]):
    """A model's tensors, made when asked for, as :class:`.arrays.Arrays` makes them: a view of the mapped
    file is made once and kept, a misaligned tensor is copied anew at each access and not kept (a change
    made in place to such a copy is therefore not kept either)."""

    def __init__(self, model: ModelFile) -> None:
        self.model = model
        self.arrays = Arrays(model)
        self._tensors: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._tensors.get(name)
        if tensor is not None:
            return tensor
        array = self.arrays.raw(name)  # KeyError for a name the model does not have
        if self.model.tensors[name].dtype == "bfloat16":
            tensor = torch.from_numpy(array.view("<i2")).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(array)
        if self.arrays.kept(name):
            self._tensors[name] = tensor
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self.model.tensors)

    def __len__(self) -> int:
        return len(self.model.tensors)

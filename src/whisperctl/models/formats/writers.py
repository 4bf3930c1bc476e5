"""The writers of every format, by name: the module that writes it and the extra it needs.

A writer module is imported only when a conversion to its format starts (it imports numpy, and maybe
tokenizers; only ``openai``'s imports PyTorch, for ``torch.save``). Each keeps one contract::

    def write(model: ModelFile, weights: Mapping[str, Any], out: Path, *, dtype: str) -> list[Path]

``weights`` are numpy arrays by openai-whisper name (:func:`.arrays.open_arrays`; a writer also takes CPU
PyTorch tensors, through ``numpy.asarray``).
``out`` is a fresh temporary path chosen by the conversion (an empty directory for ``hf`` and ``ct2``, a file
path that does not exist yet for ``openai`` and ``ggml``); ``dtype`` is ``"float16"`` or ``"float32"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from whisperctl.errors import TorchMissingError, UsageError
from whisperctl.models.formats.base import FormatName, ModelFile

__all__ = ["WRITERS", "Writer", "WriterSpec", "dependency_error", "load_writer"]


class Writer(Protocol):
    def __call__(
        self, model: ModelFile, weights: Mapping[str, Any], out: Path, *, dtype: str
    ) -> list[Path]: ...


@dataclass(frozen=True)
class WriterSpec:
    module: str  # imported by name when used
    extra: str | None  # the whisperctl extra that installs what it needs (None: nothing, or PyTorch)
    directory: bool  # writes a directory (True) or one file


WRITERS: dict[FormatName, WriterSpec] = {
    "openai": WriterSpec("whisperctl.models.formats.openai_write", None, directory=False),
    "hf": WriterSpec("whisperctl.models.formats.hf_write", "hf", directory=True),
    "ct2": WriterSpec("whisperctl.models.formats.ct2_write", "ct2", directory=True),
    "ggml": WriterSpec("whisperctl.models.formats.ggml_write", None, directory=False),
}


def load_writer(fmt: FormatName) -> Writer:
    """The ``write`` function of ``fmt``'s writer; a missing dependency is one :class:`UsageError` line."""
    spec = WRITERS[fmt]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        if exc.name == spec.module:
            raise UsageError(
                f"converting to {fmt}: this whisperctl has no {fmt} writer ({spec.module})"
            ) from None
        raise dependency_error(fmt, exc) from None
    return cast(Writer, module.write)


def dependency_error(fmt: FormatName, exc: ImportError) -> UsageError:
    """The one line for a writer's missing library: the ``pip install`` that brings it."""
    purpose = f"converting to {fmt}"
    missing = (exc.name or "").split(".")[0]
    if missing == "torch":
        return TorchMissingError(purpose)
    extra = WRITERS[fmt].extra
    install = f"'whisperctl[{extra}]'" if extra else (missing or "its dependencies")
    return UsageError(f"{purpose} needs {missing or 'a library that is missing'}: pip install {install}")

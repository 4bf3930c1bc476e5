"""Every Whisper checkpoint format, read into one :class:`~.base.ModelFile` (and written from one).

One module per format: ``openai`` (``.pt``), ``hf`` (transformers directories), ``ct2`` (CTranslate2
directories), ``ggml`` (whisper.cpp files). Each has ``sniff(head) -> bool`` for a single file's first bytes
and ``read(path) -> ModelFile`` (no PyTorch, headers only); writers live beside them and take numpy arrays
(:mod:`.arrays`); only ``openai``'s imports PyTorch.
:func:`read_model` picks the reader.
"""

from __future__ import annotations

from pathlib import Path

from whisperctl.errors import IntegrityError
from whisperctl.models.formats.base import FORMATS, FormatName, ModelFile, Span, TensorInfo

__all__ = ["FORMATS", "FormatName", "ModelFile", "Span", "TensorInfo", "detect", "read_model"]

_HEAD_BYTES = 64


def detect(path: Path) -> FormatName:
    """The format of a file or directory, from its contents (never its name alone).

    Raises :class:`IntegrityError` (exit 4) naming what the thing is when it is no readable model: a
    CTranslate2 ``model.bin`` or a lone ``.safetensors`` file given without its directory, an empty or
    unknown file.
    """
    from whisperctl.models.formats import ct2, ggml, hf, openai

    if path.is_dir():
        if (path / "model.bin").is_file():
            return "ct2"
        if hf.looks_like(path):
            return "hf"
        raise IntegrityError(
            f"{path}: a directory with no model in it (no model.bin of CTranslate2, no config.json with "
            "safetensors or pytorch_model.bin of Hugging Face); give a model's file or directory"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot be read ({exc.strerror or exc}); check the path") from None
    if ggml.sniff(head):
        return "ggml"
    if ct2.sniff(head):
        raise IntegrityError(
            f"{path}: a CTranslate2 model.bin, which needs the files beside it; give its directory "
            f"({path.parent})"
        )
    if hf.sniff(head):
        raise IntegrityError(
            f"{path}: a safetensors file, which needs the config.json beside it; give its directory "
            f"({path.parent})"
        )
    if openai.sniff(head) or head.startswith(b"\x80") or (head and path.suffix == ".pt"):
        # A bare pickle (a legacy torch.save) or a .pt that is no zip is for the openai reader to name.
        return "openai"
    what = "an empty file" if not head else "not a checkpoint of any format whisperctl reads"
    raise IntegrityError(
        f"{path}: {what} (openai .pt, Hugging Face or CTranslate2 directory, whisper.cpp ggml); "
        "check the path, or download it again"
    )


def read_model(path: Path | str) -> ModelFile:
    """Read any supported model (headers, configs and pickles only; no weights, no PyTorch)."""
    from whisperctl.models.formats import ct2, ggml, hf, openai

    path = Path(path)
    readers = {"openai": openai.read, "hf": hf.read, "ct2": ct2.read, "ggml": ggml.read}
    return readers[detect(path)](path)

"""openai-whisper's tokenizer and mel-filter files, which every written format's tokenizer is built from.

They ship inside the openai-whisper package (``whisper/assets``): ``gpt2.tiktoken`` (English-only models,
``n_vocab`` 51864), ``multilingual.tiktoken`` (the others) and ``mel_filters.npz``. They are found without
importing openai-whisper (which would import PyTorch and numba).
"""

from __future__ import annotations

import base64
import importlib.util
from pathlib import Path

from whisperctl.errors import UsageError

__all__ = ["ENGLISH_VOCAB", "assets_dir", "is_multilingual", "tiktoken_path", "tiktoken_ranks"]

ENGLISH_VOCAB = 51864  # n_vocab of the English-only models; multilingual ones have 51865 (large-v3: 51866)


def is_multilingual(n_vocab: int) -> bool:
    """openai-whisper's own rule (``Whisper.is_multilingual``)."""
    return n_vocab >= 51865


def assets_dir(purpose: str) -> Path:
    """openai-whisper's ``assets`` directory; a missing package is one line naming the install."""
    spec = importlib.util.find_spec("whisper")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "assets"
        if (candidate / "gpt2.tiktoken").is_file():
            return candidate
    raise UsageError(
        f"{purpose} needs openai-whisper's tokenizer files, and openai-whisper is not installed: "
        "pip install openai-whisper"
    )


def tiktoken_path(n_vocab: int, purpose: str) -> Path:
    name = "multilingual.tiktoken" if is_multilingual(n_vocab) else "gpt2.tiktoken"
    return assets_dir(purpose) / name


def tiktoken_ranks(n_vocab: int, purpose: str) -> dict[bytes, int]:
    """The byte-pair ranks (the ordinary tokens, in id order) of the model's tokenizer."""
    path = tiktoken_path(n_vocab, purpose)
    ranks: dict[bytes, int] = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks

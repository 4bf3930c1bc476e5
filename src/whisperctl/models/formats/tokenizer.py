"""The tokenizer and feature-extractor files that transformers and CTranslate2 need, from openai-whisper's.

openai-whisper's tokenizer is tiktoken's byte-pair ranks (``gpt2.tiktoken`` for English-only models,
``multilingual.tiktoken`` for the others) followed by its special tokens in a fixed order. The Hugging Face
files express the same thing as a byte-level BPE: each token's bytes through GPT-2's byte-to-character table,
and one merge per token of two or more bytes (the two parts that BPE, limited to lower ranks, leaves). The
special tokens' ids follow from ``n_vocab`` alone, so writers can compute them without the ranks.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from whisperctl.errors import IntegrityError
from whisperctl.models.formats.assets import assets_dir, tiktoken_ranks

__all__ = [
    "LANGUAGES",
    "SpecialTokens",
    "Vocabulary",
    "preprocessor_config",
    "require_tokenizers",
    "write_hf_tokenizer",
]

# openai-whisper's language codes, in token order (whisper/tokenizer.py LANGUAGES); large-v3 adds "yue".
LANGUAGES = [
    "en",
    "zh",
    "de",
    "es",
    "ru",
    "ko",
    "fr",
    "ja",
    "pt",
    "tr",
    "pl",
    "ca",
    "nl",
    "ar",
    "sv",
    "it",
    "id",
    "hi",
    "fi",
    "vi",
    "he",
    "uk",
    "el",
    "ms",
    "cs",
    "ro",
    "da",
    "hu",
    "ta",
    "no",
    "th",
    "ur",
    "hr",
    "bg",
    "lt",
    "la",
    "mi",
    "ml",
    "cy",
    "sk",
    "te",
    "fa",
    "lv",
    "bn",
    "sr",
    "az",
    "sl",
    "kn",
    "et",
    "mk",
    "br",
    "eu",
    "is",
    "hy",
    "ne",
    "mn",
    "bs",
    "kk",
    "sq",
    "sw",
    "gl",
    "mr",
    "pa",
    "si",
    "km",
    "sn",
    "yo",
    "so",
    "af",
    "oc",
    "ka",
    "be",
    "tg",
    "sd",
    "gu",
    "am",
    "yi",
    "lo",
    "uz",
    "fo",
    "ht",
    "ps",
    "tk",
    "nn",
    "mt",
    "sa",
    "lb",
    "my",
    "bo",
    "tl",
    "mg",
    "as",
    "tt",
    "haw",
    "ln",
    "ha",
    "ba",
    "jw",
    "su",
    "yue",
]
TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>


@dataclass(frozen=True)
class SpecialTokens:
    """The special tokens of a model with ``n_vocab`` tokens, in openai-whisper's order and ids."""

    n_vocab: int

    @property
    def languages(self) -> list[str]:
        return LANGUAGES[:100] if self.n_vocab >= 51866 else LANGUAGES[:99]

    @cached_property
    def names(self) -> list[str]:
        return [
            "<|endoftext|>",
            "<|startoftranscript|>",
            *(f"<|{code}|>" for code in self.languages),
            "<|translate|>",
            "<|transcribe|>",
            "<|startoflm|>",
            "<|startofprev|>",
            "<|nospeech|>",
            "<|notimestamps|>",
            *(f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMPS)),
        ]

    @cached_property
    def eot(self) -> int:
        return self.n_vocab - len(self.names)

    @cached_property
    def ids(self) -> dict[str, int]:
        """Every special token's id, by name."""
        return {name: self.eot + i for i, name in enumerate(self.names)}

    def id(self, name: str) -> int:
        return self.ids[name]

    @property
    def language_ids(self) -> dict[str, int]:
        return {f"<|{code}|>": self.eot + 2 + i for i, code in enumerate(self.languages)}


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (printable Latin-1 bytes stand for themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_CHARS = _byte_chars()
_SPELLING = dict(BYTE_CHARS)  # str.translate's table: code point (= byte) -> character


def bpe(ranks: dict[bytes, int], data: bytes, max_rank: int | None = None) -> list[bytes]:
    """Byte-pair encoding of ``data`` with tiktoken ranks, merging only pairs ranked below ``max_rank``."""
    parts = [data[i : i + 1] for i in range(len(data))]
    limit = sys.maxsize if max_rank is None else max_rank
    get = ranks.get
    while len(parts) > 1:
        best, at = limit, -1
        for i in range(len(parts) - 1):
            rank = get(parts[i] + parts[i + 1], limit)
            if rank < best:
                best, at = rank, i
        if at < 0:
            break
        parts[at : at + 2] = [parts[at] + parts[at + 1]]
    return parts


class Vocabulary:
    """A model's whole vocabulary: openai-whisper's ranks and special tokens, as Hugging Face spells it."""

    def __init__(self, n_vocab: int, purpose: str) -> None:
        self.n_vocab = n_vocab
        self.ranks = tiktoken_ranks(n_vocab, purpose)
        self.special = SpecialTokens(n_vocab)
        if len(self.ranks) != self.special.eot:
            raise IntegrityError(
                f"n_vocab {n_vocab} does not fit openai-whisper's tokenizer ({len(self.ranks)} tokens and "
                f"{len(self.special.names)} special ones); whisperctl writes standard Whisper tokenizers"
            )

    @staticmethod
    def spell(token: bytes) -> str:
        return token.decode("latin-1").translate(_SPELLING)

    @cached_property
    def tokens(self) -> list[str]:
        """Every token's string in id order, special tokens included (CTranslate2's vocabulary)."""
        ordinary = sorted(self.ranks.items(), key=lambda item: item[1])
        return [self.spell(t) for t, _ in ordinary] + self.special.names

    @cached_property
    def merges(self) -> list[tuple[str, str]]:
        """One merge per multi-byte token, in rank order: the two tokens that byte-pair encoding with the
        ranks below the token's own joins last into it.

        Those two tokens both rank below it; where only one split of the token into two such tokens exists
        (about half of the vocabulary), it is that split and the encoding is not run."""
        out = []
        ranks = self.ranks
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            if len(token) < 2:
                continue
            splits = [
                i
                for i in range(1, len(token))
                if ranks.get(token[:i], rank) < rank and ranks.get(token[i:], rank) < rank
            ]
            if len(splits) == 1:
                parts = [token[: splits[0]], token[splits[0] :]]
            else:
                parts = bpe(ranks, token, max_rank=rank)
            if len(parts) != 2:
                raise IntegrityError(f"openai-whisper's token {token!r} is not one merge of two tokens")
            out.append((self.spell(parts[0]), self.spell(parts[1])))
        return out

    def encode_piece(self, text: str) -> list[int]:
        """Token ids of one pre-token (no splitting on spaces or classes: for short symbols only)."""
        return [self.ranks[p] for p in bpe(self.ranks, text.encode("utf-8"))]

    @cached_property
    def non_speech(self) -> list[int]:
        """openai-whisper's ``Tokenizer.non_speech_tokens``, which decoding suppresses."""
        symbols = [*'"#()*+/:;<=>@[\\]^_`{|}~「」『』']
        symbols += [
            "<<",
            ">>",
            "<<<",
            ">>>",
            "--",
            "---",
            "-(",
            "-[",
            "('",
            '("',
            "((",
            "))",
            "(((",
            ")))",
            "[[",
            "]]",
            "{{",
            "}}",
            "♪♪",
            "♪♪♪",
        ]
        miscellaneous = [*"♩♪♫♬♭♮♯"]
        result = {self.encode_piece(" -")[0], self.encode_piece(" '")[0]}
        for symbol in symbols + miscellaneous:
            for ids in (self.encode_piece(symbol), self.encode_piece(" " + symbol)):
                if len(ids) == 1 or symbol in miscellaneous:
                    result.add(ids[0])
        return sorted(result)

    @cached_property
    def suppress_tokens(self) -> list[int]:
        """What openai-whisper's decoding suppresses by default: the non-speech tokens and the task tokens
        (``DecodingTask._get_suppress_tokens``), as transformers' and CTranslate2's configs list them."""
        names = (
            "<|startoftranscript|>",
            "<|translate|>",
            "<|transcribe|>",
            "<|startoflm|>",
            "<|startofprev|>",
        )
        tasks = [self.special.id(n) for n in (*names, "<|nospeech|>")]
        return sorted({*self.non_speech, *tasks})


def preprocessor_config(n_mels: int) -> dict[str, Any]:
    """WhisperFeatureExtractor's settings (30 s windows of 16 kHz audio, 10 ms hops)."""
    return {
        "chunk_length": 30,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": n_mels,
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "WhisperProcessor",
        "return_attention_mask": False,
        "sampling_rate": 16000,
    }


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def require_tokenizers(fmt: str) -> None:
    """Raise :class:`~whisperctl.errors.UsageError` naming the extra to install (``fmt``: "hf" or "ct2")
    when the tokenizers library is missing; a writer asks before it reads any weights."""
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        from whisperctl.errors import UsageError

        raise UsageError(f"converting to {fmt} needs tokenizers: pip install 'whisperctl[{fmt}]'") from None


def tokenizer_json(vocab: Vocabulary, out: Path, fmt: str) -> Path:
    """``tokenizer.json`` (the tokenizers library's own file), which transformers and faster-whisper read.

    ``fmt`` ("hf" or "ct2") names the extra to install when the tokenizers library is missing.
    """
    require_tokenizers(fmt)
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    ordinary = {t: i for i, t in enumerate(vocab.tokens[: vocab.special.eot])}
    tok = Tokenizer(models.BPE(vocab=ordinary, merges=vocab.merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    names = vocab.special.names
    timestamps = set(names[-TIMESTAMPS:])
    tok.add_tokens([AddedToken(n, special=n not in timestamps, normalized=False) for n in names])
    sot, eot, nots = "<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{sot} {nots} $A:0 {eot}",
        pair=f"{sot} {nots} $A:0 $B:1 {eot}",
        special_tokens=[(n, vocab.special.id(n)) for n in (sot, nots, eot)],
    )
    path = out / "tokenizer.json"
    tok.save(str(path))
    return path


def write_hf_tokenizer(vocab: Vocabulary, out: Path) -> list[Path]:
    """Every tokenizer file of a transformers Whisper directory."""
    eot = "<|endoftext|>"
    written = [
        tokenizer_json(vocab, out, "hf"),
        write_json(out / "vocab.json", {t: i for i, t in enumerate(vocab.tokens[: vocab.special.eot])}),
    ]
    merges = out / "merges.txt"
    merges.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in vocab.merges), encoding="utf-8")
    written.append(merges)
    specials = vocab.special.names[:-TIMESTAMPS]
    written.append(
        write_json(out / "added_tokens.json", {n: vocab.special.id(n) for n in vocab.special.names})
    )
    common = {"bos_token": eot, "eos_token": eot, "unk_token": eot, "pad_token": eot}
    written.append(
        write_json(out / "special_tokens_map.json", {**common, "additional_special_tokens": specials})
    )
    config = {
        **common,
        "tokenizer_class": "WhisperTokenizer",
        "additional_special_tokens": specials,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": 1024,
        "processor_class": "WhisperProcessor",
    }
    written.append(write_json(out / "tokenizer_config.json", config))
    english = assets_dir("writing a tokenizer").parent / "normalizers" / "english.json"
    if english.is_file():
        written.append(Path(shutil.copyfile(english, out / "normalizer.json")))
    return written

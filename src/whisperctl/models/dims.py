"""Whisper model dimensions and exact parameter counts, without PyTorch.

The ten fields and their names are those of the ``dims`` dictionary stored in every official checkpoint
(openai-whisper 20250625, ``whisper/model.py``). Parameter counts follow the architecture of that release:
they count ``nn.Parameter`` tensors only, so the encoder's sinusoidal positional embedding and the decoder's
causal mask (buffers) are excluded, while the decoder's learned positional embedding is included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["DIMS_FIELDS", "ModelDimensions", "ParameterCounts", "count_parameters", "state_dict_shapes"]


@dataclass(frozen=True)
class ModelDimensions:
    """The ten integers that define a Whisper transformer."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ModelDimensions:
        """Build from a checkpoint's ``dims`` dictionary; raise ``ValueError`` naming what is wrong."""
        missing = [f for f in DIMS_FIELDS if f not in data]
        unexpected = sorted(str(k) for k in data if k not in DIMS_FIELDS)
        bad = [
            f"{f}={data[f]!r}"
            for f in DIMS_FIELDS
            if f in data and (type(data[f]) is not int or data[f] <= 0)
        ]
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected {', '.join(unexpected)}")
        if bad:
            problems.append(f"not positive integers: {', '.join(bad)}")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(**{f: int(data[f]) for f in DIMS_FIELDS})

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in DIMS_FIELDS}


DIMS_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ModelDimensions))


@dataclass(frozen=True)
class ParameterCounts:
    encoder: int
    decoder: int

    @property
    def total(self) -> int:
        return self.encoder + self.decoder

    def as_dict(self) -> dict[str, int]:
        return {"encoder": self.encoder, "decoder": self.decoder, "total": self.total}


def _block(n: int, *, cross: bool) -> int:
    # Attention: query, value and out have biases, key has none -> 4n^2 + 3n; each LayerNorm 2n;
    # MLP n -> 4n -> n -> 8n^2 + 5n. A decoder block adds cross-attention and its LayerNorm.
    attention = 4 * n * n + 3 * n
    layer_norm = 2 * n
    mlp = 8 * n * n + 5 * n
    own = attention + layer_norm + mlp + layer_norm
    return own + (attention + layer_norm if cross else 0)


def count_parameters(dims: ModelDimensions) -> ParameterCounts:
    """Exact number of trainable parameters of the encoder and the decoder."""
    a = dims.n_audio_state
    encoder = (
        (dims.n_mels * a * 3 + a)  # conv1, kernel 3
        + (a * a * 3 + a)  # conv2, kernel 3
        + dims.n_audio_layer * _block(a, cross=False)
        + 2 * a  # ln_post
    )
    t = dims.n_text_state
    decoder = (
        dims.n_vocab * t  # token_embedding, tied to the output projection
        + dims.n_text_ctx * t  # learned positional_embedding
        + dims.n_text_layer * _block(t, cross=True)
        + 2 * t  # ln
    )
    return ParameterCounts(encoder=encoder, decoder=decoder)


def _block_shapes(prefix: str, n: int, *, cross: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for attn in ("attn", "cross_attn") if cross else ("attn",):
        for proj in ("query", "key", "value", "out"):
            shapes[f"{prefix}{attn}.{proj}.weight"] = (n, n)
            if proj != "key":  # the key projection has no bias
                shapes[f"{prefix}{attn}.{proj}.bias"] = (n,)
        shapes[f"{prefix}{attn}_ln.weight"] = shapes[f"{prefix}{attn}_ln.bias"] = (n,)
    shapes[f"{prefix}mlp.0.weight"], shapes[f"{prefix}mlp.0.bias"] = (4 * n, n), (4 * n,)
    shapes[f"{prefix}mlp.2.weight"], shapes[f"{prefix}mlp.2.bias"] = (n, 4 * n), (n,)
    shapes[f"{prefix}mlp_ln.weight"] = shapes[f"{prefix}mlp_ln.bias"] = (n,)
    return shapes


def state_dict_shapes(dims: ModelDimensions) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of a checkpoint's ``model_state_dict`` for these dims (a strict load's contract).

    Besides the parameters this holds the encoder's ``positional_embedding``, a persistent buffer.
    """
    a, t = dims.n_audio_state, dims.n_text_state
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.positional_embedding": (dims.n_audio_ctx, a),
        "encoder.conv1.weight": (a, dims.n_mels, 3),
        "encoder.conv1.bias": (a,),
        "encoder.conv2.weight": (a, a, 3),
        "encoder.conv2.bias": (a,),
    }
    for i in range(dims.n_audio_layer):
        shapes.update(_block_shapes(f"encoder.blocks.{i}.", a, cross=False))
    shapes["encoder.ln_post.weight"] = shapes["encoder.ln_post.bias"] = (a,)
    shapes["decoder.positional_embedding"] = (dims.n_text_ctx, t)
    shapes["decoder.token_embedding.weight"] = (dims.n_vocab, t)
    for i in range(dims.n_text_layer):
        shapes.update(_block_shapes(f"decoder.blocks.{i}.", t, cross=True))
    shapes["decoder.ln.weight"] = shapes["decoder.ln.bias"] = (t,)
    return shapes

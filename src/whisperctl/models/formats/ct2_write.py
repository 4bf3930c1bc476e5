"""Write a CTranslate2 Whisper directory that ``ctranslate2.models.Whisper`` and faster-whisper load offline.

The model is described with CTranslate2's own spec API (``ctranslate2.specs.WhisperSpec``), which fuses the
attention projections, aliases duplicates and serializes ``model.bin`` and ``config.json`` as CTranslate2's
converters do. The spec holds the model's tensors until it is saved (its API has no streaming), fused ones as
copies. The tokenizer (``tokenizer.json``, the vocabulary) and ``preprocessor_config.json`` come from
:mod:`.tokenizer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whisperctl.errors import UsageError
from whisperctl.models.formats.base import ModelFile
from whisperctl.models.formats.tokenizer import Vocabulary, preprocessor_config, tokenizer_json, write_json

if TYPE_CHECKING:
    import torch

__all__ = ["write"]


def _spec(model: ModelFile, w: Mapping[str, torch.Tensor], dtype: str) -> Any:
    try:
        import torch
        from ctranslate2.specs import whisper_spec  # type: ignore[import-untyped]
    except ImportError:
        raise UsageError("converting to ct2 needs ctranslate2: pip install 'whisperctl[ct2]'") from None
    target = {"float16": torch.float16, "float32": torch.float32}[dtype]
    d = model.dims

    def t(name: str) -> torch.Tensor:
        return w[name].detach().to("cpu", target)

    def linear(spec: Any, name: str) -> None:
        spec.weight, spec.bias = t(f"{name}.weight"), t(f"{name}.bias")

    def norm(spec: Any, name: str) -> None:
        spec.gamma, spec.beta = t(f"{name}.weight"), t(f"{name}.bias")

    def fused(spec: Any, prefix: str, projs: tuple[str, ...]) -> None:
        spec.weight = torch.cat([t(f"{prefix}.{p}.weight") for p in projs])
        # openai-whisper's key projection has no bias: CTranslate2's fused bias holds zeros there.
        biases = [
            torch.zeros(w[f"{prefix}.{p}.weight"].shape[0], dtype=target)
            if p == "key"
            else t(f"{prefix}.{p}.bias")
            for p in projs
        ]
        spec.bias = torch.cat(biases)

    spec = whisper_spec.WhisperSpec(d.n_audio_layer, d.n_audio_head, d.n_text_layer, d.n_text_head)
    enc, dec = spec.encoder, spec.decoder
    linear(enc.conv1, "encoder.conv1")
    linear(enc.conv2, "encoder.conv2")
    enc.position_encodings.encodings = t("encoder.positional_embedding")
    norm(enc.layer_norm, "encoder.ln_post")
    dec.embeddings.weight = t("decoder.token_embedding.weight")
    dec.projection.weight = dec.embeddings.weight  # tied: saved as an alias
    dec.position_encodings.encodings = t("decoder.positional_embedding")
    norm(dec.layer_norm, "decoder.ln")
    for side, layers in (("encoder", enc.layer), ("decoder", dec.layer)):
        for i, layer in enumerate(layers):
            p = f"{side}.blocks.{i}"
            fused(layer.self_attention.linear[0], f"{p}.attn", ("query", "key", "value"))
            linear(layer.self_attention.linear[1], f"{p}.attn.out")
            norm(layer.self_attention.layer_norm, f"{p}.attn_ln")
            if side == "decoder":
                linear(layer.attention.linear[0], f"{p}.cross_attn.query")
                fused(layer.attention.linear[1], f"{p}.cross_attn", ("key", "value"))
                linear(layer.attention.linear[2], f"{p}.cross_attn.out")
                norm(layer.attention.layer_norm, f"{p}.cross_attn_ln")
            linear(layer.ffn.linear_0, f"{p}.mlp.0")
            linear(layer.ffn.linear_1, f"{p}.mlp.2")
            norm(layer.ffn.layer_norm, f"{p}.mlp_ln")
    return spec


def write(model: ModelFile, weights: Mapping[str, torch.Tensor], out: Path, *, dtype: str) -> list[Path]:
    """``model.bin``, ``config.json``, the vocabulary, ``tokenizer.json`` and ``preprocessor_config.json``."""
    spec = _spec(model, weights, dtype)
    vocab = Vocabulary(model.dims.n_vocab, "converting to ct2")
    d = model.dims
    heads = model.alignment_heads
    if heads is None:  # openai-whisper's default: every head of the last half of the decoder layers
        heads = tuple(
            (layer, h) for layer in range(d.n_text_layer // 2, d.n_text_layer) for h in range(d.n_text_head)
        )
    spec.config.alignment_heads = [list(p) for p in heads]
    spec.config.lang_ids = sorted(vocab.special.language_ids.values())
    spec.config.suppress_ids = vocab.suppress_tokens
    spec.config.suppress_ids_begin = [vocab.encode_piece(" ")[0], vocab.special.eot]
    spec.register_vocabulary(vocab.tokens)
    spec.validate()
    spec.optimize(quantization=dtype)
    spec.save(str(out))
    written = [out / "model.bin", out / "config.json"]
    written += sorted(p for p in out.iterdir() if p.name.startswith("vocabulary"))
    written.append(tokenizer_json(vocab, out, "ct2"))
    written.append(write_json(out / "preprocessor_config.json", preprocessor_config(d.n_mels)))
    return written

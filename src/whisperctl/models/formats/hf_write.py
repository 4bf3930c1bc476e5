"""Write a transformers Whisper directory that ``from_pretrained`` and the ASR pipeline load offline.

``model.safetensors`` is written here, streaming, with numpy (no PyTorch): the header is computed from the
shapes, then each tensor is cast and written on its own. (safetensors' ``save_file`` takes a dict of every
tensor and builds the whole file's bytes in memory first: a second copy of the model.) The configs follow
transformers' ``WhisperConfig`` and ``GenerationConfig``; the tokenizer and feature-extractor files come from
:mod:`.tokenizer`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from math import prod
from pathlib import Path
from typing import Any

from whisperctl.models.formats.arrays import NUMPY_DTYPES, PageReleaser, as_dtype
from whisperctl.models.formats.base import ModelFile
from whisperctl.models.formats.hf import openai_name
from whisperctl.models.formats.output import OutputFile
from whisperctl.models.formats.tokenizer import (
    SpecialTokens,
    Vocabulary,
    preprocessor_config,
    require_tokenizers,
    write_hf_tokenizer,
    write_json,
)

__all__ = ["hf_name", "write"]

_SAFETENSORS = {"float16": "F16", "float32": "F32"}


def hf_name(name: str) -> str:
    """transformers' name of an openai-whisper tensor (the inverse of :func:`.hf.openai_name`)."""
    side, _, rest = name.partition(".")
    if rest == "positional_embedding":
        return f"model.{side}.embed_positions.weight"
    top = {
        "conv1": "conv1",
        "conv2": "conv2",
        "ln_post": "layer_norm",
        "ln": "layer_norm",
        "token_embedding": "embed_tokens",
    }
    stem, _, leaf = rest.rpartition(".")
    if stem in top:
        return f"model.{side}.{top[stem]}.{leaf}"
    _, index, inner = stem.split(".", 2)  # blocks.N.<inner>
    parts = {
        "attn_ln": "self_attn_layer_norm",
        "cross_attn_ln": "encoder_attn_layer_norm",
        "mlp.0": "fc1",
        "mlp.2": "fc2",
        "mlp_ln": "final_layer_norm",
    }
    if inner in parts:
        mapped = parts[inner]
    else:
        attn, proj = inner.split(".")
        projs = {"query": "q_proj", "key": "k_proj", "value": "v_proj", "out": "out_proj"}
        mapped = f"{'self_attn' if attn == 'attn' else 'encoder_attn'}.{projs[proj]}"
    hf = f"model.{side}.layers.{index}.{mapped}.{leaf}"
    if openai_name(hf) != name:
        raise ValueError(f"{name} has no transformers name")
    return hf


def config(model: ModelFile, dtype: str) -> dict[str, Any]:
    """``config.json``: transformers' ``WhisperConfig`` for these dims."""
    d, special = model.dims, SpecialTokens(model.dims.n_vocab)
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "activation_function": "gelu",
        "d_model": d.n_audio_state,
        "num_mel_bins": d.n_mels,
        "encoder_layers": d.n_audio_layer,
        "encoder_attention_heads": d.n_audio_head,
        "encoder_ffn_dim": 4 * d.n_audio_state,
        "decoder_layers": d.n_text_layer,
        "decoder_attention_heads": d.n_text_head,
        "decoder_ffn_dim": 4 * d.n_text_state,
        "max_source_positions": d.n_audio_ctx,
        "max_target_positions": d.n_text_ctx,
        "vocab_size": d.n_vocab,
        "num_hidden_layers": d.n_audio_layer,
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": special.eot,
        "eos_token_id": special.eot,
        "pad_token_id": special.eot,
        "decoder_start_token_id": special.id("<|startoftranscript|>"),
        "dtype": dtype,
        "torch_dtype": dtype,  # the name transformers 4 reads (5 reads dtype, and this one silently)
    }


def generation_config(model: ModelFile, vocab: Vocabulary) -> dict[str, Any]:
    """``generation_config.json``: decoding defaults, token tables and the alignment heads."""
    special, d = vocab.special, model.dims
    multilingual = d.n_vocab >= 51865
    heads = model.alignment_heads
    if heads is None:  # openai-whisper's default: every head of the last half of the decoder layers
        heads = tuple(
            (layer, h) for layer in range(d.n_text_layer // 2, d.n_text_layer) for h in range(d.n_text_head)
        )
    data: dict[str, Any] = {
        "alignment_heads": [list(p) for p in heads],
        "begin_suppress_tokens": [vocab.encode_piece(" ")[0], special.eot],
        "bos_token_id": special.eot,
        "decoder_start_token_id": special.id("<|startoftranscript|>"),
        "eos_token_id": special.eot,
        "pad_token_id": special.eot,
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": d.n_text_ctx,
        "no_timestamps_token_id": special.id("<|notimestamps|>"),
        "prev_sot_token_id": special.id("<|startofprev|>"),
        "return_timestamps": False,
        "suppress_tokens": vocab.suppress_tokens,
    }
    if multilingual:
        data["lang_to_id"] = special.language_ids
        data["task_to_id"] = {
            "transcribe": special.id("<|transcribe|>"),
            "translate": special.id("<|translate|>"),
        }
    return data


def write_safetensors(
    path: Path,
    weights: Mapping[str, Any],
    dtype: str,
    release: Callable[[Any], None] | None = None,
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    meanwhile: Callable[[], object] | None = None,
) -> Path:
    """``weights`` (openai names; numpy arrays or CPU tensors) as a safetensors file in transformers' names,
    one tensor at a time; ``release`` is given each source array once written (a writer drops its pages of
    the mapped input). ``shapes`` (by the same names) spares the header a first access to every array.
    ``meanwhile`` runs on another thread while the file is made durable (:meth:`.OutputFile.finish_while`);
    its exception is raised here."""
    itemsize = NUMPY_DTYPES[dtype].itemsize
    names = sorted(weights, key=hf_name)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:
        shape = tuple(shapes[name]) if shapes is not None else tuple(weights[name].shape)
        nbytes = prod(shape) * itemsize
        header[hf_name(name)] = {
            "dtype": _SAFETENSORS[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data then starts 8-byte aligned, as the library writes it
    with OutputFile(path, size_hint=8 + len(raw) + offset) as f:  # hashed as written; digest to SHA256SUMS
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in names:
            source = weights[name]
            array = as_dtype(source, dtype)
            if shapes is not None and array.shape != tuple(shapes[name]):
                raise ValueError(f"{name} is {list(array.shape)}, its header says {list(shapes[name])}")
            f.write(array.reshape(-1).view("u1").data)
            if release is not None:
                release(source)
            del array, source
        if meanwhile is not None:
            f.finish_while(meanwhile)
    return path


def write(model: ModelFile, weights: Mapping[str, Any], out: Path, *, dtype: str) -> list[Path]:
    """Every file of a transformers Whisper directory under ``out`` (an empty directory)."""
    vocab = Vocabulary(model.dims.n_vocab, "converting to hf")
    require_tokenizers("hf")  # known before the weights are read
    written = [
        write_json(out / "config.json", config(model, dtype)),
        write_json(out / "generation_config.json", generation_config(model, vocab)),
        write_json(out / "preprocessor_config.json", preprocessor_config(model.dims.n_mels)),
    ]
    tokenizer: list[Path] = []
    written.append(
        write_safetensors(
            out / "model.safetensors",
            weights,
            dtype,
            PageReleaser(model.files),
            shapes={name: t.shape for name, t in model.tensors.items()},
            meanwhile=lambda: tokenizer.extend(write_hf_tokenizer(vocab, out)),
        )
    )
    return written + tokenizer

"""Hugging Face transformers Whisper directories: ``config.json`` with safetensors or ``pytorch_model.bin``.

The weights are ``model.safetensors``, or shards named by ``model.safetensors.index.json``, or a
``pytorch_model.bin`` pickle zip (read by :mod:`whisperctl.models.checkpoint`'s restricted unpickler; its
contiguous tensors have spans, as a ``.pt``'s, and PyTorch's weights-only loader reads any other). A
safetensors header is parsed here, with every offset checked against the file, so that nothing past the file
is ever mapped. Tensor names are
translated to openai-whisper's (``model.encoder.layers.0.self_attn.q_proj.weight`` ->
``encoder.blocks.0.attn.query.weight``); the tied output projection ``proj_out.weight`` is dropped.
"""

from __future__ import annotations

import json
import re
from math import prod
from pathlib import Path
from typing import Any

from whisperctl.errors import IntegrityError, sanitized
from whisperctl.models.checkpoint import read_state_dict
from whisperctl.models.dims import ModelDimensions, count_parameters
from whisperctl.models.formats.base import DTYPE_SIZES, ModelFile, Span, TensorInfo
from whisperctl.models.formats.openai import tensor_info

__all__ = ["SAFETENSORS_DTYPES", "looks_like", "openai_name", "read", "read_safetensors", "sniff"]

SAFETENSORS_DTYPES: dict[str, str] = {
    "F16": "float16",
    "F32": "float32",
    "BF16": "bfloat16",
    "F64": "float64",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
MAX_JSON = 16 * 1024 * 1024  # config.json, generation_config.json, the shard index
MAX_DIM = 1 << 20  # far above any Whisper dimension; bounds what a hostile config can describe
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "normalizer.json",
    "preprocessor_config.json",
)

_ATTN = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}
_LAYER = {
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
_TOP = {
    "encoder.conv1": "encoder.conv1",
    "encoder.conv2": "encoder.conv2",
    "encoder.layer_norm": "encoder.ln_post",
    "decoder.embed_tokens": "decoder.token_embedding",
    "decoder.layer_norm": "decoder.ln",
}
_BLOCK = re.compile(r"(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)")


def sniff(head: bytes) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON object."""
    if len(head) < 10:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= MAX_HEADER and head[8:10] in (b'{"', b"{ ", b"{\n")


def looks_like(directory: Path) -> bool:
    """A transformers model directory: ``config.json`` and one of the weight files beside it."""
    return (directory / "config.json").is_file() and any((directory / w).is_file() for w in WEIGHTS)


def openai_name(hf: str) -> str | None:
    """openai-whisper's name of a transformers Whisper tensor, or None when there is none."""
    name = hf.removeprefix("model.")
    if name in ("encoder.embed_positions.weight", "decoder.embed_positions.weight"):
        return name.split(".")[0] + ".positional_embedding"
    stem, _, leaf = name.rpartition(".")
    if stem in _TOP and leaf in ("weight", "bias"):
        return f"{_TOP[stem]}.{leaf}"
    m = _BLOCK.fullmatch(name)
    if m is None:
        return None
    side, index, inner, leaf = m.groups()
    if inner in _LAYER:
        return f"{side}.blocks.{index}.{_LAYER[inner]}.{leaf}"
    attn, _, proj = inner.partition(".")
    if attn in ("self_attn", "encoder_attn") and proj in _ATTN:
        block = "attn" if attn == "self_attn" else "cross_attn"
        return f"{side}.blocks.{index}.{block}.{_ATTN[proj]}.{leaf}"
    return None


def _fail(path: Path, what: str, fix: str = "download or convert it again") -> IntegrityError:
    return IntegrityError(f"{path}: {what}; {fix}")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a small file of the model; anything else is one line."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON:
            raise _fail(path, f"{size:,} bytes, far more than a model's JSON file holds")
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})", "check the path") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"not valid JSON ({sanitized(str(exc), 80)})") from None
    if not isinstance(data, dict):
        raise _fail(path, f"holds a JSON {type(data).__name__}, not an object")
    return data


def read_safetensors(path: Path) -> dict[str, Span]:
    """Every tensor of a safetensors file, by its name in the file, checked against the file's size.

    Refused: a header length past the file or above the library's 100 MB limit, a header that is no JSON
    object, unknown dtypes, shapes whose byte count differs from their offsets, offsets out of order,
    overlapping, leaving gaps, or running past the file.
    """
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _fail(path, f"{size} bytes, too short for a safetensors header")
            length = int.from_bytes(prefix, "little")
            if length > MAX_HEADER or 8 + length > size:
                raise _fail(
                    path, f"its header length {length:,} runs past the file ({size:,} bytes; truncated?)"
                )
            raw = f.read(length)
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})", "check the path") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"its safetensors header is not JSON ({sanitized(str(exc), 80)})") from None
    if not isinstance(header, dict):
        raise _fail(path, "its safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    base = 8 + length
    entries = sorted((_entry(path, name, value) for name, value in header.items()), key=lambda e: e[1])
    spans: dict[str, Span] = {}
    cursor = 0
    for name, begin, end, shape, dtype in entries:
        if begin != cursor:
            what = "overlaps the tensor before it" if begin < cursor else "leaves a gap before it"
            raise _fail(path, f"tensor {sanitized(name, 80)} at bytes {begin}..{end} {what}")
        cursor = end
        spans[name] = Span(file=path, offset=base + begin, shape=shape, dtype=dtype)
    if base + cursor != size:
        what = (
            "runs past the end of the file (truncated?)" if base + cursor > size else "ends before the file"
        )
        raise _fail(path, f"its tensors' data ({cursor:,} bytes after the header) {what}")
    return spans


def _entry(path: Path, name: str, value: Any) -> tuple[str, int, int, tuple[int, ...], str]:
    label = sanitized(name, 80)
    if not isinstance(value, dict):
        raise _fail(path, f"header entry {label} is not an object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES:
        raise _fail(path, f"tensor {label} has dtype {sanitized(str(dtype), 20)}, which Whisper never stores")
    if not (isinstance(shape, list) and len(shape) <= 8 and all(type(d) is int and d >= 0 for d in shape)):
        raise _fail(path, f"tensor {label} has a malformed shape {sanitized(str(shape), 60)}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise _fail(path, f"tensor {label} has malformed data_offsets {sanitized(str(offsets), 60)}")
    dt = SAFETENSORS_DTYPES[dtype]
    if prod(shape) * DTYPE_SIZES[dt] != offsets[1] - offsets[0]:
        raise _fail(
            path, f"tensor {label} of shape {shape} ({dt}) does not fill its {offsets[1] - offsets[0]} bytes"
        )
    return name, offsets[0], offsets[1], tuple(shape), dt


def _dims(path: Path, config: dict[str, Any]) -> ModelDimensions:
    where = path / "config.json"
    if config.get("model_type") != "whisper":
        kind = sanitized(str(config.get("model_type")), 40)
        raise _fail(where, f"model_type is {kind}, not whisper", "give a Whisper model")
    keys = (
        "num_mel_bins",
        "max_source_positions",
        "d_model",
        "encoder_attention_heads",
        "encoder_layers",
        "vocab_size",
        "max_target_positions",
        "decoder_attention_heads",
        "decoder_layers",
    )
    bad = [k for k in keys if type(config.get(k)) is not int or not 0 < config[k] <= MAX_DIM]
    if bad:
        shown = ", ".join(f"{k}={sanitized(str(config.get(k)), 20)}" for k in bad[:4])
        raise _fail(where, f"dims missing or out of range: {shown}")
    d = config["d_model"]
    for side in ("encoder", "decoder"):
        ffn = config.get(f"{side}_ffn_dim", 4 * d)
        if ffn != 4 * d:
            raise _fail(
                where,
                f"{side}_ffn_dim is {sanitized(str(ffn), 20)}, not 4 x d_model ({4 * d}), which Whisper's "
                "architecture fixes",
                "whisperctl reads standard Whisper models only",
            )
        heads = config[f"{side}_attention_heads"]
        if d % heads:
            raise _fail(where, f"d_model {d} is not a multiple of {side}_attention_heads {heads}")
    return ModelDimensions(
        n_mels=config["num_mel_bins"],
        n_audio_ctx=config["max_source_positions"],
        n_audio_state=d,
        n_audio_head=config["encoder_attention_heads"],
        n_audio_layer=config["encoder_layers"],
        n_vocab=config["vocab_size"],
        n_text_ctx=config["max_target_positions"],
        n_text_state=d,
        n_text_head=config["decoder_attention_heads"],
        n_text_layer=config["decoder_layers"],
    )


def _inside(directory: Path, name: Any) -> Path:
    """A shard named by the index, refused when the name could lead outside the model's directory."""
    index = directory / "model.safetensors.index.json"
    if not isinstance(name, str) or not name or "\x00" in name:
        raise _fail(index, f"names a shard {sanitized(str(name), 60)}, which is not a file name")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise _fail(index, f"names {sanitized(name, 60)}, a path outside the model's directory", "refused")
    target = directory / rel
    if not target.is_file():
        raise _fail(index, f"names the shard {sanitized(name, 60)}, which is missing", "download it again")
    resolved, home = target.resolve(), directory.resolve()
    # A huggingface_hub snapshot links every file to ../../blobs: the one place outside allowed.
    blobs = home.parent.parent / "blobs" if home.parent.name == "snapshots" else None
    if not (resolved.is_relative_to(home) or (blobs is not None and resolved.is_relative_to(blobs))):
        raise _fail(index, f"names {sanitized(name, 60)}, a link to outside the model's directory", "refused")
    return target


def _shards(directory: Path) -> tuple[list[Path], dict[str, Span]]:
    index = directory / "model.safetensors.index.json"
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise _fail(index, "no weight_map object in the index")
    files: dict[str, Path] = {}
    for name in weight_map.values():
        if not isinstance(name, str) or name not in files:
            files[name] = _inside(directory, name)  # refuses anything but a file name
    spans: dict[str, Span] = {}
    for path in files.values():
        spans.update(read_safetensors(path))
    for tensor, name in weight_map.items():
        if tensor not in spans or spans[tensor].file != files[name]:
            raise _fail(
                index, f"maps {sanitized(tensor, 60)} to {sanitized(name, 60)}, which does not hold it"
            )
    return list(files.values()), spans


def _weights(directory: Path) -> tuple[list[Path], dict[str, TensorInfo]]:
    """The weight files and every tensor in them, by name in the file."""
    if (directory / "model.safetensors").is_file():
        single = directory / "model.safetensors"
        files, spans = [single], read_safetensors(single)
    elif (directory / "model.safetensors.index.json").is_file():
        files, spans = _shards(directory)
    else:
        pickle = directory / "pytorch_model.bin"
        _, metas = read_state_dict(pickle)
        infos = {k: tensor_info(pickle, k, m) for k, m in metas.items()}
        return [pickle], infos
    return files, {k: TensorInfo(shape=s.shape, dtype=s.dtype, source=k, span=s) for k, s in spans.items()}


def _map_names(directory: Path, found: dict[str, TensorInfo], dims: ModelDimensions) -> dict[str, TensorInfo]:
    tensors: dict[str, TensorInfo] = {}
    proj = None
    for source, info in found.items():
        if source.removeprefix("model.") == "proj_out.weight":
            proj = info
            continue
        name = openai_name(source) or source  # unknown: kept, so that the loader names it unexpected
        if name in tensors:
            raise _fail(directory, f"two tensors become {name} ({tensors[name].source} and {source})")
        tensors[name] = info
    embed = tensors.get("decoder.token_embedding.weight")
    if proj is not None and embed is not None and proj.shape != embed.shape:
        raise _fail(
            directory, f"proj_out.weight {list(proj.shape)} is not tied to embed_tokens {list(embed.shape)}"
        )
    expected = {
        "encoder.conv1.weight": (dims.n_audio_state, dims.n_mels, 3),
        "decoder.token_embedding.weight": (dims.n_vocab, dims.n_text_state),
        "decoder.positional_embedding": (dims.n_text_ctx, dims.n_text_state),
        "encoder.positional_embedding": (dims.n_audio_ctx, dims.n_audio_state),
    }
    for name, shape in expected.items():
        if name in tensors and tensors[name].shape != shape:
            raise _fail(
                directory / "config.json",
                f"its dims say {name} is {list(shape)}, the weights hold {list(tensors[name].shape)}",
                "the config and the weights are from different models",
            )
    return tensors


def alignment_heads(
    path: Path, data: dict[str, Any], dims: ModelDimensions
) -> tuple[tuple[int, int], ...] | None:
    """``alignment_heads`` (``[[layer, head], ...]``) of a JSON config within the dims; None if absent."""
    heads = data.get("alignment_heads")
    if heads is None:
        return None
    ok = isinstance(heads, list) and all(
        isinstance(p, list)
        and len(p) == 2
        and all(type(v) is int for v in p)
        and 0 <= p[0] < dims.n_text_layer
        and 0 <= p[1] < dims.n_text_head
        for p in heads
    )
    if not ok:
        raise _fail(
            path, f"alignment_heads {sanitized(str(heads), 60)} are not [layer, head] pairs of the decoder"
        )
    return tuple((p[0], p[1]) for p in heads)


def read(path: Path) -> ModelFile:
    """A transformers Whisper directory, from its config and weight headers (no tensor read)."""
    directory = Path(path)
    config = read_json(directory / "config.json")
    dims = _dims(directory, config)
    files, found = _weights(directory)
    size = sum(f.stat().st_size for f in files)
    total = count_parameters(dims).total
    if total * 2 > size:
        raise _fail(
            directory / "config.json",
            f"its dims describe {total:,} parameters but the weights are {size:,} bytes",
            "the config and the weights are from different models",
        )
    tensors = _map_names(directory, found, dims)
    heads, origin = None, None
    generation = directory / "generation_config.json"
    if generation.is_file():
        heads = alignment_heads(generation, read_json(generation), dims)
        origin = "generation_config.json" if heads is not None else None
    weights = files[0].name if len(files) == 1 else f"{len(files)} safetensors shards"
    details = [("weights", weights)]
    tokenizer = [n for n in TOKENIZER_FILES if (directory / n).is_file()]
    details.append(("tokenizer", ", ".join(tokenizer) if tokenizer else "none"))
    torch_dtype = config.get("torch_dtype", config.get("dtype"))
    if isinstance(torch_dtype, str):
        details.append(("torch_dtype", sanitized(torch_dtype, 20)))
    return ModelFile(
        format="hf",
        path=directory,
        files=tuple(files),
        size_bytes=size,
        dims=dims,
        tensors=tensors,
        alignment_heads=heads,
        heads_origin=origin,
        details=tuple(details),
    )

"""The streaming ct2 writer judged by CTranslate2's own model-spec API: the same ``model.bin``, byte for byte.

The spec is built here as whisperctl's writer built it before it streamed (every variable set on a
``WhisperSpec``, the attention projections fused with ``torch.cat``, the key bias as zeros, the output
projection tied to the embedding), then validated, optimized and saved by CTranslate2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
whisper_spec = pytest.importorskip("ctranslate2.specs.whisper_spec")

from whisperctl.models.formats import ct2, ct2_write, hf  # noqa: E402
from whisperctl.models.formats.base import ModelFile  # noqa: E402
from whisperctl.models.formats.weights import open_weights  # noqa: E402

from .test_formats_hf import random_hf_model  # noqa: E402


def spec_of(model: ModelFile, w: Mapping[str, Any], dtype: str) -> Any:
    """``model`` as a ``WhisperSpec`` whose variables are set, in the target dtype, not yet validated."""
    target = {"float16": torch.float16, "float32": torch.float32}[dtype]
    d = model.dims

    def t(name: str) -> Any:
        return w[name].detach().to("cpu", target)

    def linear(spec: Any, name: str) -> None:
        spec.weight, spec.bias = t(f"{name}.weight"), t(f"{name}.bias")

    def norm(spec: Any, name: str) -> None:
        spec.gamma, spec.beta = t(f"{name}.weight"), t(f"{name}.bias")

    def fused(spec: Any, prefix: str, projs: tuple[str, ...]) -> None:
        spec.weight = torch.cat([t(f"{prefix}.{p}.weight") for p in projs])
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
    dec.projection.weight = dec.embeddings.weight
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


def save_spec(model: ModelFile, dtype: str, out: Path, config: dict[str, Any], tokens: list[str]) -> None:
    """What CTranslate2's spec API writes for ``model`` with ``config``."""
    spec = spec_of(model, open_weights(model), dtype)
    for key, value in config.items():
        setattr(spec.config, key, value)
    spec.register_vocabulary(tokens)
    spec.validate()
    spec.optimize(quantization=dtype)
    spec.save(str(out))


def multilingual_128(seed: int = 3) -> Any:
    """A random large-v3-like model (51866 tokens, 128 mels) with values that test the aliasing rules:
    a -0 bias (equal to the 0 ones), the same NaN bias twice (equal to nothing), and two biases equal only
    once rounded to float16."""
    cfg = transformers.WhisperConfig(
        vocab_size=51866,
        num_mel_bins=128,
        d_model=64,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=2,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        max_source_positions=1500,
        max_target_positions=448,
    )
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    enc, dec = model.model.encoder.layers, model.model.decoder.layers
    with torch.no_grad():
        enc[0].self_attn.out_proj.bias.fill_(-0.0)
        enc[1].self_attn.out_proj.bias.fill_(0.0)
        enc[0].fc2.bias.fill_(float("nan"))
        enc[1].fc2.bias.fill_(float("nan"))
        dec[0].fc2.bias.fill_(1.0)
        dec[1].fc2.bias.fill_(1.0 + 2**-20)  # float16 rounds it to 1.0
        dec[2].self_attn.v_proj.bias.copy_(dec[0].self_attn.v_proj.bias)
    return model


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelFile]:
    pytest.importorskip("whisper")  # openai-whisper's tokenizer assets
    out = {}
    for label, net in (("en", random_hf_model()), ("v3", multilingual_128())):
        src = tmp_path_factory.mktemp(f"hf-{label}")
        net.save_pretrained(src)
        out[label] = hf.read(src)
    return out


@pytest.mark.parametrize("label", ["en", "v3"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_model_bin_is_what_ctranslate2s_spec_api_writes(
    sources: dict[str, ModelFile], label: str, dtype: str, tmp_path: Path
) -> None:
    model = sources[label]
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    paths = ct2_write.write(model, open_weights(model), ours, dtype=dtype)
    config = json.loads((ours / "config.json").read_text("utf-8"))
    tokens = json.loads((ours / "vocabulary.json").read_text("utf-8"))
    assert len(tokens) == model.dims.n_vocab
    save_spec(model, dtype, theirs, config, tokens)
    assert (ours / "model.bin").read_bytes() == (theirs / "model.bin").read_bytes()
    assert config == json.loads((theirs / "config.json").read_text("utf-8"))
    assert tokens == json.loads((theirs / "vocabulary.json").read_text("utf-8"))
    assert {p.name for p in paths} == {p.name for p in ours.iterdir()}
    again = ct2.read(ours)
    assert again.dims == model.dims and again.dtype == dtype


def test_aliases_follow_the_values(sources: dict[str, ModelFile], tmp_path: Path) -> None:
    """The rules the spec judge just confirmed, said plainly: -0 equals 0, NaN equals nothing, float16
    rounding makes equal, the tied projection is always an alias of the embedding."""
    model = sources["v3"]
    _, _, variables, _, _ = ct2._parse(_written(model, tmp_path / "16", "float16") / "model.bin")

    def stored(name: str) -> int:
        return variables[name].offset

    out_bias = "encoder/layer_{}/self_attention/linear_1/bias"
    assert stored(out_bias.format(1)) == stored(out_bias.format(0))
    fc2 = "{}/layer_{}/ffn/linear_1/bias"
    assert stored(fc2.format("encoder", 1)) != stored(fc2.format("encoder", 0))
    assert stored(fc2.format("decoder", 1)) == stored(fc2.format("decoder", 0))
    assert stored("decoder/projection/weight") == stored("decoder/embeddings/weight")
    _, _, variables, _, _ = ct2._parse(_written(model, tmp_path / "32", "float32") / "model.bin")
    assert stored(fc2.format("decoder", 1)) != stored(fc2.format("decoder", 0))


def _written(model: ModelFile, out: Path, dtype: str) -> Path:
    out.mkdir(parents=True)
    ct2_write.write(model, open_weights(model), out, dtype=dtype)
    return out


_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from whisperctl.models.formats import ct2_write, hf
    from whisperctl.models.formats.weights import open_weights
    model = hf.read(Path(sys.argv[1]))
    weights = open_weights(model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ct2_write.write(model, weights, Path(sys.argv[2]), dtype="float16")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before": before * 1024, "after": after * 1024}))
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB and released pages: Linux")
def test_writing_holds_a_chunk_not_the_model(tmp_path: Path) -> None:
    """A 340 MB float32 model written as float16 in a fresh process: its peak resident set grows by less than
    a fixed allowance (the tokenizer's tables, a chunk of the input and its converted copy), a fraction of
    what the model or its output take; the spec API's writer grew by 607 MiB, this one by 80 MiB."""
    pytest.importorskip("whisper")
    cfg = transformers.WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=512,
        encoder_layers=8,
        decoder_layers=8,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
    )
    src, out = tmp_path / "hf", tmp_path / "ct2"
    transformers.WhisperForConditionalGeneration(cfg).save_pretrained(src)
    out.mkdir()
    model = hf.read(src)
    size = sum(4 * t.numel for t in model.tensors.values())
    allowance = 128 << 20
    assert size > 2 * allowance  # holding the model, or its float16 output, would break the bound
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    rss = json.loads(run.stdout.strip().splitlines()[-1])
    assert rss["after"] - rss["before"] < allowance, (rss, size)
    assert ct2.read(out).dims == model.dims

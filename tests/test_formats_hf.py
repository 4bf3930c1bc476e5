"""Hugging Face transformers directories: read (safetensors, shards, .bin), written; transformers judges."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from whisperctl.errors import IntegrityError  # noqa: E402
from whisperctl.models.dims import state_dict_shapes  # noqa: E402
from whisperctl.models.formats import hf, hf_write  # noqa: E402
from whisperctl.models.formats.base import ModelFile  # noqa: E402
from whisperctl.models.formats.weights import open_weights  # noqa: E402
from whisperctl.models.transformer import Whisper  # noqa: E402

HEADS = ((1, 0), (1, 1))


def random_hf_model(seed: int = 0) -> Any:
    """A small random transformers Whisper whose weights fp16 holds exactly (English-only vocabulary)."""
    cfg = transformers.WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        max_source_positions=1500,
        max_target_positions=448,
    )
    torch.manual_seed(seed)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    model.generation_config.alignment_heads = [list(p) for p in HEADS]
    return model


@pytest.fixture(scope="module")
def reference() -> Any:
    return random_hf_model()


@pytest.fixture(scope="module")
def hf_dir(reference: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf")
    reference.save_pretrained(out)
    return out


def whisperctl_model(model: ModelFile) -> Any:
    net = Whisper(model.dims, device="meta")
    net.load_state_dict(open_weights(model), assign=True)
    net.materialize_buffers("cpu")
    return net.eval()


def logits_gap(net: Any, reference: Any) -> float:
    torch.manual_seed(1)
    mel = torch.randn(1, 80, 3000)
    tokens = torch.tensor([[50257, 50362, 400, 500, 600]])
    with torch.no_grad():
        if isinstance(net, transformers.WhisperForConditionalGeneration):
            ours = net(input_features=mel, decoder_input_ids=tokens).logits.float()
        else:
            ours = net(mel, tokens).float()
        theirs = reference(input_features=mel, decoder_input_ids=tokens).logits.float()
    return float((ours - theirs).abs().max())


def test_safetensors_directory_reads_with_dims_tensors_heads(hf_dir: Path, reference: Any) -> None:
    model = hf.read(hf_dir)
    assert hf.looks_like(hf_dir)
    assert hf.sniff((hf_dir / "model.safetensors").read_bytes()[:64])
    d = model.dims
    assert (d.n_mels, d.n_audio_state, d.n_audio_layer, d.n_audio_head, d.n_vocab) == (80, 64, 2, 2, 51864)
    assert (d.n_audio_ctx, d.n_text_ctx, d.n_text_layer, d.n_text_head) == (1500, 448, 2, 2)
    assert {k: t.shape for k, t in model.tensors.items()} == state_dict_shapes(d)
    assert model.alignment_heads == HEADS and model.heads_origin == "generation_config.json"
    assert (
        model.tensors["encoder.blocks.0.attn.query.weight"].source
        == "model.encoder.layers.0.self_attn.q_proj.weight"
    )
    assert logits_gap(whisperctl_model(model), reference) < 1e-4


def test_sharded_directory_reads_the_same_tensors(reference: Any, tmp_path: Path) -> None:
    reference.save_pretrained(tmp_path, max_shard_size="1MB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = hf.read(tmp_path)
    assert len(model.files) > 1
    assert logits_gap(whisperctl_model(model), reference) < 1e-4


def test_pytorch_model_bin_reads_through_the_restricted_unpickler(reference: Any, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(reference.config.to_json_string())
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")  # proj_out.weight included (tied)
    model = hf.read(tmp_path)
    # Every tensor is contiguous in its storage entry: mapped from the file, as a .pt's are.
    assert all(t.span is not None for t in model.tensors.values())
    assert "proj_out.weight" not in model.tensors
    assert logits_gap(whisperctl_model(model), reference) < 1e-4


def test_hf_write_loads_in_transformers_with_equal_logits_and_heads(
    hf_dir: Path, reference: Any, tmp_path: Path
) -> None:
    pytest.importorskip("whisper")
    from safetensors.torch import load_file

    model = hf.read(hf_dir)
    written = hf_write.write(model, open_weights(model), tmp_path, dtype="float16")
    assert {p.name for p in written} >= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    }
    stored = load_file(tmp_path / "model.safetensors")
    assert stored["model.encoder.conv1.weight"].dtype == torch.float16
    loaded = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert [tuple(p) for p in loaded.generation_config.alignment_heads] == list(HEADS)
    assert logits_gap(loaded.float(), reference) < 1e-4  # fp16-exact weights: lossless
    again = hf.read(tmp_path)
    assert again.alignment_heads == HEADS and again.dims == model.dims
    pipe = transformers.pipeline("automatic-speech-recognition", model=str(tmp_path))
    import numpy as np

    result = pipe(np.zeros(16000, dtype=np.float32), generate_kwargs={"max_new_tokens": 4})
    assert isinstance(result["text"], str)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _header(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _rewrite(path: Path, header: dict[str, Any], data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def test_malformed_safetensors_are_one_line(hf_dir: Path, tmp_path: Path) -> None:
    cases: dict[str, Any] = {}
    bad = _copy(hf_dir, tmp_path / "truncated")
    st = bad / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    cases["truncated"] = (bad, "past the end")
    bad = _copy(hf_dir, tmp_path / "length")
    st = bad / "model.safetensors"
    st.write_bytes((10**12).to_bytes(8, "little") + st.read_bytes()[8:])
    cases["length"] = (bad, "header length")
    bad = _copy(hf_dir, tmp_path / "overlap")
    st = bad / "model.safetensors"
    header, data = _header(st)
    entries = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    second = header[entries[1]]
    size = second["data_offsets"][1] - second["data_offsets"][0]
    second["data_offsets"] = [second["data_offsets"][0] - 4, second["data_offsets"][0] - 4 + size]
    _rewrite(st, header, data)
    cases["overlap"] = (bad, "overlaps")
    bad = _copy(hf_dir, tmp_path / "shape")
    config = json.loads((bad / "config.json").read_text())
    config["num_mel_bins"] = 128
    (bad / "config.json").write_text(json.dumps(config))
    cases["shape"] = (bad, "different models")
    bad = _copy(hf_dir, tmp_path / "absurd")
    config["num_mel_bins"], config["d_model"], config["encoder_ffn_dim"], config["decoder_ffn_dim"] = (
        80,
        2**19,
        2**21,
        2**21,
    )
    (bad / "config.json").write_text(json.dumps(config))
    cases["absurd"] = (bad, "parameters but the weights are")
    bad = _copy(hf_dir, tmp_path / "ffn")
    config = json.loads((hf_dir / "config.json").read_text())
    config["encoder_ffn_dim"] = 100
    (bad / "config.json").write_text(json.dumps(config))
    cases["ffn"] = (bad, "not 4 x d_model")
    for label, (path, words) in cases.items():
        with pytest.raises(IntegrityError) as info:
            hf.read(path)
        message = str(info.value)
        assert words in message and "\n" not in message, label
        assert info.value.exit_code == 4


def test_shard_index_naming_missing_or_outside_files_is_refused(reference: Any, tmp_path: Path) -> None:
    good = tmp_path / "good"
    reference.save_pretrained(good, max_shard_size="1MB")
    index = json.loads((good / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(good / index["weight_map"][first], outside)
    for label, name, words in (
        ("missing", "model-00009-of-00009.safetensors", "missing"),
        ("dotdot", "../outside.safetensors", "outside"),
        ("absolute", str(outside), "outside"),
        ("link", "link.safetensors", "link to outside"),
    ):
        bad = _copy(good, tmp_path / label)
        (bad / "link.safetensors").symlink_to(outside)
        changed = {**index, "weight_map": {**index["weight_map"], first: name}}
        (bad / "model.safetensors.index.json").write_text(json.dumps(changed))
        with pytest.raises(IntegrityError) as info:
            hf.read(bad)
        assert words in str(info.value) and "\n" not in str(info.value), label


def test_names_map_both_ways() -> None:
    for name in state_dict_shapes(random_dims()):
        assert hf.openai_name(hf_write.hf_name(name)) == name


def random_dims() -> Any:
    from whisperctl.models.dims import ModelDimensions

    return ModelDimensions(80, 1500, 64, 2, 2, 51864, 448, 64, 2, 2)


def test_special_token_ids_follow_openai_whisper() -> None:
    from whisperctl.models.formats.tokenizer import SpecialTokens

    english, multilingual, v3 = SpecialTokens(51864), SpecialTokens(51865), SpecialTokens(51866)
    assert (english.eot, english.id("<|startoftranscript|>"), english.id("<|notimestamps|>")) == (
        50256,
        50257,
        50362,
    )
    assert (multilingual.eot, multilingual.id("<|transcribe|>"), multilingual.id("<|0.00|>")) == (
        50257,
        50359,
        50364,
    )
    assert multilingual.language_ids["<|en|>"] == 50259 and len(multilingual.language_ids) == 99
    assert v3.language_ids["<|yue|>"] == 50358 and v3.id("<|transcribe|>") == 50360

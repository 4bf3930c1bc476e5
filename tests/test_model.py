"""The transformer against openai-whisper's, on the CPU: same state-dict keys, same numbers."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from dataclasses import replace
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from whisperctl.models import dims as dims_module  # noqa: E402
from whisperctl.models.dims import ModelDimensions, count_parameters  # noqa: E402
from whisperctl.models.registry import Registry  # noqa: E402
from whisperctl.models.transformer import MultiHeadAttention, Whisper, disable_sdpa, sinusoids  # noqa: E402

TINY = Registry().get("tiny").dims
# Not square: head sizes, depths and contexts differ between audio and text, and the text context is
# shorter than the audio one. (The widths cannot differ: cross-attention weights are text x text.)
CUSTOM = ModelDimensions(
    n_mels=80,
    n_audio_ctx=64,
    n_audio_state=64,
    n_audio_head=4,
    n_audio_layer=3,
    n_vocab=300,
    n_text_ctx=40,
    n_text_state=64,
    n_text_head=2,
    n_text_layer=5,
)


def _seeded(model: Any) -> Any:
    """Perturb every parameter so a swapped weight, bias or LayerNorm would show; no gradients."""
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "decoder.positional_embedding":
                param.zero_()  # openai-whisper leaves it uninitialised (torch.empty)
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return model.eval().requires_grad_(False)


def _inputs(dims: ModelDimensions, n_tokens: int = 8) -> tuple[Any, Any]:
    generator = torch.Generator().manual_seed(7)
    mel = torch.randn(2, dims.n_mels, 2 * dims.n_audio_ctx, generator=generator)
    tokens = torch.randint(0, dims.n_vocab, (2, n_tokens), generator=generator)
    return mel, tokens


@pytest.fixture(scope="module", params=[TINY, CUSTOM], ids=["tiny", "custom"])
def pair(request: pytest.FixtureRequest) -> tuple[Any, Whisper, ModelDimensions]:
    """openai-whisper's model with seeded weights, and ours loaded from its state dict."""
    whisper_model = pytest.importorskip("whisper.model")
    dims: ModelDimensions = request.param
    reference = _seeded(whisper_model.Whisper(whisper_model.ModelDimensions(**dims.as_dict())))
    ours = Whisper(dims, device="meta")
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    ours.materialize_buffers()
    return reference, ours.eval(), dims


def test_model_dimensions_is_re_exported() -> None:
    from whisperctl.models import transformer as model

    assert model.ModelDimensions is dims_module.ModelDimensions


def test_state_dict_keys_and_shapes_match_openai(pair: tuple[Any, Whisper, ModelDimensions]) -> None:
    reference, ours, dims = pair
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == expected
    # Checkpoints hold the encoder's sinusoids; ours, computed, are those of openai-whisper bit for bit.
    assert "encoder.positional_embedding" in expected
    computed = Whisper(dims).encoder.positional_embedding
    assert torch.equal(computed, reference.encoder.positional_embedding)
    assert torch.equal(ours.decoder.mask, reference.decoder.mask)
    assert torch.equal(ours.alignment_heads, reference.alignment_heads.to_dense())


def test_forward_matches_openai(pair: tuple[Any, Whisper, ModelDimensions]) -> None:
    reference, ours, dims = pair
    mel, tokens = _inputs(dims)
    with torch.inference_mode():
        audio = ours.embed_audio(mel)
        torch.testing.assert_close(audio, reference.embed_audio(mel), rtol=0, atol=1e-4)
        logits = ours.logits(tokens, audio)
        assert logits.shape == (2, tokens.shape[1], dims.n_vocab)
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, reference.logits(tokens, audio), rtol=0, atol=1e-4)
        torch.testing.assert_close(ours(mel, tokens), logits, rtol=0, atol=1e-4)


def test_kv_cache_decoding_matches_openai(pair: tuple[Any, Whisper, ModelDimensions]) -> None:
    reference, ours, dims = pair
    mel, tokens = _inputs(dims)
    with torch.inference_mode():
        audio = ours.embed_audio(mel)
        full = ours.logits(tokens, audio)
        steps = {}
        for name, model in (("ours", ours), ("openai", reference)):
            cache, hooks = model.install_kv_cache_hooks()
            try:
                # A 3-token prompt, then one token per step, as openai-whisper's decoder does.
                outputs = [model.decoder(tokens[:, :3], audio, kv_cache=cache)]
                outputs += [model.decoder(tokens[:, i : i + 1], audio, kv_cache=cache) for i in range(3, 8)]
            finally:
                for hook in hooks:
                    hook.remove()
            steps[name] = torch.cat(outputs, dim=1)
    torch.testing.assert_close(steps["ours"], steps["openai"], rtol=0, atol=1e-4)
    # Cached decoding against the full forward is a different computation (other matmul shapes, other
    # summation order): logits near 260 then differ by a few fp32 ulps (~1e-4), so allow 1e-6 relative.
    torch.testing.assert_close(steps["ours"], full, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_attention_paths_agree_and_cache_takes_several_tokens(sdpa: bool) -> None:
    model = _seeded(Whisper(CUSTOM))
    mel, tokens = _inputs(CUSTOM)
    with torch.inference_mode():
        audio = model.embed_audio(mel)
        expected = model.logits(tokens, audio)  # SDPA, no cache
        previous = MultiHeadAttention.use_sdpa
        MultiHeadAttention.use_sdpa = sdpa
        cache, hooks = model.install_kv_cache_hooks()
        try:
            # Several new tokens after cached ones need a shifted causal mask (openai-whisper feeds one).
            first = model.logits(tokens[:, :3], audio, kv_cache=cache)
            rest = model.logits(tokens[:, 3:], audio, kv_cache=cache)
        finally:
            MultiHeadAttention.use_sdpa = previous
            for hook in hooks:
                hook.remove()
    torch.testing.assert_close(torch.cat([first, rest], dim=1), expected, rtol=0, atol=1e-4)


def test_disable_sdpa_returns_attention_weights() -> None:
    attention = MultiHeadAttention(64, 2).eval()
    x = torch.randn(1, 5, 64)
    mask = torch.full((5, 5), float("-inf")).triu_(1)
    with torch.inference_mode():
        out, qk = attention(x, mask=mask)
        assert qk is None
        with disable_sdpa():
            explicit, qk = attention(x, mask=mask)
        assert MultiHeadAttention.use_sdpa
    assert qk is not None
    assert qk.shape == (1, 2, 5, 5)
    assert torch.isinf(qk[0, 0, 0, 1:]).all()  # causal
    torch.testing.assert_close(explicit, out, rtol=0, atol=1e-5)


def test_parameter_counts_of_official_models() -> None:
    specs = list(Registry())
    assert len(specs) == 12
    for spec in specs:
        assert spec.dims is not None
        assert spec.parameters is not None
        model = Whisper(spec.dims, device="meta")
        encoder = sum(p.numel() for p in model.encoder.parameters())
        decoder = sum(p.numel() for p in model.decoder.parameters())
        assert (encoder, decoder) == (spec.parameters.encoder, spec.parameters.decoder), spec.name
        assert sum(p.numel() for p in model.parameters()) == spec.parameters.total
        assert all(p.is_meta for p in model.parameters())
        assert model.is_multilingual is not spec.english_only, spec.name
        if spec.name == "tiny":
            assert spec.parameters.total == 37_184_640
        if spec.name == "large-v3":
            assert model.num_languages == 100


def test_meta_build_assign_materialise() -> None:
    source = _seeded(Whisper(CUSTOM))
    state = {k: v.clone() for k, v in source.state_dict().items()}
    model = Whisper(CUSTOM, device="meta")
    model.set_alignment_heads([(4, 1), (2, 0)])
    # What the checkpoint holds waits on meta; what it does not is computed on the CPU.
    assert model.encoder.positional_embedding.is_meta
    assert not model.decoder.mask.is_meta
    assert not model.alignment_heads.is_meta
    with pytest.raises(ValueError, match="meta"):
        model.materialize_buffers()  # the parameters are still on meta
    model.load_state_dict(state, strict=True, assign=True)
    model.materialize_buffers()
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert [name for name, t in tensors.items() if t.is_meta] == []
    assert {t.device.type for t in tensors.values()} == {"cpu"}
    assert model.alignment_heads_pairs() == ((2, 0), (4, 1))  # kept across materialisation
    mel, tokens = _inputs(CUSTOM)
    with torch.inference_mode():
        torch.testing.assert_close(model(mel, tokens), source(mel, tokens), rtol=0, atol=0)


def test_materialise_computes_what_no_state_dict_filled() -> None:
    model = Whisper(CUSTOM, device="meta")
    model.materialize_buffers("cpu")
    assert torch.equal(
        model.encoder.positional_embedding, sinusoids(CUSTOM.n_audio_ctx, CUSTOM.n_audio_state)
    )
    assert model.decoder.mask.device.type == "cpu"


def test_meta_build_does_not_import_dynamo() -> None:
    code = textwrap.dedent(
        """
        import sys
        from whisperctl.models.transformer import Whisper
        from whisperctl.models.registry import Registry
        model = Whisper(Registry().get("large-v3").dims, device="meta")
        print(sorted(m for m in sys.modules if m.startswith("torch._dynamo")))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("how", ["dtype=float16", "half()", "float32 weights"])
def test_fp16_on_cpu_matches_fp32(how: str) -> None:
    reference = _seeded(Whisper(CUSTOM))
    if how == "dtype=float16":  # the loader's way: fp16 parameters, computed buffers stay float32
        model = Whisper(CUSTOM, dtype=torch.float16)
        model.load_state_dict({k: v.half() for k, v in reference.state_dict().items()}, strict=True)
        assert model.encoder.positional_embedding.dtype == torch.float32
    elif how == "half()":
        model = copy.deepcopy(reference).half()
    else:  # openai-whisper's transcribe(fp16=True): fp32 weights, fp16 input
        model = reference
    mel, tokens = _inputs(CUSTOM)
    with torch.inference_mode():
        audio = model.embed_audio(mel.half())
        logits = model.logits(tokens, audio)
        expected_audio = reference.embed_audio(mel)
        expected = reference.logits(tokens, expected_audio)
    assert audio.dtype == torch.float16
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    audio_scale = expected_audio.abs().max().item()
    torch.testing.assert_close(audio.float(), expected_audio, rtol=1e-2, atol=1e-2 * audio_scale)
    torch.testing.assert_close(logits, expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())


def test_alignment_heads_default_set_and_read_back() -> None:
    model = Whisper(CUSTOM, device="meta")
    assert model.alignment_heads.dtype == torch.bool
    assert model.alignment_heads.shape == (5, 2)
    # Last half of the 5 layers (2, 3, 4), all heads, as openai-whisper.
    assert model.alignment_heads_pairs() == ((2, 0), (2, 1), (3, 0), (3, 1), (4, 0), (4, 1))
    assert "alignment_heads" not in model.state_dict()
    model.set_alignment_heads([(3, 1), (0, 0), (3, 1)])
    assert model.alignment_heads_pairs() == ((0, 0), (3, 1))


def test_alignment_heads_of_official_models_round_trip() -> None:
    spec = Registry().get("base")
    assert spec.dims is not None
    assert spec.alignment_heads is not None
    model = Whisper(spec.dims, device="meta")
    model.set_alignment_heads(spec.alignment_heads)
    assert model.alignment_heads_pairs() == spec.alignment_heads


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_audio_state": 96}, "n_audio_state=96 must equal n_text_state=64"),
        ({"n_audio_head": 3}, "n_audio_state=64 is not divisible by n_audio_head=3"),
        ({"n_text_head": 3}, "n_text_state=64 is not divisible by n_text_head=3"),
        ({"n_audio_state": 5, "n_text_state": 5, "n_audio_head": 1, "n_text_head": 1}, "must be even"),
        ({"n_text_layer": 0}, "positive integers: n_text_layer=0"),
    ],
)
def test_bad_dimensions_raise_value_error(changes: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Whisper(replace(CUSTOM, **changes), device="meta")


@pytest.fixture(scope="module")
def small() -> Whisper:
    model: Whisper = _seeded(Whisper(CUSTOM))
    return model


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 128, 128), r"expected a mel spectrogram \(batch, 80, frames\), got shape \(1, 128, 128\)"),
        ((80, 128), "got shape"),
        ((1, 80, 130), "has 130 frames, the encoder takes 128"),
        ((1, 80, 100), "has 100 frames"),
    ],
)
def test_bad_mel_raises_value_error(small: Whisper, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small.embed_audio(torch.zeros(shape))


def test_bad_tokens_raise_value_error(small: Whisper) -> None:
    audio = torch.zeros(1, CUSTOM.n_audio_ctx, CUSTOM.n_audio_state)
    with pytest.raises(ValueError, match="exceed the text context of 40"):
        small.logits(torch.zeros(1, 41, dtype=torch.long), audio)
    with pytest.raises(ValueError, match=r"tokens of shape \(batch, n\)"):
        small.logits(torch.zeros(5, dtype=torch.long), audio)


@pytest.mark.parametrize(
    ("pairs", "message"), [([(5, 0)], r"\(5, 0\) is outside"), ([(0, -1)], "outside"), ([], "at least one")]
)
def test_bad_alignment_heads_raise_value_error(pairs: list[tuple[int, int]], message: str) -> None:
    model = Whisper(CUSTOM, device="meta")
    with pytest.raises(ValueError, match=message):
        model.set_alignment_heads(pairs)


def test_count_parameters_agrees_with_modules() -> None:
    model = Whisper(CUSTOM, device="meta")
    assert sum(p.numel() for p in model.parameters()) == count_parameters(CUSTOM).total


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_meta_load_on_cuda_matches_fp32_cpu() -> None:
    reference = _seeded(Whisper(CUSTOM))
    model = Whisper(CUSTOM, device="meta")
    state = {k: v.half().cuda() for k, v in reference.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.materialize_buffers()
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"cuda"}
    mel, tokens = _inputs(CUSTOM)
    with torch.inference_mode():
        logits = model(mel.half().cuda(), tokens.cuda()).cpu()
        expected = reference(mel, tokens)
    torch.testing.assert_close(logits, expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())

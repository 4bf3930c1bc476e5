# mypy: allow-subclassing-any
# (torch is not followed by mypy, so nn.Module is Any; every module here subclasses it.)
"""The Whisper encoder-decoder transformer (openai-whisper 20250625 architecture), without any I/O.

Module and attribute names are the keys of an official checkpoint's ``model_state_dict``, which therefore
loads with ``strict=True``. What differs from openai-whisper's ``whisper/model.py`` is invisible in the
state dict:

* every module takes ``device=`` and ``dtype=`` factory kwargs, so a loader can build the parameters on
  ``device="meta"`` (no memory, no random init) without the ``with torch.device("meta")`` context manager,
  which imports ``torch._dynamo`` (1-2 s);
* the buffers that no checkpoint holds (causal mask, alignment heads) are computed, never put on meta;
  :meth:`Whisper.materialize_buffers` puts them, and computes anything still on meta, on a given device;
* :class:`LayerNorm` casts its weights to float32 too, so fp16 weights also run on the CPU;
* ``alignment_heads`` is a dense boolean ``(n_text_layer, n_text_head)`` mask, not a sparse tensor;
* bad dimensions or inputs raise ``ValueError`` instead of failing an ``assert``.

Loading a checkpoint without allocating (and randomly initialising) the weights twice::

    model = Whisper(dims, device="meta")
    model.load_state_dict(checkpoint["model_state_dict"], strict=True, assign=True)  # adopts its tensors
    model.materialize_buffers(device)  # causal mask and alignment heads on the target device
    model.to(device)  # moves the parameters if the state dict was loaded elsewhere (e.g. on the CPU)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from whisperctl.models.dims import ModelDimensions

__all__ = [
    "AudioEncoder",
    "Conv1d",
    "LayerNorm",
    "Linear",
    "ModelDimensions",
    "MultiHeadAttention",
    "ResidualAttentionBlock",
    "TextDecoder",
    "Whisper",
    "disable_sdpa",
    "sinusoids",
]

KVCache = dict[Any, Tensor]  # the key/value Linear modules -> their outputs so far (install_kv_cache_hooks)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (fp16 loses the variance), returned in the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class Linear(nn.Linear):
    """Linear that runs in the input's dtype, whatever the weights' dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Conv1d(nn.Conv1d):
    """Conv1d that runs in the input's dtype, whatever the weights' dtype."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return super()._conv_forward(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


def sinusoids(length: int, channels: int, max_timescale: float = 10000, *, device: Any = None) -> Tensor:
    """The encoder's fixed positional embedding, ``(length, channels)`` float32: sines then cosines."""
    if channels % 2 or channels < 4:
        raise ValueError(f"sinusoidal embeddings need an even number of channels >= 4, got {channels}")
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, device=device, dtype=torch.float32))
    scaled_time = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


def _resolve(device: Any) -> Any:
    return torch.empty(0, device=device).device  # None -> the current default device


def _buffer_device(device: Any) -> Any:
    # Computed buffers carry values the checkpoint lacks: on meta they would be lost, so use the CPU then.
    resolved = _resolve(device)
    return torch.device("cpu") if resolved.type == "meta" else resolved


@contextmanager
def disable_sdpa() -> Iterator[None]:
    """Use the explicit attention path, which also returns the attention logits (for word timestamps)."""
    previous = MultiHeadAttention.use_sdpa
    MultiHeadAttention.use_sdpa = False
    try:
        yield
    finally:
        MultiHeadAttention.use_sdpa = previous


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention; the key projection has no bias, as in the checkpoints."""

    use_sdpa: ClassVar[bool] = True

    def __init__(self, n_state: int, n_head: int, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if n_state % n_head:
            raise ValueError(f"the width {n_state} is not divisible by the number of heads {n_head}")
        self.n_head = n_head
        kw = {"device": device, "dtype": dtype}
        self.query = Linear(n_state, n_state, **kw)
        self.key = Linear(n_state, n_state, bias=False, **kw)
        self.value = Linear(n_state, n_state, **kw)
        self.out = Linear(n_state, n_state, **kw)

    def forward(
        self, x: Tensor, xa: Tensor | None = None, mask: Tensor | None = None, kv_cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor | None]:
        q = self.query(x)
        if kv_cache is None or xa is None or self.key not in kv_cache:
            # With kv-cache hooks installed, self-attention keys/values come back after the cached ones.
            source = x if xa is None else xa
            k, v = self.key(source), self.value(source)
        else:
            # Cross-attention keys/values depend on the audio only: computed at the first step, then reused.
            k, v = kv_cache[self.key], kv_cache[self.value]
        wv, qk = self.qkv_attention(q, k, v, mask)
        return self.out(wv), qk

    def qkv_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        n_batch, n_ctx, n_state = q.shape
        n_kv = k.shape[1]
        q = q.view(n_batch, n_ctx, self.n_head, -1).permute(0, 2, 1, 3)
        k = k.view(*k.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
        v = v.view(*v.shape[:2], self.n_head, -1).permute(0, 2, 1, 3)
        if MultiHeadAttention.use_sdpa:
            if mask is not None and 1 < n_ctx < n_kv:
                # is_causal aligns the mask top-left, which is wrong when the queries follow cached positions.
                allowed = torch.ones(n_ctx, n_kv, dtype=torch.bool, device=q.device).tril(n_kv - n_ctx)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
            else:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=mask is not None and n_ctx > 1)
            return a.permute(0, 2, 1, 3).flatten(start_dim=2), None
        scale = (n_state // self.n_head) ** -0.25  # on q and k separately, to keep fp16 products in range
        qk = (q * scale) @ (k * scale).transpose(-1, -2)
        if mask is not None:
            qk = qk + mask[n_kv - n_ctx : n_kv, :n_kv]
        qk = qk.float()
        w = F.softmax(qk, dim=-1).to(q.dtype)
        return (w @ v).permute(0, 2, 1, 3).flatten(start_dim=2), qk.detach()


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, 4x GELU MLP."""

    def __init__(
        self,
        n_state: int,
        n_head: int,
        cross_attention: bool = False,
        *,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.attn = MultiHeadAttention(n_state, n_head, **kw)
        self.attn_ln = LayerNorm(n_state, **kw)
        self.cross_attn = MultiHeadAttention(n_state, n_head, **kw) if cross_attention else None
        self.cross_attn_ln = LayerNorm(n_state, **kw) if cross_attention else None
        self.mlp = nn.Sequential(
            Linear(n_state, 4 * n_state, **kw), nn.GELU(), Linear(4 * n_state, n_state, **kw)
        )
        self.mlp_ln = LayerNorm(n_state, **kw)

    def forward(
        self, x: Tensor, xa: Tensor | None = None, mask: Tensor | None = None, kv_cache: KVCache | None = None
    ) -> Tensor:
        x = x + self.attn(self.attn_ln(x), mask=mask, kv_cache=kv_cache)[0]
        if self.cross_attn is not None and self.cross_attn_ln is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), xa, kv_cache=kv_cache)[0]
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Two convolutions (the second halves the frames), sinusoidal positions, transformer blocks."""

    def __init__(
        self,
        n_mels: int,
        n_ctx: int,
        n_state: int,
        n_head: int,
        n_layer: int,
        *,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.conv1 = Conv1d(n_mels, n_state, kernel_size=3, padding=1, **kw)
        self.conv2 = Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1, **kw)
        self.blocks = nn.ModuleList([ResidualAttentionBlock(n_state, n_head, **kw) for _ in range(n_layer)])
        self.ln_post = LayerNorm(n_state, **kw)
        # Persistent, as in openai-whisper: official checkpoints hold it (fp16), so on meta it awaits them.
        if _resolve(device).type == "meta":
            pe = torch.empty(n_ctx, n_state, device=device, dtype=torch.float32)
        else:
            pe = sinusoids(n_ctx, n_state, device=device)
        self.register_buffer("positional_embedding", pe)

    def materialize_buffers(self, device: Any) -> None:
        """Move ``positional_embedding`` to ``device``, computing it if no state dict filled it (meta)."""
        pe = self.positional_embedding
        pe = sinusoids(*pe.shape, device=device) if pe.is_meta else pe.to(device)
        self.register_buffer("positional_embedding", pe)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: mel spectrogram ``(batch, n_mels, 2 * n_ctx)`` -> ``(batch, n_ctx, n_state)``."""
        n_mels = self.conv1.in_channels
        if x.ndim != 3 or x.shape[1] != n_mels:
            raise ValueError(
                f"expected a mel spectrogram (batch, {n_mels}, frames), got shape {tuple(x.shape)}"
            )
        n_ctx = self.positional_embedding.shape[0]
        if (x.shape[2] + 1) // 2 != n_ctx:
            raise ValueError(
                f"the mel spectrogram has {x.shape[2]} frames, the encoder takes {2 * n_ctx}; "
                "pad or trim it to that length"
            )
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x)).permute(0, 2, 1)
        x = (x + self.positional_embedding).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    """Token + learned positional embeddings, causal blocks with cross-attention, tied output projection."""

    def __init__(
        self,
        n_vocab: int,
        n_ctx: int,
        n_state: int,
        n_head: int,
        n_layer: int,
        *,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        # Given a weight, Embedding skips its normal_() init, which on meta goes through torch._refs and
        # imports torch._dynamo (1-2 s).
        weight = torch.empty(n_vocab, n_state, **kw) if _resolve(device).type == "meta" else None
        self.token_embedding = nn.Embedding(n_vocab, n_state, _weight=weight, **kw)
        # Left uninitialised like openai-whisper's: every checkpoint holds it.
        self.positional_embedding = nn.Parameter(torch.empty(n_ctx, n_state, **kw))
        self.blocks = nn.ModuleList(
            [ResidualAttentionBlock(n_state, n_head, cross_attention=True, **kw) for _ in range(n_layer)]
        )
        self.ln = LayerNorm(n_state, **kw)
        self.materialize_buffers(_buffer_device(device))

    def materialize_buffers(self, device: Any) -> None:
        """(Re)compute the causal ``mask`` (float32, ``-inf`` above the diagonal) on ``device``."""
        n_ctx = self.positional_embedding.shape[0]
        mask = torch.full((n_ctx, n_ctx), -math.inf, device=device, dtype=torch.float32).triu_(1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor, xa: Tensor, kv_cache: KVCache | None = None) -> Tensor:
        """``x``: tokens ``(batch, n)``; ``xa``: encoded audio -> float32 logits ``(batch, n, n_vocab)``.

        With ``kv_cache`` (see :meth:`Whisper.install_kv_cache_hooks`), ``x`` holds only the new tokens.
        """
        offset = next(iter(kv_cache.values())).shape[1] if kv_cache else 0
        n_ctx = self.positional_embedding.shape[0]
        if x.ndim != 2:
            raise ValueError(f"expected tokens of shape (batch, n), got shape {tuple(x.shape)}")
        if offset + x.shape[1] > n_ctx:
            raise ValueError(f"{offset} cached + {x.shape[1]} new tokens exceed the text context of {n_ctx}")
        x = self.token_embedding(x) + self.positional_embedding[offset : offset + x.shape[1]]
        x = x.to(xa.dtype)
        for block in self.blocks:
            x = block(x, xa, mask=self.mask, kv_cache=kv_cache)
        x = self.ln(x)
        return (x @ torch.transpose(self.token_embedding.weight.to(x.dtype), 0, 1)).float()


class Whisper(nn.Module):
    """The Whisper model: ``encoder`` (:class:`AudioEncoder`) and ``decoder`` (:class:`TextDecoder`).

    ``device`` and ``dtype`` go to every parameter. On ``device="meta"`` only the small buffers that no
    checkpoint holds (causal mask, alignment heads) are allocated, on the CPU; ``load_state_dict(sd,
    strict=True, assign=True)`` then adopts the state dict's tensors (parameters and the encoder's
    ``positional_embedding``, dtype and device included) and :meth:`materialize_buffers` moves the
    computed buffers next to them, leaving nothing on meta (see the module docstring).
    """

    def __init__(self, dims: ModelDimensions, *, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        _check_dims(dims)
        self.dims = dims
        kw = {"device": device, "dtype": dtype}
        d = dims
        self.encoder = AudioEncoder(
            d.n_mels, d.n_audio_ctx, d.n_audio_state, d.n_audio_head, d.n_audio_layer, **kw
        )
        self.decoder = TextDecoder(
            d.n_vocab, d.n_text_ctx, d.n_text_state, d.n_text_head, d.n_text_layer, **kw
        )
        heads = self._default_alignment_heads(_buffer_device(device))
        self.register_buffer("alignment_heads", heads, persistent=False)

    def _default_alignment_heads(self, device: Any) -> Tensor:
        # As openai-whisper: all heads of the last half of the decoder layers, until set_alignment_heads().
        heads = torch.zeros(self.dims.n_text_layer, self.dims.n_text_head, dtype=torch.bool, device=device)
        heads[self.dims.n_text_layer // 2 :] = True
        return heads

    def materialize_buffers(self, device: Any = None) -> None:
        """(Re)create the buffers no checkpoint holds on ``device`` (default: where the parameters are).

        Call it after ``load_state_dict(..., assign=True)`` on a model built on meta. The alignment heads
        are kept (moved), unless they were on meta: then they are reset to the default.
        """
        device = self.device if device is None else torch.device(device)
        if device.type == "meta":
            raise ValueError(
                "cannot materialise buffers on meta: load the weights first or pass a real device"
            )
        self.encoder.materialize_buffers(device)
        self.decoder.materialize_buffers(device)
        heads = self.alignment_heads
        if heads.is_meta:
            heads = self._default_alignment_heads(device)
        self.register_buffer("alignment_heads", heads.to(device), persistent=False)

    def set_alignment_heads(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Use these ``(layer, head)`` decoder heads for word timestamps (``ModelSpec.alignment_heads``)."""
        n_layer, n_head = self.dims.n_text_layer, self.dims.n_text_head
        mask = torch.zeros(n_layer, n_head, dtype=torch.bool)
        for layer, head in pairs:
            if not (0 <= layer < n_layer and 0 <= head < n_head):
                raise ValueError(
                    f"alignment head ({layer}, {head}) is outside the decoder "
                    f"({n_layer} layers x {n_head} heads)"
                )
            mask[layer, head] = True
        if not mask.any():
            raise ValueError("at least one alignment head is needed")
        self.register_buffer("alignment_heads", mask.to(self.alignment_heads.device), persistent=False)

    def alignment_heads_pairs(self) -> tuple[tuple[int, int], ...]:
        """The alignment heads as sorted ``(layer, head)`` pairs."""
        return tuple((int(layer), int(head)) for layer, head in self.alignment_heads.nonzero().tolist())

    def embed_audio(self, mel: Tensor) -> Tensor:
        return self.encoder(mel)

    def logits(self, tokens: Tensor, audio_features: Tensor, kv_cache: KVCache | None = None) -> Tensor:
        return self.decoder(tokens, audio_features, kv_cache=kv_cache)

    def forward(self, mel: Tensor, tokens: Tensor) -> Tensor:
        """Float32 logits ``(batch, n_tokens, n_vocab)`` for ``tokens`` given the audio ``mel``."""
        return self.decoder(tokens, self.encoder(mel))

    @property
    def device(self) -> Any:
        return next(self.parameters()).device

    @property
    def is_multilingual(self) -> bool:
        return self.dims.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        return self.dims.n_vocab - 51765 - int(self.is_multilingual)

    def install_kv_cache_hooks(self, cache: KVCache | None = None) -> tuple[KVCache, list[Any]]:
        """Hooks that store the decoder's keys and values in a cache, for one token per step decoding.

        Returns the cache to pass as ``kv_cache`` and the hook handles (call ``.remove()`` on each when done).
        """
        store: KVCache = {**cache} if cache is not None else {}
        hooks: list[Any] = []

        def extend(module: nn.Module, _: Any, output: Tensor) -> Tensor:
            # Self-attention: the new tokens' keys/values follow the cached ones.
            store[module] = output if module not in store else torch.cat([store[module], output], 1).detach()
            return store[module]

        def keep(module: nn.Module, _: Any, output: Tensor) -> Tensor:
            # Cross-attention: told apart by module, not by length as openai-whisper does, so that a model
            # whose audio context is no longer than its text context caches correctly too.
            store[module] = output
            return output

        for block in self.decoder.blocks:
            for attn, hook in ((block.attn, extend), (block.cross_attn, keep)):
                hooks += [attn.key.register_forward_hook(hook), attn.value.register_forward_hook(hook)]
        return store, hooks


def _check_dims(dims: ModelDimensions) -> None:
    bad = [f"{k}={v!r}" for k, v in vars(dims).items() if type(v) is not int or v <= 0]
    if bad:
        raise ValueError(f"model dimensions must be positive integers: {', '.join(bad)}")
    if dims.n_audio_state != dims.n_text_state:
        # Cross-attention projects the audio features with (n_text_state, n_text_state) weights.
        raise ValueError(
            f"n_audio_state={dims.n_audio_state} must equal n_text_state={dims.n_text_state} "
            "(the decoder's cross-attention reads the encoder's output)"
        )
    for side in ("audio", "text"):
        state, head = getattr(dims, f"n_{side}_state"), getattr(dims, f"n_{side}_head")
        if state % head:
            raise ValueError(f"n_{side}_state={state} is not divisible by n_{side}_head={head}")
    if dims.n_audio_state % 2 or dims.n_audio_state < 4:
        raise ValueError(f"n_audio_state={dims.n_audio_state} must be even and >= 4 (sinusoidal positions)")

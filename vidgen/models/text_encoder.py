"""The text side: a sentencepiece tokenizer wrapper and a T5 v1.1-style encoder (Flax NNX).

`Tokenizer(model_path, max_length)(texts) -> (ids int32 [B, L], mask bool [B, L])`: EOS appended,
truncated to L (EOS kept), padded with the pad id (T5 convention: pad 0, eos 1, unk 2).

`TextEncoder(config, rngs=...)(ids, mask) -> [B, L, d_model]`: token embedding, pre-norm blocks of
self-attention with T5's bucketed relative position bias (no 1/sqrt(d) scaling) and a gated-GELU
(tanh approximation) feed-forward, RMSNorm without mean subtraction, final norm. T5 shares the
position bias of layer 0 with every layer; UMT5 (`per_layer_position_bias=True`, Wan's text
encoder) gives each layer its own. Padded positions (mask False) are never attended to and their
outputs are zero, as in Wan's pipeline. Parameter names mirror Hugging Face's T5 modules so
vidgen/interop/hf_t5.py maps weights by a rename and a reshape. Parameters carry logical axis names
('vocab', 'embed', 'heads', 'kv', 'mlp'): outside a mesh, build the module under
`nnx.use_eager_sharding(False)` (as vidgen/train/state.py does).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import sentencepiece as spm
from flax import nnx

from vidgen.config_dataclass import FromDict, check_dtypes


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig(FromDict):
    """Architecture of the encoder; defaults are UMT5-XXL's (Wan 2.1's text encoder)."""
    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64                   # per-head dimension
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    per_layer_position_bias: bool = True     # False: T5 (layer 0's bias shared); True: UMT5
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"           # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TextEncoderConfig.{name}={getattr(self, name)}: must be >= 1")
        if self.relative_attention_num_buckets < 4:
            raise ValueError(f"TextEncoderConfig.relative_attention_num_buckets="
                             f"{self.relative_attention_num_buckets}: must be >= 4")
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets // 4:
            raise ValueError(f"TextEncoderConfig.relative_attention_max_distance="
                             f"{self.relative_attention_max_distance}: must exceed "
                             f"relative_attention_num_buckets // 4")
        check_dtypes(self, "dtype", "param_dtype")


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """T5's bidirectional bucket of the offset key - query for every (query, key): int32 [L, L].
    Half the buckets per direction are exact offsets, the rest log-spaced up to max_distance;
    computed in float32 in Mesh TensorFlow's (and transformers') order so buckets match exactly."""
    offset = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    distance = np.abs(offset)
    max_exact = half // 2
    ratio = np.maximum(distance, max_exact).astype(np.float32) / np.float32(max_exact)
    log_ratio = np.log(ratio) / np.float32(math.log(max_distance / max_exact))
    large = max_exact + (log_ratio * np.float32(half - max_exact)).astype(np.int32)
    large = np.minimum(large, half - 1)
    return ((offset > 0) * half + np.where(distance < max_exact, distance, large)).astype(np.int32)


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, names: tuple[str | None, ...],
           dtype: jnp.dtype) -> nnx.Param:
    """A N(0, std^2) parameter carrying logical axis names (transformers' T5 initialisation)."""
    init = nnx.with_partitioning(nnx.initializers.normal(std), names)
    return nnx.Param(init(rngs.params(), shape, dtype))


class T5RMSNorm(nnx.Module):
    """x / sqrt(mean(x^2) + eps) * scale, statistics in float32 (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float, *, param_dtype: jnp.dtype):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return y.astype(x.dtype) * self.scale[...].astype(x.dtype)


class EncoderLayer(nnx.Module):
    """Pre-norm self-attention with relative position bias, then a pre-norm gated-GELU FFN."""

    def __init__(self, c: TextEncoderConfig, *, has_position_bias: bool, rngs: nnx.Rngs):
        pd, d, h, k, f = jnp.dtype(c.param_dtype), c.d_model, c.num_heads, c.d_kv, c.d_ff
        self.dtype = jnp.dtype(c.dtype)
        self.attn_norm = T5RMSNorm(d, c.layer_norm_epsilon, param_dtype=pd)
        self.q = _param(rngs, (d, h, k), (d * k) ** -0.5, ("embed", "heads", "kv"), pd)
        self.k = _param(rngs, (d, h, k), d ** -0.5, ("embed", "heads", "kv"), pd)
        self.v = _param(rngs, (d, h, k), d ** -0.5, ("embed", "heads", "kv"), pd)
        self.o = _param(rngs, (h, k, d), (h * k) ** -0.5, ("heads", "kv", "embed"), pd)
        self.relative_bias = (_param(rngs, (c.relative_attention_num_buckets, h), d ** -0.5,
                                     (None, "heads"), pd) if has_position_bias else None)
        self.ffn_norm = T5RMSNorm(d, c.layer_norm_epsilon, param_dtype=pd)
        self.wi_0 = _param(rngs, (d, f), d ** -0.5, ("embed", "mlp"), pd)
        self.wi_1 = _param(rngs, (d, f), d ** -0.5, ("embed", "mlp"), pd)
        self.wo = _param(rngs, (f, d), f ** -0.5, ("mlp", "embed"), pd)

    def position_bias(self, buckets: np.ndarray) -> jax.Array:
        """This layer's bias [H, L, L] (float32) for bucket table [L, L]."""
        return jnp.transpose(self.relative_bias[...].astype(jnp.float32)[buckets], (2, 0, 1))

    def attention(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
        """x [B, L, D], bias [H, L, L], key mask [B, L] -> [B, L, D]."""
        w = lambda p: p[...].astype(self.dtype)
        q = jnp.einsum("BLD,DHK->BLHK", x, w(self.q))
        k = jnp.einsum("BSD,DHK->BSHK", x, w(self.k))
        v = jnp.einsum("BSD,DHK->BSHK", x, w(self.v))
        logits = jnp.einsum("BLHK,BSHK->BHLS", q, k).astype(jnp.float32) + bias  # no scaling
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)              # [B, H, L, S]
        out = jnp.einsum("BHLS,BSHK->BLHK", probs, v)
        return jnp.einsum("BLHK,HKD->BLD", out, w(self.o))

    def feed_forward(self, x: jax.Array) -> jax.Array:
        """Gated GELU: (gelu_tanh(x W0) * (x W1)) Wo, [B, L, D] -> [B, L, D]."""
        gate = jax.nn.gelu(x @ self.wi_0[...].astype(self.dtype), approximate=True)
        return (gate * (x @ self.wi_1[...].astype(self.dtype))) @ self.wo[...].astype(self.dtype)

    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array) -> jax.Array:
        x = x + self.attention(self.attn_norm(x), bias, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class TextEncoder(nnx.Module):
    """Token ids [B, L] (int) and mask [B, L] (bool, True = real token) -> features [B, L, D]."""

    def __init__(self, config: TextEncoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        pd = jnp.dtype(config.param_dtype)
        self.embedding = _param(rngs, (config.vocab_size, config.d_model), 1.0,
                                ("vocab", "embed"), pd)
        self.layers = nnx.List([
            EncoderLayer(config, has_position_bias=i == 0 or config.per_layer_position_bias,
                         rngs=rngs) for i in range(config.num_layers)])
        self.final_norm = T5RMSNorm(config.d_model, config.layer_norm_epsilon, param_dtype=pd)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        c = self.config
        mask = jnp.asarray(mask, bool)
        x = jnp.take(self.embedding[...], ids, axis=0).astype(c.dtype)          # [B, L, D]
        buckets = relative_position_buckets(ids.shape[1], c.relative_attention_num_buckets,
                                            c.relative_attention_max_distance)
        bias = None
        for layer in self.layers:
            if layer.relative_bias is not None:
                bias = layer.position_bias(buckets)                              # [H, L, L]
            x = layer(x, bias, mask)
        return self.final_norm(x) * mask[..., None].astype(x.dtype)


class Tokenizer:
    """A sentencepiece model with padding, truncation and a mask, for batches of prompts. The
    model must use T5's special ids (data_pipelines.train_tokenizer's and Hugging Face T5's)."""

    PAD_ID, EOS_ID = 0, 1

    def __init__(self, model_path: str, max_length: int):
        if max_length < 1:
            raise ValueError(f"Tokenizer max_length={max_length}: must be >= 1")
        self.max_length = max_length
        self.processor = spm.SentencePieceProcessor(model_file=str(model_path))
        self.pad_id, self.eos_id = self.processor.pad_id(), self.processor.eos_id()
        if (self.pad_id, self.eos_id) != (self.PAD_ID, self.EOS_ID):
            raise ValueError(f"{model_path}: sentencepiece model has pad id {self.pad_id} and eos "
                             f"id {self.eos_id}, expected T5's {self.PAD_ID} and {self.EOS_ID} "
                             "(train one with python -m data_pipelines.train_tokenizer)")

    @property
    def vocab_size(self) -> int:
        return self.processor.vocab_size()

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """ids int32 [B, max_length] (pieces, then EOS, then pads) and mask bool [B, max_length]
        (True on pieces and EOS); a text too long keeps its first max_length - 1 pieces + EOS."""
        if isinstance(texts, str):
            raise TypeError("Tokenizer takes a list of texts, got a single str")
        pieces = self.processor.encode(list(texts))
        ids = np.full((len(pieces), self.max_length), self.pad_id, np.int32)
        mask = np.zeros((len(pieces), self.max_length), np.bool_)
        for row, p in enumerate(pieces):
            p = p[:self.max_length - 1] + [self.eos_id]
            ids[row, :len(p)] = p
            mask[row, :len(p)] = True
        return ids, mask

    def decode(self, ids: np.ndarray) -> list[str]:
        """Texts of ids [B, L], each read up to its first EOS (pads and EOS dropped)."""
        texts = []
        for row in np.asarray(ids).tolist():
            row = row[:row.index(self.eos_id)] if self.eos_id in row else row
            texts.append(self.processor.decode([i for i in row if i != self.pad_id]))
        return texts

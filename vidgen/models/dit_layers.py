"""The layers of one DiT block (vidgen/models/dit.py), written for one sample: tokens [L, D].

The DiT runs its blocks per sample (vmapped over the batch, or directly for a batch of one), so
these layers carry no batch axis. On XLA:CPU that matters: reductions over the tokens of an array
with a leading batch axis of size 1 (e.g. [1, L, D] -> [1, D], the gradients of biases, norm
scales and adaLN modulation) ran ~28x slower than the same reduction of [L, D] (YNNPACK fusions,
jax 0.10.2), ~15% of a batch-1 DiT train step. Parameter names and shapes are diffusers' (see
vidgen/interop/wan_dit.py), so Wan weights map by name.

Sharding: every kernel carries logical axis names; q/k/v [D, H, K] are column-parallel over
'heads', the output projection [H, K, D] row-parallel, the MLP's fc1 [D, F] column- and fc2
[F, D] row-parallel over 'mlp' (Megatron). Activations are pinned with mesh_lib.constrain: the
residual stream [L, D] to ('act_len', 'act_embed'), q/k/v to ('act_len', 'act_heads',
'act_kv') (keys of cross-attention: text, not split by 'act_len'), the MLP hidden to
('act_len', 'act_mlp'); the batch axis is added by the vmap over examples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

from vidgen.models import rope
from vidgen.models.attention import dot_product_attention
from vidgen.parallel import mesh as mesh_lib

if TYPE_CHECKING:
    from vidgen.models.dit import DiTConfig


def dense(einsum: str, shape: tuple[int, ...], names: tuple[str | None, ...], cfg: DiTConfig,
          rngs: nnx.Rngs, *, fan_in: int = 1, dtype: str | None = None,
          kernel_init: nnx.Initializer | None = None) -> nnx.Einsum:
    """A linear layer as an einsum; the kernel's first fan_in axes are its inputs, the bias
    covers the rest. Xavier-uniform init (Wan's) unless kernel_init is given."""
    axes = tuple(range(len(shape)))
    init = kernel_init or nnx.initializers.xavier_uniform(in_axis=axes[:fan_in],
                                                          out_axis=axes[fan_in:])
    return nnx.Einsum(einsum, shape, shape[fan_in:], dtype=dtype or cfg.dtype,
                      param_dtype=cfg.param_dtype, rngs=rngs,
                      kernel_init=nnx.with_partitioning(init, names),
                      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(),
                                                      names[fan_in:]))


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis without affine parameters, in float32 (diffusers'
    FP32LayerNorm)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class HeadsRMSNorm(nnx.Module):
    """RMSNorm over all heads together of [L, H, K] ('rms_norm_across_heads'), scale [H, K]."""

    def __init__(self, cfg: DiTConfig):
        self.eps = cfg.eps
        init = nnx.with_partitioning(nnx.initializers.ones_init(), ("heads", "kv"))
        self.scale = nnx.Param(init(None, (cfg.num_heads, cfg.head_dim), cfg.param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        ms = jnp.mean(jnp.square(xf), axis=(-2, -1), keepdims=True)
        return (xf * jax.lax.rsqrt(ms + self.eps) * self.scale[...]).astype(x.dtype)


class Attention(nnx.Module):
    """Multi-head attention with per-head q/k/v projections [D, H, K] and optional QK norm;
    cross=True: keys and values come from another sequence (the text)."""

    def __init__(self, cfg: DiTConfig, rngs: nnx.Rngs, *, cross: bool = False):
        d, h, k = cfg.hidden_dim, cfg.num_heads, cfg.head_dim
        names = ("embed", "heads", "kv")
        self.to_q = dense("LD,DHK->LHK", (d, h, k), names, cfg, rngs)
        self.to_k = dense("LD,DHK->LHK", (d, h, k), names, cfg, rngs)
        self.to_v = dense("LD,DHK->LHK", (d, h, k), names, cfg, rngs)
        self.to_out = dense("LHK,HKD->LD", (h, k, d), ("heads", "kv", "embed"), cfg, rngs,
                            fan_in=2)
        self.norm_q = HeadsRMSNorm(cfg) if cfg.qk_norm else None
        self.norm_k = HeadsRMSNorm(cfg) if cfg.qk_norm else None
        self.implementation = cfg.attention_impl
        self.fused_backward = cfg.splash_fused_backward
        self.cross = cross

    def __call__(self, x: jax.Array, source: jax.Array, *,
                 freqs: tuple[jax.Array, jax.Array] | None = None,
                 mask: jax.Array | None = None, q_segment_ids: jax.Array | None = None,
                 kv_segment_ids: jax.Array | None = None) -> jax.Array:
        """x [Lq, D] attends to source [Lk, D]; freqs: RoPE (cos, sin) [Lq, 1, K/2] for q and k;
        mask: bool [1 or H, 1 or Lq, Lk], True = attend; segment ids [Lq], [Lk] (packing)."""
        q_names = ("act_len", "act_heads", "act_kv")
        kv_names = (None,) + q_names[1:] if self.cross else q_names
        q = mesh_lib.constrain(self.to_q(x), q_names)                        # [L, H, K]
        k = mesh_lib.constrain(self.to_k(source), kv_names)
        v = mesh_lib.constrain(self.to_v(source), kv_names)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        if freqs is not None:
            q, k = rope.apply(q, *freqs), rope.apply(k, *freqs)
        out = dot_product_attention(q, k, v, mask=mask, q_segment_ids=q_segment_ids,
                                    kv_segment_ids=kv_segment_ids,
                                    implementation=self.implementation,
                                    fused_backward=self.fused_backward,
                                    name="cross_attention" if self.cross else "self_attention")
        return self.to_out(mesh_lib.constrain(out, q_names))


class FeedForward(nnx.Module):
    """Linear -> GELU(tanh) -> Linear (diffusers' FeedForward 'gelu-approximate')."""

    def __init__(self, cfg: DiTConfig, rngs: nnx.Rngs):
        d, f = cfg.hidden_dim, cfg.mlp_dim
        self.fc1 = dense("LD,DF->LF", (d, f), ("embed", "mlp"), cfg, rngs)
        self.fc2 = dense("LF,FD->LD", (f, d), ("mlp", "embed"), cfg, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = mesh_lib.constrain(self.fc1(x), ("act_len", "act_mlp"))
        return self.fc2(jax.nn.gelu(hidden, approximate=True))


class Block(nnx.Module):
    """One DiT block (WanTransformerBlock) on the tokens [L, D] of one sample."""

    def __init__(self, cfg: DiTConfig, rngs: nnx.Rngs):
        d = cfg.hidden_dim
        self.eps = cfg.eps
        self.attn1 = Attention(cfg, rngs)
        self.attn2 = Attention(cfg, rngs, cross=True)
        self.norm2 = nnx.LayerNorm(
            d, epsilon=cfg.eps, dtype=jnp.float32, param_dtype=cfg.param_dtype,
            use_fast_variance=False, rngs=rngs,
            scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
        ) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(cfg, rngs)
        init = nnx.with_partitioning(nnx.initializers.normal(d ** -0.5), (None, "embed"))
        self.scale_shift_table = nnx.Param(init(rngs.params(), (6, d), cfg.param_dtype))

    def __call__(self, x: jax.Array, temb6: jax.Array, context: jax.Array,
                 freqs: tuple[jax.Array, jax.Array], masks: dict[str, Any],
                 time_index: jax.Array | None = None) -> jax.Array:
        """x [L, D]; temb6 float32 [6, D] (the shared projection), or [S, 6, D] per packed
        segment with token l taking row time_index[l]; context [Lc, D]; masks: 'self' and
        'cross' keyword arguments of the attention (mask, segment ids)."""
        names = ("act_len", "act_embed")
        mod = self.scale_shift_table[...].astype(jnp.float32) + temb6       # [(S,) 6, D]
        mod = mod if time_index is None else mod[time_index]                # [(L,) 6, D]
        shift, scale, gate, c_shift, c_scale, c_gate = jnp.unstack(mod, axis=-2)  # [(L,) D]
        h = (layer_norm(x, self.eps) * (1 + scale) + shift).astype(x.dtype)
        x = (x + self.attn1(h, h, freqs=freqs, **masks["self"]) * gate).astype(x.dtype)
        x = mesh_lib.constrain(x, names)
        h = x if self.norm2 is None else self.norm2(x.astype(jnp.float32)).astype(x.dtype)
        x = mesh_lib.constrain(x + self.attn2(h, context, **masks["cross"]), names)
        h = (layer_norm(x, self.eps) * (1 + c_scale) + c_shift).astype(x.dtype)
        x = (x + self.ffn(h).astype(jnp.float32) * c_gate).astype(x.dtype)
        return mesh_lib.constrain(x, names)

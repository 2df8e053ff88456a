"""The spacetime Diffusion Transformer: Wan 2.1's DiT (diffusers' WanTransformer3DModel) in NNX.

latents [B, T, H, W, C] -> (pt, ph, pw) patches -> tokens [B, L, D] -> num_layers blocks ->
final adaLN norm + linear -> unpatchify -> velocity [B, T, H, W, C_out].

A block (vidgen/models/dit_layers.py): (1) LayerNorm (no affine) with adaLN shift/scale,
self-attention with RMSNorm of q and k across all heads and 3D RoPE, gated residual; (2) affine
LayerNorm (cross_attn_norm), cross-attention to the embedded text tokens, masked by context_mask;
(3) LayerNorm with adaLN, GELU(tanh) MLP, gated residual. The six modulation vectors of every
block are one shared projection of the timestep embedding (time_proj, 6 x D) plus the block's
learned scale_shift_table, as in Wan. Attribute names mirror diffusers' so
vidgen/interop/wan_dit.py maps weights by name; norms and modulation run in float32 as there.
Blocks are stacked (leading layer axis, logical name None) and run with nnx.scan (or a Python
loop, scan_layers=False: ~13% faster per train step on a 2-core CPU, slower to compile for deep
models), rematerialised by the config's policy (incl.
'offload': matmul outputs saved to host memory, TPU/GPU only). Blocks and the output head are
written for one sample and vmapped over the batch, the vmap naming the batch's mesh axes (see
`_per_sample`), so activation shardings (vidgen/models/dit_layers.py) keep the batch split; the
tokens [B, L, D] are pinned to ('act_batch', 'act_len', 'act_embed'). Construct under
`nnx.use_eager_sharding(False)` (as vidgen/train/state.py does) unless a mesh is set: parameters
carry logical axis names.

Latent sizes that the patch does not divide are zero-padded up and the output cropped back.
Packed sequences: pass tokens [B, L, pt*ph*pw*C] (see `patchify`) with explicit (t, h, w)
`positions` [B, L, 3] and `segment_ids` [B, L] (optionally `context_segment_ids` [B, L_text] so a
clip only reads its own caption); the output is then tokens [B, L, pt*ph*pw*C_out].
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.config_dataclass import FromDict, check_dtypes
from vidgen.models import rope
from vidgen.models.attention import IMPLEMENTATIONS, platform
from vidgen.models.dit_layers import Block, dense, layer_norm
from vidgen.parallel import mesh as mesh_lib

# The attention kernels (by checkpoint name, see dit_layers.Attention) whose output and
# log-sum-exp a remat policy keeps, so that their forward is not run again ('blocked', 'splash').
KEPT_ATTENTION = {"save_attention": ("self_attention",),
                  "save_dots_attention": ("self_attention", "cross_attention")}
REMAT_POLICIES = {
    "none": None,                                               # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,           # keep only each block's input
    # 'full', but self-attention (the costliest part of a long clip's block) is not rerun
    "save_attention": jax.checkpoint_policies.save_only_these_names(
        *KEPT_ATTENTION["save_attention"]),
    # every matmul output and both attention kernels' outputs kept: only elementwise work reruns
    "save_dots_attention": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.checkpoint_dots,
        jax.checkpoint_policies.save_only_these_names(*KEPT_ATTENTION["save_dots_attention"])),
    "dots": jax.checkpoint_policies.checkpoint_dots,            # keep every matmul output
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # matmul outputs without batch dims moved to host memory and back, not recomputed
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}
OFFLOAD_PLATFORMS = ("tpu", "gpu")     # platforms with a pinned host memory space to offload to


def remat_policy(name: str):
    """The jax.checkpoint policy of REMAT_POLICIES[name]; 'offload' only where the platform
    (vidgen.models.attention.platform) can offload to host memory."""
    if name == "offload" and platform() not in OFFLOAD_PLATFORMS:
        raise ValueError(f"DiTConfig.remat_policy='offload' moves activations to pinned host "
                         f"memory, which {platform()!r} devices do not have (only "
                         f"{OFFLOAD_PLATFORMS}); use 'dots_no_batch' or 'full' here")
    return REMAT_POLICIES[name]


@dataclasses.dataclass(frozen=True)
class DiTConfig(FromDict):
    """Architecture of the DiT; defaults are Wan 2.1 T2V 1.3B's."""
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_dim: int = 1536
    num_layers: int = 30
    num_heads: int = 12
    mlp_dim: int = 8960
    text_dim: int = 4096
    freq_dim: int = 256                  # sinusoidal timestep features
    qk_norm: bool = True                 # RMSNorm of q and k across heads
    cross_attn_norm: bool = True         # affine LayerNorm before cross-attention
    eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_max_seq_len: int = 1024         # positions per axis must stay below this
    timestep_scale: float = 1000.0       # flow time t in [0, 1] -> Wan's timestep t * 1000
    remat_policy: str = "none"           # a key of REMAT_POLICIES
    scan_layers: bool = True
    attention_impl: str | None = None    # None (by platform), 'blocked', 'xla', 'cudnn', 'splash'
    # splash only: one backward kernel for dq, dk and dv (scores recomputed once, not twice); it
    # holds a dq partial per key block ([Lk / block, H, Lq, K] per clip) while a backward runs
    splash_fused_backward: bool = False
    dtype: str = "float32"               # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"DiTConfig.patch_size={self.patch_size}: needs 3 positive sizes")
        for name in ("in_channels", "out_channels", "hidden_dim", "num_layers", "num_heads",
                     "mlp_dim", "text_dim", "freq_dim", "rope_max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiTConfig.{name}={getattr(self, name)}: must be >= 1")
        if self.hidden_dim % self.num_heads or self.head_dim % 2:
            raise ValueError(f"DiTConfig.hidden_dim={self.hidden_dim}: must split into "
                             f"num_heads={self.num_heads} heads of even size")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"DiTConfig.remat_policy={self.remat_policy!r}: expected one of "
                             f"{sorted(REMAT_POLICIES)}")
        if self.attention_impl not in IMPLEMENTATIONS:
            raise ValueError(f"DiTConfig.attention_impl={self.attention_impl!r}: expected one "
                             f"of {IMPLEMENTATIONS}")
        check_dtypes(self, "dtype", "param_dtype")

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def patch_features(self) -> int:
        """Input features of one token: pt * ph * pw * in_channels."""
        return math.prod(self.patch_size) * self.in_channels


def timestep_features(t: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal features [B, dim] of timesteps [B]: (cos, sin) halves (diffusers' Timesteps
    with flip_sin_to_cos=True, downscale_freq_shift=0), in float32. The frequencies are rounded
    from float64 (torch's exp of the same float32 exponents), so angles of t ~ 1000 match."""
    half = dim // 2
    exponent = np.float32(-math.log(10000.0)) * np.arange(half, dtype=np.float32) / np.float32(half)
    freqs = jnp.asarray(np.exp(exponent.astype(np.float64)).astype(np.float32))
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def patchify(x: jax.Array, patch: tuple[int, int, int]) -> tuple[jax.Array, tuple[int, ...]]:
    """latents [B, T, H, W, C] -> (tokens [B, t*h*w, pt*ph*pw*C], grid (t, h, w)), zero-padding
    T, H, W up to multiples of the patch; features ordered (pt, ph, pw, C) as Wan's."""
    b, c = x.shape[0], x.shape[-1]
    pads = [(-n) % p for n, p in zip(x.shape[1:4], patch)]
    x = jnp.pad(x, [(0, 0)] + [(0, p) for p in pads] + [(0, 0)])
    grid = tuple(n // p for n, p in zip(x.shape[1:4], patch))
    x = x.reshape(b, grid[0], patch[0], grid[1], patch[1], grid[2], patch[2], c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)                       # B t h w pt ph pw C
    return x.reshape(b, math.prod(grid), -1), grid


def unpatchify(tokens: jax.Array, grid: tuple[int, ...], patch: tuple[int, int, int],
               shape: tuple[int, ...]) -> jax.Array:
    """tokens [B, t*h*w, pt*ph*pw*C] -> latents [B, T, H, W, C] cropped to shape[1:4]."""
    b = tokens.shape[0]
    x = tokens.reshape(b, *grid, *patch, -1).transpose(0, 1, 4, 2, 5, 3, 6, 7)
    x = x.reshape(b, grid[0] * patch[0], grid[1] * patch[1], grid[2] * patch[2], -1)
    return x[:, :shape[1], :shape[2], :shape[3]]


class DiT(nnx.Module):
    """Text-conditioned velocity model v(x_t, t, text) over video latents (see module doc)."""

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        cfg = self.config = config
        d, p = cfg.hidden_dim, cfg.patch_features
        f32 = "float32"                                      # time embedder stays float32
        self.patch_embedding = dense("BLP,PD->BLD", (p, d), (None, "embed"), cfg, rngs)
        self.time_embedder_1 = dense("BF,FD->BD", (cfg.freq_dim, d), (None, "embed"), cfg,
                                     rngs, dtype=f32)
        self.time_embedder_2 = dense("BE,ED->BD", (d, d), (None, "embed"), cfg, rngs, dtype=f32)
        self.time_proj = dense("BE,ED->BD", (d, 6 * d), ("embed", None), cfg, rngs)
        self.text_embedder_1 = dense("BLT,TD->BLD", (cfg.text_dim, d), (None, "embed"), cfg, rngs)
        self.text_embedder_2 = dense("BLE,ED->BLD", (d, d), (None, "embed"), cfg, rngs)

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
        def stack(rngs: nnx.Rngs) -> Block:
            return Block(cfg, rngs)

        self.blocks = stack(rngs)
        init = nnx.with_partitioning(nnx.initializers.normal(d ** -0.5), (None, "embed"))
        self.scale_shift_table = nnx.Param(init(rngs.params(), (2, d), cfg.param_dtype))
        zeros = nnx.initializers.zeros_init()                # zero-initialised output
        self.proj_out = dense("LD,DO->LO", (d, math.prod(cfg.patch_size) * cfg.out_channels),
                              ("embed", None), cfg, rngs, kernel_init=zeros)

    def __call__(self, x: jax.Array, t: jax.Array, context: jax.Array,
                 context_mask: jax.Array | None = None, *, segment_ids: jax.Array | None = None,
                 positions: jax.Array | None = None,
                 context_segment_ids: jax.Array | None = None) -> jax.Array:
        """Velocity for latents x [B, T, H, W, C] (or packed tokens [B, L, pt*ph*pw*C] with
        positions) at flow time t [B] in [0, 1] (packed: or t [B, S], segment j + 1 at time
        t[:, j]), text context [B, Lc, text_dim] with context_mask [B, Lc] bool (True = real
        token; None = attend to all, Wan's behaviour)."""
        cfg = self.config
        if x.ndim == 3:
            if positions is None:
                raise ValueError("DiT on packed tokens [B, L, F] needs positions [B, L, 3]")
            tokens = x
        else:
            tokens, grid = patchify(x, cfg.patch_size)
            if positions is None:
                positions = rope.grid_positions(x.shape[0], *grid)
        freqs = rope.frequencies(positions, cfg.head_dim, theta=cfg.rope_theta,
                                 max_len=cfg.rope_max_seq_len)                 # [B, L, 1, K/2]
        h = self.patch_embedding(tokens)                                        # [B, L, D]
        h = mesh_lib.constrain(h, ("act_batch", "act_len", "act_embed"))
        temb = self.time_embedder_2(jax.nn.silu(self.time_embedder_1(timestep_features(
            t.reshape(-1) * cfg.timestep_scale, cfg.freq_dim))))   # [B (x S), D] f32
        temb6 = self.time_proj(jax.nn.silu(temb)).astype(jnp.float32)          # [B (x S), 6D]
        temb, temb6 = temb.reshape(t.shape + (-1,)), temb6.reshape(t.shape + (6, -1))
        time_index = _time_index(t, segment_ids)      # None, or each token's segment [B, L]
        ctx = self.text_embedder_2(jax.nn.gelu(self.text_embedder_1(context), approximate=True))
        ctx = mesh_lib.constrain(ctx, ("act_batch", None, "act_embed"))        # [B, Lc, D]
        masks = _masks(context_mask, segment_ids, context_segment_ids)
        h = self._run_blocks(h, temb6, ctx, freqs, masks, time_index)
        out = _per_sample(self._head, h, temb, time_index)
        return out if x.ndim == 3 else unpatchify(out, grid, cfg.patch_size, x.shape)

    def _head(self, h: jax.Array, temb: jax.Array,
              time_index: jax.Array | None = None) -> jax.Array:
        """One sample's output tokens [L, pt*ph*pw*C_out] from its last hidden state [L, D] and
        time embedding [D] (or [S, D] per segment, token l taking row time_index[l]): adaLN
        (shift, scale) norm, then the output projection."""
        mod = self.scale_shift_table[...] + temb[..., None, :]           # [2, D] or [S, 2, D]
        shift, scale = jnp.unstack(mod if time_index is None else mod[time_index], axis=-2)
        return self.proj_out((layer_norm(h, self.config.eps) * (1 + scale) + shift
                              ).astype(self.config.dtype))

    def _run_blocks(self, h: jax.Array, *args: Any) -> jax.Array:
        """All blocks over h [B, L, D] (each block per sample, see `_per_sample`): nnx.scan over
        the stacked layers, or a Python loop over slices of them; each block rematerialised by
        config.remat_policy."""
        cfg = self.config

        def body(h: jax.Array, block: Block) -> jax.Array:
            return _per_sample(block, _gradient_barrier(h), *args)

        if cfg.remat_policy != "none":
            body = nnx.remat(body, policy=remat_policy(cfg.remat_policy),
                             prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            return nnx.scan(body, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
                            transform_metadata={nnx.PARTITION_NAME: None})(h, self.blocks)
        graphdef, state = nnx.split(self.blocks)
        for i in range(cfg.num_layers):
            h = body(h, nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state)))
        return h


@jax.custom_vjp
def _gradient_barrier(x: jax.Array) -> jax.Array:
    """Identity whose gradient is materialised (an optimisation barrier). Without it, XLA fuses
    the residual stream's gradient through the norms and modulation of several blocks into each
    consumer and recomputes it there: a Python layer loop then ran up to ~40% slower on CPU."""
    return x


def _gradient_barrier_fwd(x):
    return x, None


def _gradient_barrier_bwd(_, g):
    return (jax.lax.optimization_barrier(g),)


_gradient_barrier.defvjp(_gradient_barrier_fwd, _gradient_barrier_bwd)


def _per_sample(fn: Any, *args: Any) -> jax.Array:
    """fn (written for one sample) over the batch of args (pytrees of arrays with a leading
    batch axis): vmapped with the batch's mesh axes as spmd axes (shardings inside fn keep the
    batch split), or called on the only sample of a batch of one (XLA:CPU reduces much faster
    without a leading axis of size 1, see vidgen/models/dit_layers.py)."""
    batch = jax.tree.leaves(args)[0].shape[0]
    if batch == 1:
        return fn(*jax.tree.map(lambda a: a[0], args))[None]
    return jax.vmap(fn, spmd_axis_name=mesh_lib.batch_spmd_axes(batch))(*args)


def _time_index(t: jax.Array, segment_ids: jax.Array | None) -> jax.Array | None:
    """For per-segment times t [B, S]: each token's row of t, [B, L] (padding: row 0)."""
    if t.ndim == 1:
        return None
    if segment_ids is None:
        raise ValueError("per-segment flow times t [B, S] need segment_ids [B, L]")
    return jnp.clip(segment_ids - 1, 0, t.shape[1] - 1)


def _masks(context_mask: jax.Array | None, segment_ids: jax.Array | None,
           context_segment_ids: jax.Array | None) -> dict[str, dict[str, jax.Array]]:
    """The attention keyword arguments of self- and cross-attention: segment ids [B, L] (and
    [B, Lc]) and the text padding mask [B, 1, 1, Lc], never an [L, L] mask, so every attention
    kernel (splash, sequence-parallel) takes them."""
    if context_segment_ids is not None and segment_ids is None:
        raise ValueError("context_segment_ids needs segment_ids for the video tokens")
    own = {} if segment_ids is None else {"q_segment_ids": segment_ids,
                                          "kv_segment_ids": segment_ids}
    cross = {}
    if context_mask is not None:
        cross["mask"] = jnp.asarray(context_mask, bool)[:, None, None, :]
    if context_segment_ids is not None:
        cross.update(q_segment_ids=segment_ids, kv_segment_ids=context_segment_ids)
    return {"self": own, "cross": cross}

"""The one attention entry point of vidgen's models: q/k/v [B, L, H, K] (or one sample's
[L, H, K]) -> [B, Lq, H, K] (or [Lq, H, K]).

`dot_product_attention` combines a boolean mask with segment ids (packed sequences: a token only
attends to tokens of its own segment). When the current mesh (vidgen/parallel/mesh.py) splits
anything, it runs the kernel on each device's slice under shard_map (vidgen/parallel/context.py:
batch, heads and, with sequence parallelism, Ulysses all-to-alls); the kernel is, by the
platform of the mesh's devices (so an ahead-of-time compile for a TPU picks splash on a CPU host)
and the dtype:
- 'blocked' (the default on CPU): softmax attention written out as einsums over blocks of
  QUERY_BLOCK queries (heads-major scores [H, block, Lk] in float32, which stay in cache), with
  a hand-written backward that recomputes each block's probabilities from the saved
  log-sum-exp (dV = P^T dO, dS = P * (dP - rowsum(P * dP)), dQ = dS K, dK = dS^T Q), so no
  [H, Lq, Lk] array is stored. Forward plus backward at 1024 tokens, 8 heads of 64 on this
  2-core machine: ~112 ms against ~150 ms unblocked (probabilities saved) and ~200 ms for
  `jax.nn.dot_product_attention`'s XLA path with autodiff (PyTorch's fused CPU flash attention:
  ~98 ms);
- 'xla' / 'cudnn': `jax.nn.dot_product_attention` (cuDNN flash attention is the default on GPU
  for bfloat16/float16 inputs, XLA elsewhere);
- 'splash' (the default on TPU): Pallas splash attention
  (jax.experimental.pallas.ops.tpu.splash_attention), fed segment ids: the mask must be a
  key-padding mask ([B, 1, 1, Lk]), which becomes a key segment no query has
  (`splash_segment_ids`); lengths are padded to its blocks, and long sequences get larger key
  blocks and query chunks (`splash_plan`) so that its per-block metadata fits the TensorCore.
Rows with nothing to attend to (a fully masked query) return zeros, never NaN.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from vidgen.parallel import context
from vidgen.parallel import mesh as mesh_lib

IMPLEMENTATIONS = (None, "blocked", "xla", "cudnn", "splash")


def combined_mask(mask: jax.Array | None, q_segment_ids: jax.Array | None,
                  kv_segment_ids: jax.Array | None, *, batched: bool = True
                  ) -> jax.Array | None:
    """The boolean attention mask [B, 1 or H, Lq, Lk] (batched) or [1 or H, Lq, Lk] (True =
    attend) that the boolean `mask` (any shape broadcastable to that) and the segment ids
    ([B, Lq] and [B, Lk], or [Lq] and [Lk]) describe together."""
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    if q_segment_ids is not None:
        same = q_segment_ids[..., None, :, None] == kv_segment_ids[..., None, None, :]
        mask = same if mask is None else jnp.logical_and(mask, same)
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        rank = 4 if batched else 3
        mask = mask.reshape((1,) * (rank - mask.ndim) + mask.shape)
    return mask


def platform() -> str:
    """The platform attention compiles for: that of the current mesh's devices (a TPU topology
    when compiling ahead of time on a CPU host), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else mesh.abstract_device
    return jax.default_backend() if device is None else device.platform


def choose(implementation: str | None, dtype: jnp.dtype, on: str) -> str:
    """The kernel for platform `on`: splash on TPU, cuDNN on a GPU for half-precision inputs
    (cuDNN's flash kernels need them), 'blocked' on CPU, else XLA; or `implementation` when it
    is given (splash only on TPU)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r}: expected one of "
                         f"{IMPLEMENTATIONS}")
    if implementation == "splash" and on != "tpu":
        raise ValueError(f"attention implementation 'splash' is a TPU kernel; this program "
                         f"compiles for {on!r}")
    if implementation is not None:
        return implementation
    if on == "tpu":
        return "splash"
    if on == "cpu":
        return "blocked"
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if half and on == "gpu" else "xla"


QUERY_BLOCK = 256     # queries per block of the 'blocked' implementation (fastest of 64-512 here)


def _block_mask(mask: jax.Array | None, lq: int, pad: int, nb: int) -> jax.Array | None:
    """mask [1|H, Lq|1, Lk] -> [nb, 1|H, block|1, Lk] (padded query rows masked out)."""
    if mask is None:
        return None
    if mask.shape[-2] == 1:
        return jnp.broadcast_to(mask[None], (nb,) + mask.shape)
    mask = jnp.pad(mask, ((0, 0), (0, pad), (0, 0)))
    return jnp.moveaxis(mask.reshape(mask.shape[0], nb, (lq + pad) // nb, -1), 1, 0)


def _scores(q: jax.Array, k: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Scaled scores float32 [H, Lq, Lk] of one query block; masked entries very negative."""
    s = jnp.einsum("lhk,mhk->hlm", q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype), k,
                   preferred_element_type=jnp.float32)
    return s if mask is None else jnp.where(mask, s, jnp.finfo(jnp.float32).min)


def _block_forward(k, v, block):
    """One query block: (output [bq, H, K], log-sum-exp float32 [H, bq, 1])."""
    q, mask = block
    s = _scores(q, k, mask)
    m = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(s - m) if mask is None else jnp.where(mask, jnp.exp(s - m), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    total = jnp.where(total > 0, total, 1.0)                  # fully masked rows: zeros
    out = jnp.einsum("hlm,mhk->lhk", (e / total).astype(v.dtype), v)
    return out, m + jnp.log(total)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _blocked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                       name: str | None = None) -> jax.Array:
    """Softmax attention of one sample, q [Lq, H, K], k and v [Lk, H, K], mask [1|H, Lq|1, Lk]
    or None, computed QUERY_BLOCK queries at a time (see the module docstring); the output and
    log-sum-exp carry the checkpoint name `name` (see dot_product_attention)."""
    return _blocked_attention_fwd(q, k, v, mask, name)[0]


def _blocked_attention_fwd(q, k, v, mask, name):
    lq, h, kd = q.shape
    nb = -(-lq // QUERY_BLOCK)
    pad = nb * QUERY_BLOCK - lq if nb > 1 else 0
    qs = jnp.pad(q, ((0, pad), (0, 0), (0, 0))).reshape(nb, -1, h, kd)
    masks = _block_mask(mask, lq, pad, nb)
    out, lse = jax.lax.map(lambda block: _block_forward(k, v, block), (qs, masks))
    out = out.reshape(-1, h, kd)[:lq]
    if name is not None:
        out, lse = checkpoint_name(out, name), checkpoint_name(lse, name)
    return out, (qs, k, v, masks, lse)


def _blocked_attention_bwd(name, residuals, d_out):
    del name                                    # names only the forward's outputs
    qs, k, v, masks, lse = residuals
    lq, (nb, bq, h, kd) = d_out.shape[0], qs.shape
    d_outs = jnp.pad(d_out, ((0, nb * bq - lq), (0, 0), (0, 0))).reshape(qs.shape)

    def block(carry, xs):                       # probabilities recomputed from the lse
        dk, dv = carry
        q, do, mask, lse = xs
        p = jnp.exp(_scores(q, k, mask) - lse)                              # [H, bq, Lk]
        p = p if mask is None else jnp.where(mask, p, 0.0)
        dv = dv + jnp.einsum("hlm,lhk->mhk", p.astype(do.dtype), do,
                             preferred_element_type=jnp.float32)
        dp = jnp.einsum("lhk,mhk->hlm", do, v, preferred_element_type=jnp.float32)
        ds = (p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True)) * kd ** -0.5).astype(q.dtype)
        dk = dk + jnp.einsum("hlm,lhk->mhk", ds, q, preferred_element_type=jnp.float32)
        return (dk, dv), jnp.einsum("hlm,mhk->lhk", ds, k)

    zeros = jnp.zeros(k.shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(block, (zeros, zeros), (qs, d_outs, masks, lse))
    return dq.reshape(-1, h, kd)[:lq], dk.astype(k.dtype), dv.astype(v.dtype), None


_blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_bwd)


def _jax_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                   implementation: str) -> jax.Array:
    """jax.nn.dot_product_attention on [B, L, H, K] (a batch of one for unbatched inputs), with
    fully masked query rows set to zero."""
    if q.ndim == 3:
        batch = (lambda a: None if a is None else a[None])
        return _jax_attention(q[None], k[None], v[None], batch(mask), implementation)[0]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
    if mask is None:
        return out
    alive = jnp.swapaxes(jnp.any(mask, axis=-1), 1, 2)[..., None]          # [B, Lq, 1|H, 1]
    return jnp.where(alive, out, jnp.zeros((), out.dtype))


SPLASH_BLOCK = 512        # splash's query / key block (a multiple of 128), smaller for short L
# Splash keeps per-block metadata, (query blocks x key blocks) entries of 1-2 bytes in a few
# arrays shared by all heads, in the TensorCore's scalar memory (1 MiB on v5p): at 2M tokens and
# 512-token blocks one such array is 30 MB, which the compiler refuses. Long sequences get larger
# key blocks, up to SPLASH_MAX_KEY_BLOCK (VMEM: splash's dk/dv kernel with 512 x 4096 blocks
# needs 16.5 MiB of its 16 MiB scoped limit), then queries split into chunks, one kernel call
# each, to stay under this many entries.
SPLASH_METADATA = 2 ** 17
SPLASH_MAX_KEY_BLOCK = 2048
NO_SEGMENT = int(jnp.iinfo(jnp.int32).min)   # key segment id of masked keys: no query has it


def splash_segment_ids(mask: jax.Array | None, q_segment_ids: jax.Array | None,
                       kv_segment_ids: jax.Array | None, q_shape: tuple[int, ...],
                       lk: int) -> tuple[jax.Array, jax.Array]:
    """Segment ids (q [..., Lq], kv [..., Lk], int32, batch dims of q_shape [..., Lq, H, K])
    under which query i may attend key j exactly where `combined_mask` allows it: the mask
    may only pad keys ([B|1, 1, 1, Lk], or lower rank); masked keys get the id NO_SEGMENT."""
    lead, lq = tuple(q_shape[:-3]), q_shape[-3]
    q_ids = jnp.zeros((lq,), jnp.int32) if q_segment_ids is None else q_segment_ids
    kv_ids = jnp.zeros((lk,), jnp.int32) if kv_segment_ids is None else kv_segment_ids
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = mask.reshape((1,) * (len(q_shape) - mask.ndim) + mask.shape)
        if mask.shape[-3:-1] != (1, 1):
            raise ValueError(f"splash attention takes segment ids and key-padding masks "
                             f"[B, 1, 1, Lk]; got a mask of shape {mask.shape} (per query or "
                             "head): pass segment ids instead")
        kv_ids = jnp.where(mask[..., 0, 0, :], kv_ids, NO_SEGMENT)
    return (jnp.broadcast_to(q_ids, lead + (lq,)).astype(jnp.int32),
            jnp.broadcast_to(kv_ids, lead + (lk,)).astype(jnp.int32))


def _has_key(q_ids: jax.Array, kv_ids: jax.Array) -> jax.Array:
    """bool [Lq]: whether some key shares query i's segment id (sorted search, O(L log L))."""
    keys = jnp.sort(kv_ids)
    found = keys[jnp.clip(jnp.searchsorted(keys, q_ids), 0, keys.shape[0] - 1)]
    return found == q_ids


class _AllTrue(np.ndarray):
    """An all-True bool block whose whole-array any() and all() cost nothing (_full_mask_type)."""

    def any(self, *args, **kwargs):
        return np.True_ if not args and not kwargs else super().any(*args, **kwargs)

    def all(self, *args, **kwargs):
        return np.True_ if not args and not kwargs else super().all(*args, **kwargs)


@functools.cache
def _full_mask_type() -> type:
    """Splash's FullMask whose blocks are zero-copy all-True views. Splash scans a mask block by
    block on the host whenever it builds a kernel; for a plain FullMask that costs O(Lq x Lk)
    (about half an hour per kernel at 2M tokens), for this one O(number of blocks)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    class FullBlocks(splash.FullMask):
        def __getitem__(self, idx) -> np.ndarray:
            if not isinstance(idx, tuple) or len(idx) != 2 or not all(
                    isinstance(i, slice) for i in idx):
                raise NotImplementedError(f"Unsupported slice: {idx}")
            rows, cols = (len(range(*i.indices(n))) for i, n in zip(idx, self.shape))
            return np.broadcast_to(np.True_, (rows, cols)).view(_AllTrue)

    return FullBlocks


@dataclasses.dataclass(frozen=True)
class SplashPlan:
    """How splash covers Lq x Lk: query chunks of `chunk` queries (one kernel call each; the
    queries padded to a whole number of chunks) and (query, key) blocks within a call."""

    chunk: int
    block_q: int
    block_k: int


def splash_plan(lq: int, lk: int) -> SplashPlan:
    """Blocks of SPLASH_BLOCK (less for short sequences, a multiple of 128); while a call would
    keep more than SPLASH_METADATA block entries, key blocks double up to SPLASH_MAX_KEY_BLOCK,
    then the queries are split into the fewest equal chunks (whole blocks) that fit."""
    bq, bk = (min(SPLASH_BLOCK, -(-n // 128) * 128) for n in (lq, lk))
    query_blocks = -(-lq // bq)
    while query_blocks * -(-lk // bk) > SPLASH_METADATA and bk < SPLASH_MAX_KEY_BLOCK:
        bk *= 2
    per_call = max(1, SPLASH_METADATA // -(-lk // bk))                 # query blocks per call
    chunks = -(-query_blocks // per_call)
    return SplashPlan(bq * -(-query_blocks // chunks), bq, bk)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, q_ids: jax.Array,
                     kv_ids: jax.Array, *, name: str | None = None,
                     fused_backward: bool = False, interpret: bool = False) -> jax.Array:
    """Pallas splash attention of q [(B,) Lq, H, K], k and v [(B,) Lk, H, K] under segment ids
    [(B,) Lq] and [(B,) Lk] (see splash_segment_ids); lengths are padded to the kernel's blocks
    (the padding is a segment of its own) and queries without a key get zeros. The kernel's
    output and log-sum-exp carry the checkpoint name `name`; `fused_backward` computes dq, dk
    and dv in one backward kernel; `interpret` runs the kernel in Pallas' interpreter (any
    platform; for tests)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash
    if q.ndim == 4:
        return jax.vmap(functools.partial(splash_attention, name=name, interpret=interpret,
                                          fused_backward=fused_backward))(q, k, v, q_ids, kv_ids)
    (lq, h, kd), lk = q.shape, k.shape[0]
    plan = splash_plan(lq, lk)
    bq, bk = plan.block_q, plan.block_k
    pq, pk = (-lq) % plan.chunk, (-lk) % bk
    tile = min(bk, SPLASH_BLOCK)         # keys per step inside a key block: bounds the scores
    dq_blocks = {} if fused_backward else dict(block_q_dq=bq, block_kv_dq=bk)
    blocks = splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=tile, block_q_dkv=bq,
                               block_kv_dkv=bk, block_kv_dkv_compute=tile,
                               use_fused_bwd_kernel=fused_backward, **dq_blocks)
    mask = splash.MultiHeadMask([_full_mask_type()((plan.chunk, lk + pk))] * h)
    kernel = splash.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                    residual_checkpoint_name=name, interpret=interpret)

    def heads_major(x: jax.Array, pad: int) -> jax.Array:                    # [H, L, K]
        return jnp.pad(x, ((0, pad), (0, 0), (0, 0))).transpose(1, 0, 2)

    keys, values = heads_major(k, pk), heads_major(v, pk)
    key_ids = jnp.pad(kv_ids, (0, pk), constant_values=NO_SEGMENT)
    queries = heads_major(q * jnp.asarray(kd ** -0.5, q.dtype), pq)       # [H, C x chunk, K]
    query_ids = jnp.pad(q_ids, (0, pq), constant_values=NO_SEGMENT + 1)
    num_chunks = (lq + pq) // plan.chunk

    def call(chunk: tuple[jax.Array, jax.Array]) -> jax.Array:                # [H, chunk, K]
        return kernel(chunk[0], keys, values, segment_ids=splash.SegmentIds(chunk[1], key_ids))

    if num_chunks == 1:
        out = call((queries, query_ids))
    else:                 # query chunks are independent: autodiff sums their dk and dv
        out = jax.lax.map(call, (queries.reshape(h, num_chunks, plan.chunk, kd).swapaxes(0, 1),
                                 query_ids.reshape(num_chunks, plan.chunk)))
        out = out.swapaxes(0, 1).reshape(h, -1, kd)
    out = out.transpose(1, 0, 2)[:lq]
    return jnp.where(_has_key(q_ids, kv_ids)[:, None, None], out, jnp.zeros((), out.dtype))


def local_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                    q_segment_ids: jax.Array | None, kv_segment_ids: jax.Array | None, *,
                    implementation: str, name: str | None = None,
                    fused_backward: bool = False) -> jax.Array:
    """Attention of arrays on one device with the kernel `implementation` (see the module
    docstring); what each device runs under the sharded path."""
    if implementation == "splash":
        ids = splash_segment_ids(mask, q_segment_ids, kv_segment_ids, q.shape, k.shape[-3])
        return splash_attention(q, k, v, *ids, name=name, fused_backward=fused_backward)
    full = combined_mask(mask, q_segment_ids, kv_segment_ids, batched=q.ndim == 4)
    if implementation != "blocked":
        return _jax_attention(q, k, v, full, implementation)
    blocked = lambda q, k, v, m: _blocked_attention(q, k, v, m, name)   # noqa: E731
    if q.ndim == 3:
        return blocked(q, k, v, full)
    if full is not None and full.shape[0] == 1:                 # one mask for the whole batch
        return jax.vmap(blocked, in_axes=(0, 0, 0, None))(q, k, v, full[0])
    return jax.vmap(blocked)(q, k, v, full)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          mask: jax.Array | None = None,
                          q_segment_ids: jax.Array | None = None,
                          kv_segment_ids: jax.Array | None = None,
                          implementation: str | None = None,
                          name: str | None = None,
                          fused_backward: bool = False) -> jax.Array:
    """Softmax(q k^T / sqrt(K)) v over q [B, Lq, H, K], k and v [B, Lk, H, K] -> [B, Lq, H, K]
    (or the same without the batch axis B).

    mask: bool, broadcastable to [B, H, Lq, Lk] ([H, Lq, Lk] unbatched), True where a query may
    attend to a key. q_segment_ids [B, Lq], kv_segment_ids [B, Lk] ([Lq], [Lk] unbatched): ints;
    attention only within equal ids. implementation: None (pick for the platform and dtype),
    'blocked', 'xla', 'cudnn' or 'splash'. A query row whose mask is all False gets zeros.
    name: a checkpoint name (jax.ad_checkpoint.checkpoint_name) for what the kernel's backward
    needs of its forward (output and log-sum-exp; 'blocked' and 'splash' only), so that a remat
    policy saving that name does not run the attention forward again. fused_backward: splash's
    single backward kernel for dq, dk and dv (ignored by the other kernels). Under a mesh that
    splits anything, each device attends its own slice (vidgen/parallel/context.py).
    """
    if q.ndim not in (3, 4):
        raise ValueError(f"attention takes q [B, L, H, K] or [L, H, K], got shape {q.shape}")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("q_segment_ids and kv_segment_ids must be given together")
    kernel = functools.partial(local_attention, name=name, fused_backward=fused_backward,
                               implementation=choose(implementation, q.dtype, platform()))
    if mesh_lib.splits_anything():
        return context.sharded_attention(kernel, q, k, v, mask, q_segment_ids, kv_segment_ids)
    return kernel(q, k, v, mask, q_segment_ids, kv_segment_ids)

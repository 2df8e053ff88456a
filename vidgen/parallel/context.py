"""Attention on a mesh: every device attends its own slice of the batch, the heads and (with
sequence parallelism) the tokens, with a single-device kernel, inside one shard_map.

    out = sharded_attention(kernel, q, k, v, mask, q_segment_ids, kv_segment_ids)

The attention entry point (vidgen/models/attention.py) calls this whenever the current mesh splits
anything (`mesh.splits_anything`). The logical-axis rules (vidgen/parallel/mesh.py) say which
mesh axes split what: `act_batch` the examples, `act_heads` the heads (Megatron tensor
parallelism: q, k, v come out of column-parallel projections already split by heads), `act_len`
the tokens (sequence parallelism). With the tokens split:
- self-attention (Lq == Lk): Ulysses (DeepSpeed-Ulysses). An all-to-all over the sequence axes
  trades each device's token slice of H / tensor heads for all tokens of H / (tensor x sequence)
  heads; the kernel runs on those; a second all-to-all trades back. Per layer that moves q, k,
  v and the output once each ([B, L / S, H / T, K] per device); the attention itself needs no
  further communication. The heads must divide by tensor x sequence.
- cross-attention (keys of another length, e.g. text tokens): the queries stay split and every
  device reads all keys.
Segment ids travel whole to every device ([B, L] ints); a mask's head axis is split like the
heads and, without Ulysses, its query axis like the queries. Batch sharding inside a vmap over
examples comes from the vmap's spmd_axis_name (see vidgen/models/dit.py's `_per_sample`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from vidgen.parallel import mesh as mesh_lib

Kernel = Callable[..., jax.Array]     # (q, k, v, mask, q_segment_ids, kv_segment_ids) -> out


@dataclasses.dataclass(frozen=True)
class Layout:
    """How attention splits over the mesh: the mesh axes of the batch (empty when q has no
    batch axis or the batch does not divide), of the heads, and of the query tokens; ulysses:
    whether keys are split too and all-to-alls trade tokens for heads."""

    batch: tuple[str, ...]
    heads: tuple[str, ...]
    tokens: tuple[str, ...]
    ulysses: bool


def plan(q_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> Layout:
    """The Layout for q [(B,) Lq, H, K] and k [(B,) Lk, H, K] under the current mesh and
    rules; raises when the heads do not split as the mesh asks."""
    (lq, h), lk = q_shape[-3:-1], k_shape[-3]
    batch = mesh_lib.dividing_axes("act_batch", q_shape[0]) if len(q_shape) == 4 else ()
    heads, tokens = mesh_lib.active_axes("act_heads"), mesh_lib.dividing_axes("act_len", lq)
    if h % mesh_lib.axes_size(heads):
        raise ValueError(f"attention: {h} heads do not split over the act_heads mesh axes "
                         f"{heads} ({mesh_lib.axes_size(heads)} devices)")
    ulysses = bool(tokens) and lq == lk
    ways = mesh_lib.axes_size(heads + tokens)
    if ulysses and h % ways:
        raise ValueError(f"Ulysses sequence parallelism splits the {h} attention heads over "
                         f"the mesh axes {heads + tokens} (act_heads x act_len, {ways} "
                         f"devices): the number of heads must be divisible by {ways}")
    return Layout(batch, heads, tokens, ulysses)


def _specs(layout: Layout, q: jax.Array, extras: dict[str, jax.Array]
           ) -> tuple[P, P, dict[str, P]]:
    """PartitionSpecs of q (and the output), of k and v, and of the mask / segment ids."""
    entry = mesh_lib.spec_entry
    lead = (entry(layout.batch),) if q.ndim == 4 else ()
    tokens, heads = entry(layout.tokens), entry(layout.heads)
    q_spec = P(*lead, tokens, heads, None)
    kv_spec = P(*lead, tokens if layout.ulysses else None, heads, None)
    specs = {}
    if "mask" in extras:
        m = extras["mask"]
        mask_lead = () if q.ndim == 3 else (lead[0] if m.shape[0] == q.shape[0] else None,)
        mask_heads = layout.heads + (layout.tokens if layout.ulysses else ())
        split_queries = not layout.ulysses and m.shape[-2] == q.shape[-3]
        specs["mask"] = P(*mask_lead, entry(mask_heads) if m.shape[-3] == q.shape[-2] else None,
                          tokens if split_queries else None, None)
    if "q_segment_ids" in extras:
        specs["q_segment_ids"] = P(*lead, None if layout.ulysses else tokens)
        specs["kv_segment_ids"] = P(*lead, None)
    return q_spec, kv_spec, specs


def sharded_attention(kernel: Kernel, q: jax.Array, k: jax.Array, v: jax.Array,
                      mask: jax.Array | None, q_segment_ids: jax.Array | None,
                      kv_segment_ids: jax.Array | None) -> jax.Array:
    """`kernel` on every device's slice of q [(B,) Lq, H, K], k and v [(B,) Lk, H, K] (see the
    module docstring); mask and segment ids as `kernel` takes them, or None."""
    layout = plan(q.shape, k.shape)
    extras = {"mask": mask, "q_segment_ids": q_segment_ids, "kv_segment_ids": kv_segment_ids}
    extras = {name: a for name, a in extras.items() if a is not None}
    if "mask" in extras:              # full rank, so each mask axis has its own spec
        m = jnp.asarray(extras["mask"], bool)
        extras["mask"] = m.reshape((1,) * (q.ndim - m.ndim) + m.shape)
    q_spec, kv_spec, extra_specs = _specs(layout, q, extras)
    axis = mesh_lib.spec_entry(layout.tokens)

    def body(q, k, v, extras):
        if layout.ulysses:            # tokens split -> heads split
            q, k, v = (jax.lax.all_to_all(a, axis, a.ndim - 2, a.ndim - 3, tiled=True)
                       for a in (q, k, v))
        out = kernel(q, k, v, extras.get("mask"), extras.get("q_segment_ids"),
                     extras.get("kv_segment_ids"))
        if layout.ulysses:            # and back
            out = jax.lax.all_to_all(out, axis, out.ndim - 3, out.ndim - 2, tiled=True)
        return out

    # check_vma=False: the kernels (custom VJPs with scans, Pallas calls) are written for one
    # device and do not mark their constants as varying over the mesh axes
    return jax.shard_map(body, in_specs=(q_spec, kv_spec, kv_spec, extra_specs),
                         out_specs=q_spec, check_vma=False)(q, k, v, extras)

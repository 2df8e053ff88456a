"""3D rotary position embedding over (t, h, w) token positions, Wan 2.1's layout.

The head dimension K splits into three parts, one per axis, exactly as diffusers'
WanRotaryPosEmbed: h and w get 2 * (K // 6) channels each, t gets the rest (K - 4 * (K // 6)).
Within each part, channel pairs (2i, 2i + 1) rotate by the angle pos * theta^(-2i / d_axis)
(interleaved pairs, `repeat_interleave_real`). Positions are explicit integers [B, L, 3], so a
packed sequence of clips of different sizes, or any duration / resolution / aspect ratio, just
brings its own positions (`grid_positions` makes them for one latent grid). Angles come from a
float64 table of `max_len` positions per axis cast to float32, as diffusers computes them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels of the head dimension given to the (t, h, w) axes (each even)."""
    if head_dim % 2:
        raise ValueError(f"3D RoPE needs an even head dimension, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _table(dim: int, max_len: int, theta: float) -> np.ndarray:
    """Angles [max_len, dim // 2] of positions 0..max_len-1 for one axis, in float64."""
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    return np.outer(np.arange(max_len, dtype=np.float64), freqs)


def frequencies(positions: jax.Array, head_dim: int, *, theta: float = 10000.0,
                max_len: int = 1024) -> tuple[jax.Array, jax.Array]:
    """(cos, sin), each float32 [B, L, 1, head_dim // 2], of int positions [B, L, 3] (t, h, w).
    Positions must lie in [0, max_len) (diffusers' rope_max_seq_len; larger ones are clipped)."""
    cos, sin = [], []
    for axis, dim in enumerate(axis_dims(head_dim)):
        angles = _table(dim, max_len, theta)
        pos = positions[..., axis]
        cos.append(jnp.take(jnp.asarray(np.cos(angles), jnp.float32), pos, axis=0, mode="clip"))
        sin.append(jnp.take(jnp.asarray(np.sin(angles), jnp.float32), pos, axis=0, mode="clip"))
    return (jnp.concatenate(cos, axis=-1)[:, :, None, :],
            jnp.concatenate(sin, axis=-1)[:, :, None, :])


def apply(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates the channel pairs of x [B, L, H, K] by the angles of (cos, sin) [B, L, 1, K/2];
    computed in float32, returned in x's dtype."""
    pairs = x.astype(jnp.float32).reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    x1, x2 = pairs[..., 0], pairs[..., 1]
    out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def grid_positions(batch: int, t: int, h: int, w: int) -> jax.Array:
    """int32 [batch, t * h * w, 3]: the (t, h, w) coordinates of a t x h x w token grid in
    row-major order (the order in which the DiT flattens its patches)."""
    grid = jnp.stack(jnp.meshgrid(jnp.arange(t), jnp.arange(h), jnp.arange(w), indexing="ij"),
                     axis=-1).reshape(t * h * w, 3)
    return jnp.broadcast_to(grid.astype(jnp.int32), (batch, t * h * w, 3))

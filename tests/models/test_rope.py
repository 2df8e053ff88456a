"""3D RoPE (vidgen/models/rope.py): the relative-position property per axis, a float64 NumPy
rotation, and agreement with diffusers' WanRotaryPosEmbed (the published Wan 2.1 layout)."""

import jax.numpy as jnp
import numpy as np
import pytest

from vidgen.models import rope

HEAD_DIM = 20          # splits (t, h, w) = (8, 6, 6): unequal parts, so a wrong split shows


def _rotate(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """rope.apply on x [1, L, 1, K] at int positions [1, L, 3]."""
    cos, sin = rope.frequencies(jnp.asarray(positions), HEAD_DIM)
    return np.asarray(rope.apply(jnp.asarray(x), cos, sin), np.float64)


def test_axis_split_matches_wan():
    assert rope.axis_dims(128) == (44, 42, 42)          # Wan 2.1's 128-channel heads
    assert rope.axis_dims(HEAD_DIM) == (8, 6, 6)
    with pytest.raises(ValueError, match="even"):
        rope.axis_dims(15)


def test_dot_product_depends_only_on_position_differences():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(2, 1, 1, 1, HEAD_DIM)).astype(np.float32)
    base = rng.integers(0, 40, size=(6, 2, 3))          # 6 random (query, key) position pairs
    for axis in range(3):
        shift = np.zeros(3, int)
        shift[axis] = 17
        dots = []
        for offset in (0, 1):                           # both positions shifted together
            for pq, pk in base:
                rq = _rotate(q, (pq + offset * shift)[None, None])
                rk = _rotate(k, (pk + offset * shift)[None, None])
                dots.append(np.sum(rq * rk))
        dots = np.array(dots).reshape(2, -1)
        change = np.abs(dots[0] - dots[1]).max()
        print(f"axis {axis}: max |q.k change| when both positions shift: {change:.2e}")
        np.testing.assert_allclose(dots[0], dots[1], atol=1e-4)
        moved = _rotate(k, (base[0, 1] + shift)[None, None])      # only the key moves: changes
        assert abs(np.sum(_rotate(q, base[0, 0][None, None]) * moved) - dots[0, 0]) > 1e-3


def test_rotation_matches_float64_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 5, 3, HEAD_DIM)).astype(np.float32)
    pos = rng.integers(0, 1000, size=(1, 5, 3))
    cos, sin = rope.frequencies(jnp.asarray(pos), HEAD_DIM)
    ours = np.asarray(rope.apply(jnp.asarray(x), cos, sin))
    angles = []
    for axis, dim in enumerate(rope.axis_dims(HEAD_DIM)):
        inv = 10000.0 ** (-np.arange(0, dim, 2) / dim)
        angles.append(pos[0, :, axis, None] * inv[None])
    z = x[..., 0::2].astype(np.float64) + 1j * x[..., 1::2]
    z = z * np.exp(1j * np.concatenate(angles, axis=-1))[None, :, None, :]
    ref = np.stack([z.real, z.imag], axis=-1).reshape(x.shape)
    print(f"rope vs float64 rotation: max abs err {np.abs(ours - ref).max():.2e}")
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_frequencies_match_diffusers():
    torch = pytest.importorskip("torch")
    diffusers_wan = pytest.importorskip("diffusers.models.transformers.transformer_wan")
    embed = diffusers_wan.WanRotaryPosEmbed(HEAD_DIM, (1, 2, 2), max_seq_len=1024)
    cos_ref, sin_ref = embed(torch.zeros(1, 4, 3, 10, 14))    # grid 3 x 5 x 7 (patch 1x2x2)
    cos, sin = rope.frequencies(rope.grid_positions(1, 3, 5, 7), HEAD_DIM)
    errors = [np.abs(np.asarray(ours) - ref.numpy()[..., 0::2]).max()
              for ours, ref in ((cos, cos_ref), (sin, sin_ref))]
    print(f"rope vs diffusers WanRotaryPosEmbed: max abs err {max(errors):.2e}")
    assert cos.shape == (1, 105, 1, HEAD_DIM // 2)
    assert max(errors) <= 1e-6

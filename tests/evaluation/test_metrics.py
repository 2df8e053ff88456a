"""PSNR/SSIM against a float64 NumPy/SciPy reference and analytic cases."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from vidgen.evaluation import metrics


def _reference_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Wang et al. 2004 in float64: 11x11 Gaussian (sigma 1.5) statistics, valid region only."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    pad = 5

    def blur(img):   # img [H, W]; truncate=3.5 gives radius 5 -> an 11-tap window
        out = ndimage.gaussian_filter(img, sigma=1.5, truncate=3.5, mode="constant")
        return out[pad:-pad, pad:-pad]

    scores = np.zeros(x.shape[:2])
    for i in range(x.shape[0]):
        for t in range(x.shape[1]):
            per_channel = []
            for c in range(x.shape[-1]):
                u, v = x[i, t, ..., c], y[i, t, ..., c]
                mu_u, mu_v = blur(u), blur(v)
                var_u, var_v = blur(u * u) - mu_u ** 2, blur(v * v) - mu_v ** 2
                cov = blur(u * v) - mu_u * mu_v
                c1, c2 = 0.01 ** 2, 0.03 ** 2
                smap = ((2 * mu_u * mu_v + c1) * (2 * cov + c2)) / (
                    (mu_u ** 2 + mu_v ** 2 + c1) * (var_u + var_v + c2))
                per_channel.append(smap.mean())
            scores[i, t] = np.mean(per_channel)
    return scores.mean(axis=1)


def _videos(seed: int = 0, shape=(2, 3, 24, 20, 3)):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    smooth = ndimage.uniform_filter(a.astype(np.float64), size=(1, 1, 5, 5, 1))
    noisy = np.clip(smooth + rng.normal(0, 12, shape), 0, 255).astype(np.uint8)
    return smooth.astype(np.uint8), noisy


def test_ssim_matches_float64_reference():
    a, b = _videos()
    got = np.asarray(metrics.ssim(jnp.asarray(a), jnp.asarray(b)))
    want = _reference_ssim(a / 255.0, b / 255.0)
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert np.all(want < 0.99)          # the case is not trivially near 1


def test_ssim_identical_is_one_and_float_equals_uint8():
    a, b = _videos(1)
    same = metrics.ssim(jnp.asarray(a), jnp.asarray(a))
    np.testing.assert_allclose(np.asarray(same), 1.0, atol=1e-6)
    as_float = jnp.asarray(b, jnp.float32) / 127.5 - 1.0
    np.testing.assert_allclose(np.asarray(metrics.ssim(jnp.asarray(a), as_float)),
                               np.asarray(metrics.ssim(jnp.asarray(a), jnp.asarray(b))), atol=1e-5)


def test_psnr_analytic_and_reference():
    a, b = _videos(2)
    assert np.all(np.isinf(np.asarray(metrics.psnr(jnp.asarray(a), jnp.asarray(a)))))
    # A constant offset of 0.1 in [-1, 1] is 0.05 in [0, 1]: MSE 0.0025 -> 26.0206 dB.
    x = jnp.zeros((1, 1, 12, 12, 3))
    np.testing.assert_allclose(np.asarray(metrics.psnr(x, x + 0.1)), 10 * np.log10(1 / 0.0025),
                               rtol=1e-5)
    mse = np.mean((a / 255.0 - b / 255.0) ** 2, axis=(1, 2, 3, 4))
    np.testing.assert_allclose(np.asarray(metrics.psnr(jnp.asarray(a), jnp.asarray(b))),
                               -10 * np.log10(mse), rtol=1e-5)


def test_float_inputs_are_clipped_to_range():
    x = jnp.zeros((1, 1, 12, 12, 3))
    np.testing.assert_allclose(np.asarray(metrics.psnr(x + 1.0, x + 3.0)), np.inf)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        metrics.psnr(jnp.zeros((1, 2, 8, 8, 3)), jnp.zeros((1, 2, 8, 9, 3)))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(jnp.zeros((1, 2, 8, 8, 3)), jnp.zeros((1, 2, 8, 8, 3)))
    with pytest.raises(ValueError, match="int32"):
        metrics.psnr(jnp.zeros((1, 1, 12, 12, 3), jnp.int32), jnp.zeros((1, 1, 12, 12, 3), jnp.int32))

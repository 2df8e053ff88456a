"""Reconstruction metrics for videos: PSNR and SSIM (Wang et al. 2004), in JAX.

Videos are `[B, T, H, W, 3]`, either uint8 or float in [-1, 1]; the two arguments may differ in
kind (uint8 originals against float reconstructions). Both are mapped to [0, 1] before comparing,
so the data range is 1. Scores are per video: PSNR from the mean squared error over the whole clip,
SSIM as the mean over frames and channels of the per-frame SSIM map.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11       # Gaussian window size and width used by Wang et al. 2004
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def to_unit(video: jax.Array, *, clip: bool = True) -> jax.Array:
    """Maps uint8 [0, 255] or float [-1, 1] video to float32 [0, 1] (clipped unless clip=False)."""
    if video.dtype == jnp.uint8:
        return video.astype(jnp.float32) / 255.0
    if not jnp.issubdtype(video.dtype, jnp.floating):
        raise ValueError(f"video dtype {video.dtype}: expected uint8 or float in [-1, 1]")
    unit = (video.astype(jnp.float32) + 1.0) * 0.5
    return jnp.clip(unit, 0.0, 1.0) if clip else unit


def _check_pair(a: jax.Array, b: jax.Array) -> None:
    if a.shape != b.shape or a.ndim != 5 or a.shape[-1] != 3:
        raise ValueError(f"videos must both be [B, T, H, W, 3]; got {a.shape} and {b.shape}")


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
    """Peak signal-to-noise ratio in dB per video, [B]; inf where the clips are identical."""
    _check_pair(a, b)
    mse = jnp.mean(jnp.square(to_unit(a) - to_unit(b)), axis=(1, 2, 3, 4))
    return -10.0 * jnp.log10(mse)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian whose outer product is the SSIM window."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).astype(np.float32)


def _band(size: int) -> np.ndarray:
    """[size - 10, size] matrix whose rows are the Gaussian window at each valid offset."""
    w = gaussian_window()
    band = np.zeros((size - SSIM_WINDOW + 1, size), np.float32)
    for i in range(band.shape[0]):
        band[i, i:i + SSIM_WINDOW] = w
    return band


def _blur(x: jax.Array) -> jax.Array:
    """Valid-mode separable Gaussian filtering of each channel of x [N, H, W, C].

    Written as two banded matmuls: XLA runs these far faster on CPU than a depthwise conv.
    """
    rows, cols = jnp.asarray(_band(x.shape[1])), jnp.asarray(_band(x.shape[2]))
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("ih,nhwc->niwc", rows, x, precision=hp)
    return jnp.einsum("jw,niwc->nijc", cols, x, precision=hp)


def ssim_frames(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean SSIM per frame, [N], for frames x, y [N, H, W, C] with values in [0, 1].

    Differentiable (no clipping), so the VAE loss uses it directly on unit-range frames.
    """
    if x.shape[1] < SSIM_WINDOW or x.shape[2] < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}; "
                         f"got {x.shape[1]}x{x.shape[2]}")
    stats = _blur(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1))
    mu_x, mu_y, xx, yy, xy = jnp.split(stats, 5, axis=-1)
    var_x, var_y = xx - mu_x * mu_x, yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return jnp.mean(ssim_map, axis=(1, 2, 3))


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
    """Structural similarity per video, [B]: per-frame SSIM averaged over the clip's frames."""
    _check_pair(a, b)
    batch, frames = a.shape[:2]
    x = to_unit(a).reshape((batch * frames,) + a.shape[2:])
    y = to_unit(b).reshape((batch * frames,) + b.shape[2:])
    return ssim_frames(x, y).reshape(batch, frames).mean(axis=1)

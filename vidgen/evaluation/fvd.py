"""Frechet Video Distance: the Frechet distance between Gaussians fitted to clip features.

    extractor = fvd.make_extractor(i3d_weights="i3d_pretrained_400.pt")   # or None: fallback
    score = fvd.fvd(extractor(real_clips), extractor(generated_clips))

For features x ~ N(mu_1, S_1) and y ~ N(mu_2, S_2) the distance is

    d^2 = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1^1/2 S_2 S_1^1/2)^1/2),

where the last trace equals tr((S_1 S_2)^1/2) (the two matrices are similar). Everything runs
in float64 NumPy; the square roots come from symmetric eigen-decompositions (no scipy), with
eigenvalues below rounding noise set to zero: covariances of fewer clips than feature
dimensions (the usual case in a sweep) are rank-deficient, and the square roots of their
noise eigenvalues would otherwise add errors of order sqrt(eps). Covariances are unbiased.

Features come from I3D (vidgen/evaluation/i3d.py: the Kinetics-400 Inception-v1 network of the
FVD paper, its 400 logits) when the user gives its weights, otherwise from the weight-free
fallback of vidgen/evaluation/clip_stats.py. Only the I3D numbers are comparable with published
FVD, and only for 16-frame clips: shorter clips are stretched to the length I3D needs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

FeatureExtractor = Callable[[np.ndarray], np.ndarray]   # uint8 [B, T, H, W, 3] -> [B, D]


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features [N, D], in float64."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D]; got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _above_noise(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with those below rounding noise (numerical rank cut-off,
    as np.linalg.matrix_rank: size * eps * largest) set to 0; their square roots would add
    up to errors of sqrt(eps)."""
    noise = len(values) * np.finfo(np.float64).eps * np.max(np.abs(values), initial=0.0)
    return np.where(values > noise, values, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric positive semi-definite square root of a symmetric PSD matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(_above_noise(values))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (module doc)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape}, {mu2.shape}; "
                         f"covariances {sigma1.shape}, {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    cross = np.sum(np.sqrt(_above_noise(inner)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


def fvd(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """Frechet distance between the Gaussian statistics of two feature sets [N, D], [M, D]."""
    return frechet_distance(*gaussian_stats(real_features), *gaussian_stats(fake_features))


def batched(extract: Callable[[np.ndarray], np.ndarray], batch_size: int) -> FeatureExtractor:
    """An extractor that feeds `extract` batches of min(batch_size, N) clips (bounded memory),
    the last one padded by repeating its last clip, so a jitted extractor compiles once."""
    def run(videos: np.ndarray) -> np.ndarray:
        size = min(batch_size, len(videos))
        parts = []
        for start in range(0, len(videos), size):
            chunk = videos[start:start + size]
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
            parts.append(np.asarray(extract(padded), np.float64)[:len(chunk)])
        return np.concatenate(parts)
    return run


def make_extractor(i3d_weights: str | None = None, batch_size: int = 8
                   ) -> tuple[str, FeatureExtractor]:
    """(name, extractor): I3D logits from the weight file if one is given (formats in
    vidgen/evaluation/i3d.py), else the fallback pixel-motion statistics of clip_stats.py,
    whose distances are not comparable with published FVD."""
    if i3d_weights:
        from vidgen.evaluation import i3d   # the network only when it is used
        return "i3d", batched(i3d.I3DFeatures(i3d.load_i3d(i3d_weights)), batch_size)
    from vidgen.evaluation import clip_stats
    return "pixel_motion", batched(clip_stats.pixel_motion_features, batch_size)

"""Weight-free per-clip statistics: temporal consistency, and the fallback FVD features.

Both read uint8 clips [B, T, H, W, 3] with pixels taken as values in [0, 1].

temporal consistency
    1 - mean |x_{t+1} - x_t| over consecutive frame pairs, pixels and channels: 1 for a still
    clip, 0 for one that flips between black and white every frame (the "temporal flickering"
    score of VBench, on [0, 1] pixels). It rewards smoothness, not quality: a frozen clip scores
    best, so read it beside the grader and FVD. NaN for a one-frame clip.

pixel-motion features (the FVD fallback when no I3D weights are given)
    Each frame is averaged over a GRID x GRID grid of cells (area pooling, any resolution).
    The 112 features are the cells' mean colour over time (48), their colour's standard
    deviation over time (48: what moves or changes at a coarse scale) and the mean absolute
    frame-to-frame change inside each cell over channels (16: motion and flicker at the pixel
    scale). They compare real and generated clips in layout, colour and motion, are
    deterministic and cheap on a CPU, but are not I3D: Frechet distances on them are not
    comparable with published FVD numbers, only with each other.
"""

from __future__ import annotations

import numpy as np

from vidgen.io.video import check_frames

GRID = 4
NUM_FEATURES = 2 * GRID * GRID * 3 + GRID * GRID


def _unit(videos: np.ndarray) -> np.ndarray:
    return check_frames(videos, "videos", batched=True).astype(np.float32) / 255.0


def temporal_consistency(videos: np.ndarray) -> np.ndarray:
    """Per clip, [B]: 1 - mean absolute difference of consecutive frames (module doc)."""
    x = _unit(videos)
    if x.shape[1] < 2:
        return np.full(x.shape[0], np.nan)
    return 1.0 - np.abs(np.diff(x, axis=1)).mean(axis=(1, 2, 3, 4), dtype=np.float64)


def grid_pool(x: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Means of x [..., H, W, C] over a grid x grid partition of (H, W): [..., grid, grid, C]."""
    height, width = x.shape[-3:-1]
    if height < grid or width < grid:
        raise ValueError(f"frames of {height}x{width} are smaller than the {grid}x{grid} grid")
    rows = np.linspace(0, height, grid + 1).round().astype(int)
    cols = np.linspace(0, width, grid + 1).round().astype(int)
    sums = np.add.reduceat(np.add.reduceat(x, rows[:-1], axis=-3), cols[:-1], axis=-2)
    counts = np.outer(np.diff(rows), np.diff(cols))[..., None]
    return sums / counts


def pixel_motion_features(videos: np.ndarray) -> np.ndarray:
    """The fallback FVD features of each clip, [B, NUM_FEATURES] float64 (module doc)."""
    x = _unit(videos)
    cells = grid_pool(x).astype(np.float64)                       # [B, T, G, G, 3]
    if x.shape[1] > 1:
        change = grid_pool(np.abs(np.diff(x, axis=1))).mean(axis=(1, 4), dtype=np.float64)
    else:
        change = np.zeros((x.shape[0], GRID, GRID))
    flat = [cells.mean(axis=1), cells.std(axis=1), change]
    return np.concatenate([f.reshape(x.shape[0], -1) for f in flat], axis=1)

"""Pictures for eyes: side-by-side comparison videos and PNG strips of frames.

Everything here works on host uint8 arrays `[T, H, W, 3]`; `to_uint8` brings model output there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image


def to_uint8(video: np.ndarray) -> np.ndarray:
    """Float video in [-1, 1] (values outside are clipped) to uint8; uint8 passes through."""
    video = np.asarray(video)
    if video.dtype == np.uint8:
        return video
    return np.round((np.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def side_by_side(*videos: np.ndarray, gap: int = 2) -> np.ndarray:
    """Concatenates equally sized videos [T, H, W, 3] left to right, with a black gap between."""
    shapes = {v.shape for v in videos}
    if len(shapes) != 1:
        raise ValueError(f"side_by_side needs videos of one shape; got {sorted(shapes)}")
    t, h, _, c = videos[0].shape
    spacer = np.zeros((t, h, gap, c), np.uint8)
    parts = [p for v in videos for p in (to_uint8(v), spacer)][:-1]
    return np.concatenate(parts, axis=2)


def frame_strip(rows: Sequence[np.ndarray], max_frames: int = 9, gap: int = 2) -> np.ndarray:
    """An image with one row per video [T, H, W, 3], showing up to max_frames evenly spaced frames.

    Used to put originals over their reconstructions: rows = [original, reconstruction, ...].
    """
    num_frames = {r.shape[0] for r in rows}
    if len(num_frames) != 1 or len({r.shape[1:] for r in rows}) != 1:
        raise ValueError(f"frame_strip rows must share a shape; got {[r.shape for r in rows]}")
    picks = np.unique(np.linspace(0, rows[0].shape[0] - 1, max_frames).round().astype(int))
    lines = []
    for row in rows:
        frames = to_uint8(row)[picks]                                  # [F, H, W, 3]
        frames = np.pad(frames, ((0, 0), (0, gap), (0, gap), (0, 0)))
        lines.append(np.concatenate(list(frames), axis=1))             # [H+gap, F*(W+gap), 3]
    return np.concatenate(lines, axis=0)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes a uint8 [H, W, 3] image as PNG, creating the parent folder."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path, format="PNG")

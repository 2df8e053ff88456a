"""Pixels to per-object tracks for the synthetic-world grader (see world_grader).

A clip is uint8 [T, H, W, 3]. Each frame's background is fitted as a colour that varies linearly
over the frame (solid and gradient backgrounds both are, also after panning, resizing and
cropping), robustly so that the objects on it are outliers. Every other pixel is explained as a
mix `background + alpha * (colour - background)` of one palette colour; the colour whose mix
leaves the smallest residual labels the pixel, and alpha is how much of it the pixel holds.
Mixing is linear in RGB (the renderer's anti-aliasing and bilinear resizing both blend RGB
values), so the fit is done in a linear opponent space that weighs hue above brightness: a
perceptual-ish distance that keeps blends exact. An object edge blended with the background is
thus its own colour at a low alpha, never a third palette colour (red over yellow blends to
orange, which is still read as red).

Objects of one colour are the connected components of pixels holding at least half of it
(blobs a few pixels apart joined); the largest one in each frame is followed as the object of
that colour. Pixels next to another colour's object are left out: where two objects meet their
blend can pass for a third colour. A palette colour too close to the local background is not
looked for there (the world never draws an object on a background of its own colour).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

# The world's object colours; mirrors data_pipelines.world_scene.COLORS (vidgen never imports
# data_pipelines; tests/evaluation/test_world_grader.py checks the two agree).
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 130, 20), "yellow": (250, 230, 50),
    "green": (30, 160, 60), "cyan": (40, 200, 220), "blue": (30, 70, 220),
    "purple": (140, 50, 190), "pink": (250, 120, 190),
}
# Opponent axes (red-green, yellow-blue, brightness at half weight), rows orthonormal before
# the weight: distances in this space are distances in RGB with brightness counted half.
OPPONENT = np.array([[1.0, -1.0, 0.0], [1.0, 1.0, -2.0], [0.5, 0.5, 0.5]]) / np.array(
    [[np.sqrt(2.0)], [np.sqrt(6.0)], [np.sqrt(3.0)]])
BACKGROUND_KEEP = 25.0  # a pixel this far (opponent units) from the plane fit is not background
LABEL_MIN = 10.0        # pixels closer than this to the background stay unlabelled
MIN_REACH = 40.0        # a colour this close to the local background is not looked for there
CORE_ALPHA = 0.5        # a pixel holding this much of a colour belongs to that colour's object
# Frames touch within one step in space, never across time.
PER_FRAME = np.zeros((3, 3, 3), bool)
PER_FRAME[1] = True


def fit_background(video: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Per-frame robust fit of a colour linear in (x, y): float32 [T, H, W, 3] from [T, H, W, 3].

    The first fit uses every pixel, the second the half nearest the first fit, later ones every
    pixel within BACKGROUND_KEEP of the previous fit (objects cover well under half a frame).
    """
    num_frames, height, width, _ = video.shape
    ys, xs = np.mgrid[:height, :width]
    design = np.stack([np.ones(height * width), xs.ravel() / width, ys.ravel() / height], 1)
    pixels = video.reshape(num_frames, -1, 3).astype(np.float64)                 # [T, N, 3]
    keep = np.ones(pixels.shape[:2])
    for step in range(iterations):
        weighted = np.swapaxes(keep[..., None] * design, 1, 2)                    # [T, 3, N]
        coef = np.linalg.solve(weighted @ design, weighted @ pixels)              # [T, 3, 3]
        error = np.linalg.norm((pixels - design @ coef) @ OPPONENT.T, axis=-1)   # [T, N]
        limit = np.median(error, axis=1, keepdims=True) if step == 0 else BACKGROUND_KEEP
        keep = (error <= limit).astype(np.float64)
    return (design @ coef).reshape(video.shape).astype(np.float32)


def unmix(video: np.ndarray, background: np.ndarray,
          colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels each pixel with the palette colour [K, 3] that best explains it over the background.

    Returns (label int [T, H, W], -1 for background; alpha float [T, H, W] in [0, 1], the share
    of that colour in the pixel).
    """
    project = OPPONENT.T.astype(np.float32)
    diff = (video.astype(np.float32) - background) @ project     # d: pixel - background [T,H,W,3]
    base = background @ project                                  # [T, H, W, 3]
    tint = colours.astype(np.float32) @ project                  # [K, 3]
    # e_k = tint_k - base: the way from the background to colour k. Dot products expanded so
    # that no [T, H, W, K, 3] array is formed.
    dot = diff @ tint.T - (diff * base).sum(-1, keepdims=True)   # d . e_k       [T, H, W, K]
    reach = (tint**2).sum(-1) - 2 * base @ tint.T + (base**2).sum(-1, keepdims=True)  # |e_k|^2
    alpha = np.clip(dot / np.maximum(reach, 1e-6), 0.0, 1.0)
    residual = (diff**2).sum(-1, keepdims=True) - 2 * alpha * dot + alpha**2 * reach
    # A colour too near the background here cannot be told from it (the world never draws one).
    residual = np.where(reach >= MIN_REACH**2, residual, np.inf)
    label = np.argmin(residual, axis=-1)
    visible = np.isfinite(residual.min(-1)) & (np.linalg.norm(diff, axis=-1) >= LABEL_MIN)
    label = np.where(visible, label, -1)
    share = np.take_along_axis(alpha, np.maximum(label, 0)[..., None], axis=-1)[..., 0]
    return label, np.where(label >= 0, share, 0.0)


@dataclasses.dataclass(frozen=True)
class Track:
    """One colour's object through a clip (per frame; NaN where absent).

    count: int [T] blobs of the colour with at least min_mass; mass: [T] alpha-weighted area of
    the largest, in pixels; center: [T, 2] its (x, y) centroid; border: bool [T] it touches the
    frame's edge; contact: bool [T] it touches another colour's object (so may be partly
    hidden); features: [T, 4] shape descriptors (see shape_features).
    """

    count: np.ndarray
    mass: np.ndarray
    center: np.ndarray
    border: np.ndarray
    contact: np.ndarray
    features: np.ndarray

    @property
    def present(self) -> np.ndarray:
        """bool [T]: frames in which the object is seen."""
        return ~np.isnan(self.mass)


def shape_features(weights: np.ndarray) -> np.ndarray:
    """Rotation- and scale-invariant descriptors of a soft mask [h, w]: float [4].

    [spread, 3-fold, 4-fold, 5-fold]: spread is (mu20 + mu02) / area**2 (a disc 1/(2 pi) = 0.16,
    a ring with a hole much more); the k-fold terms are |sum w z^k| / sum w |z|^k for pixel
    offsets z = x + iy from the centroid: near 0 for round shapes, large for a triangle (3),
    square (4) or five-pointed star (5).
    """
    rows, cols = np.flatnonzero(weights.any(1)), np.flatnonzero(weights.any(0))
    weights = weights[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    ys, xs = np.mgrid[:weights.shape[0], :weights.shape[1]] + 0.5
    area = weights.sum()
    z = (xs - (weights * xs).sum() / area) + 1j * (ys - (weights * ys).sum() / area)
    spread = (weights * np.abs(z) ** 2).sum() / area**2
    folds = [np.abs((weights * z**k).sum()) / max((weights * np.abs(z) ** k).sum(), 1e-9)
             for k in (3, 4, 5)]
    return np.array([spread, *folds])


def track_colour(label: np.ndarray, alpha: np.ndarray, k: int, min_mass: float,
                 bridge: int) -> Track:
    """The object of palette index k through the clip, from unmix's label and alpha.

    Pixels holding at least CORE_ALPHA of the colour form blobs; blobs less than `bridge` pixels
    apart are one (an object seen through a ring's hole, or cut by a thin object in front).
    Contact with another object is found within 2 pixels.
    """
    num_frames = label.shape[0]
    count, mass = np.zeros(num_frames, int), np.full(num_frames, np.nan)
    center, features = np.full((num_frames, 2), np.nan), np.full((num_frames, 4), np.nan)
    border, contact = np.zeros(num_frames, bool), np.zeros(num_frames, bool)
    if not ((label == k) & (alpha >= CORE_ALPHA)).any():
        return Track(count, mass, center, border, contact, features)
    others = (label >= 0) & (label != k) & (alpha >= CORE_ALPHA)
    # Left out next to another colour's object (purple beside cyan blends to blue).
    share = np.where((label == k) & ~ndimage.binary_dilation(others, PER_FRAME), alpha, 0.0)
    core = share >= CORE_ALPHA
    near = ndimage.binary_dilation(core, PER_FRAME, iterations=bridge)
    blobs, num_blobs = ndimage.label(near, structure=PER_FRAME)
    masses = np.asarray(ndimage.sum_labels(share, blobs, np.arange(1, num_blobs + 1)))
    frame_of = np.array([box[0].start for box in ndimage.find_objects(blobs)], int)
    count = np.bincount(frame_of[masses >= min_mass], minlength=num_frames)
    for t in np.flatnonzero(count):
        ids = np.flatnonzero(frame_of == t)
        blob = blobs[t] == ids[np.argmax(masses[ids])] + 1
        weights = np.where(blob, share[t], 0.0)
        mass[t] = weights.sum()
        ys, xs = np.mgrid[:blob.shape[0], :blob.shape[1]] + 0.5
        center[t] = (weights * xs).sum() / mass[t], (weights * ys).sum() / mass[t]
        own = core[t] & blob
        border[t] = own[[0, -1]].any() or own[:, [0, -1]].any()
        contact[t] = (ndimage.binary_dilation(own, iterations=2) & others[t]).any()
        features[t] = shape_features(weights)
    return Track(count, mass, center, border, contact, features)

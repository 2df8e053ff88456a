"""Renders synthetic-world scenes to frames, and recomputes per-frame object tracks for graders.

Shapes are signed distance functions; a pixel's coverage is `clip(0.5 - distance_px, 0, 1)`, an
analytic anti-aliased edge one pixel wide. Each object is evaluated only in a square patch around
it, for all frames at once (vectorised over time), then blended back to front into the frames.
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines.world_scene import (BOUND, POLYGONS, RING_INNER, Scene, camera_offset,
                                        frame_times, object_states)


def polygon_sdf(vertices: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance from points (u, v) to a simple polygon [K, 2]; negative inside."""
    dist2 = (u - vertices[0, 0]) ** 2 + (v - vertices[0, 1]) ** 2
    sign = np.ones_like(u)
    for i in range(len(vertices)):
        (ax, ay), (bx, by) = vertices[i], vertices[i - 1]
        ex, ey, wx, wy = bx - ax, by - ay, u - ax, v - ay
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        dist2 = np.minimum(dist2, (wx - ex * t) ** 2 + (wy - ey * t) ** 2)
        above, below, left = v >= ay, v < by, ex * wy > ey * wx
        crossing = (above & below & left) | (~above & ~below & ~left)
        sign = np.where(crossing, -sign, sign)
    return sign * np.sqrt(dist2)


def shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance to an upright shape of unit radius centred at the origin."""
    if shape == "ball":
        return np.sqrt(u * u + v * v) - 1.0
    if shape == "ring":
        half_width = (1.0 - RING_INNER) / 2
        return np.abs(np.sqrt(u * u + v * v) - (1.0 - half_width)) - half_width
    if shape in POLYGONS:
        return polygon_sdf(POLYGONS[shape].astype(u.dtype), u, v)
    raise ValueError(f"unknown shape {shape!r}")


def _patch_grid(center: np.ndarray, radius: np.ndarray, bound: float) -> tuple[np.ndarray, ...]:
    """Top-left pixel [T, 2] and pixel-centre coordinates gx [T, S], gy [T, S] of a patch."""
    size = int(math.ceil(2 * (bound * radius.max() + 1))) + 1
    corner = np.floor(center - size / 2).astype(np.int64)
    steps = np.arange(size) + 0.5
    return corner, corner[:, :1] + steps[None], corner[:, 1:] + steps[None]


def coverage(shape: str, center: np.ndarray, radius: np.ndarray, angle: np.ndarray,
             gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Fraction of each pixel [T, Sy, Sx] (centres gx [T, Sx], gy [T, Sy]) an object covers."""
    dx = (gx - center[:, :1]).astype(np.float32)[:, None, :]
    dy = (gy - center[:, 1:]).astype(np.float32)[:, :, None]
    cos = np.cos(angle).astype(np.float32)[:, None, None]
    sin = np.sin(angle).astype(np.float32)[:, None, None]
    scale = radius.astype(np.float32)[:, None, None]
    u = (cos * dx + sin * dy) / scale  # rotate the pixel into the object's upright frame
    v = (cos * dy - sin * dx) / scale
    return np.clip(0.5 - shape_sdf(shape, u, v) * scale, 0.0, 1.0)


def render_background(scene: Scene) -> np.ndarray:
    """Float32 RGB background [T, H, W, 3]; gradients live in the world, so they pan."""
    width, height, num_frames = scene["width"], scene["height"], scene["num_frames"]
    background = scene["background"]
    colors = np.array([c["rgb"] for c in background["colors"]], np.float32)
    low, delta = colors[0], colors[-1] - colors[0]  # a solid background has delta 0
    direction = {"horizontal": (1.0, 0.0), "vertical": (0.0, 1.0), None: (1.0, 0.0),
                 "diagonal": (math.sqrt(0.5), math.sqrt(0.5))}[background["direction"]]
    unit = min(width, height)
    along_t = camera_offset(scene) @ np.array(direction)  # [T]
    along_y = (np.arange(height) + 0.5) / unit * direction[1]
    along_x = (np.arange(width) + 0.5) / unit * direction[0]
    span = max(sum(float(np.ptp(a)) for a in (along_t, along_y, along_x)), 1e-6)
    ramp = ((along_y - along_y.min())[:, None] + (along_x - along_x.min())[None, :]) / span
    still = low + ramp[..., None].astype(np.float32) * delta  # [H, W, 3] at zero pan
    shift = ((along_t - along_t.min()) / span)[:, None].astype(np.float32) * delta  # [T, 3]
    # Add as [T, 1, W*3] + [1, H, W*3] rows so NumPy's inner loops run over whole rows.
    frames = np.tile(shift, (1, width))[:, None, :] + still.reshape(1, height, width * 3)
    return frames.reshape(num_frames, height, width, 3)


def _blend(frames: np.ndarray, corner: np.ndarray, alpha: np.ndarray, rgb: np.ndarray) -> None:
    """Paints a per-frame patch of coverage `alpha` [T, S, S] in colour `rgb` over `frames`."""
    height, width, size = frames.shape[1], frames.shape[2], alpha.shape[-1]
    for t, (x0, y0) in enumerate(corner):
        xa, xb, ya, yb = max(x0, 0), min(x0 + size, width), max(y0, 0), min(y0 + size, height)
        if xa >= xb or ya >= yb:
            continue
        region = frames[t, ya:yb, xa:xb]
        region += alpha[t, ya - y0:yb - y0, xa - x0:xb - x0, None] * (rgb - region)


def render_clip(scene: Scene) -> np.ndarray:
    """The clip a scene describes, as uint8 RGB frames [T, H, W, 3]."""
    frames = render_background(scene)
    states = object_states(scene)
    for i in sorted(range(len(scene["objects"])), key=lambda k: -scene["objects"][k]["depth"]):
        obj = scene["objects"][i]
        center, radius, angle = states["center"][i], states["radius"][i], states["angle"][i]
        corner, gx, gy = _patch_grid(center, radius, BOUND[obj["shape"]])
        alpha = coverage(obj["shape"], center, radius, angle, gx, gy)
        _blend(frames, corner, alpha, np.array(obj["rgb"], np.float32))
    return np.rint(frames).astype(np.uint8)


def object_tracks(scene: Scene) -> dict[str, np.ndarray]:
    """Per-frame tracks of every object, recomputed from the scene alone (for graders).

    Returns {"time": [T] s, "center": [N, T, 2] px (x, y), "radius": [N, T] px (the shape's
    size; its farthest point is world_scene.BOUND[shape] * radius away), "angle": [N, T] rad
    clockwise, "visibility": [N, T]}, in pixels of the scene's native size.
    Visibility is the fraction of the object's area that is inside the frame and not behind
    an object nearer the camera (0: hidden, 1: fully visible).
    """
    states = object_states(scene)
    objects = scene["objects"]
    visibility = np.zeros(states["radius"].shape)
    for i, obj in enumerate(objects):
        center, radius, angle = states["center"][i], states["radius"][i], states["angle"][i]
        _, gx, gy = _patch_grid(center, radius, BOUND[obj["shape"]])
        own = coverage(obj["shape"], center, radius, angle, gx, gy)
        inside = ((gy >= 0) & (gy < scene["height"]))[:, :, None] & \
            ((gx >= 0) & (gx < scene["width"]))[:, None, :]
        seen = own * inside
        for j, other in enumerate(objects):
            if other["depth"] < obj["depth"]:
                seen = seen * (1.0 - coverage(other["shape"], states["center"][j],
                                              states["radius"][j], states["angle"][j], gx, gy))
        visibility[i] = seen.sum(axis=(1, 2)) / np.maximum(own.sum(axis=(1, 2)), 1e-9)
    return {"time": frame_times(scene), "visibility": visibility, **states}

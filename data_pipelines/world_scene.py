"""The synthetic world's vocabulary, scene sampler and kinematics: a clip as plain JSON data.

A scene is a JSON-able dict, a pure function of (seed, index) through
`np.random.default_rng([seed, index])`. Lengths are in *units* of the frame's short side
(`min(width, height)` pixels), positions have their origin at the frame's top-left with y down,
angles are radians clockwise on screen, times are seconds. Object positions are given for the
camera at mid-clip (the camera offset is zero at `duration_s / 2`).

    {"seed", "index", "aspect", "width", "height", "fps", "num_frames", "duration_s",
     "background": {"kind": "solid"|"gradient", "colors": [{"name", "rgb"}, ...], "direction"},
     "camera": {"pan": "none"|"left"|"right"|"up"|"down", "speed"},
     "objects": [{"shape", "color", "rgb", "size", "radius", "depth", "position": [x, y],
                  "motion": {"kind", ...parameters}}, ...],    # depth 0 is in front
     "occlusion": {"occluded": i, "occluder": j} | None}

Motions: still {}, move {direction, speed}, fall {gravity, restitution, floor_y} (starts at
rest, bounces inelastically), grow/shrink {factor: exponential, radius ratio after duration_s},
rotate {direction, angular_speed}. A camera pan "right" moves the camera right at `speed`, so the
whole scene slides left. objects[0] is the clip's subject (the short caption names it).
`object_states(scene)` gives every object's per-frame centre, radius and angle in pixels.

Held-out combinations: HELDOUT_PAIRS lists (colour, shape) pairs that `combos="train"` scenes
never show on any object, while every `combos="heldout"` scene's subject shows one (its other
objects are unconstrained). Each shape is in one pair and each colour in at most one, so every
colour and every shape alone is still seen in training: only the pairing is new.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Scene = dict[str, Any]


def _star(points: int = 5, outer: float = 1.2, inner: float = 0.5) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _triangle(circumradius: float = 1.15) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
    return circumradius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


# Polygon outlines (unit radius, upright, y down); "ball" and "ring" are analytic circles.
POLYGONS: dict[str, np.ndarray] = {
    "square": 0.85 * np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]),
    "triangle": _triangle(),
    "star": _star(),
}
SHAPES = ("ball", "square", "triangle", "star", "ring")
RING_INNER = 0.55  # inner radius of a ring, as a fraction of its outer radius 1
# Distance from the centre to the farthest point, and to the lowest point when upright.
BOUND = {"ball": 1.0, "ring": 1.0, **{k: float(np.hypot(*v.T).max()) for k, v in POLYGONS.items()}}
BOTTOM = {"ball": 1.0, "ring": 1.0, **{k: float(v[:, 1].max()) for k, v in POLYGONS.items()}}
ROTATION_SYMMETRIC = ("ball", "ring")

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "orange": (245, 130, 20), "yellow": (250, 230, 50),
    "green": (30, 160, 60), "cyan": (40, 200, 220), "blue": (30, 70, 220),
    "purple": (140, 50, 190), "pink": (250, 120, 190),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128), **COLORS}
MIN_CONTRAST = 100.0  # RGB distance between an object and every background colour it sits on

SIZES = {"small": (0.06, 0.09), "large": (0.15, 0.19)}  # radius range, short-side units
ASPECTS = {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0, "4:3": 4 / 3, "3:4": 3 / 4, "21:9": 21 / 9}
FRAME_RATES = (8, 12, 16, 24)
DURATION_S = (1.0, 8.0)
MOTIONS = {"still": 0.15, "move": 0.3, "fall": 0.15, "grow": 0.12, "shrink": 0.12,
           "rotate": 0.16}  # sampling weights
DIRECTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
GRADIENT_DIRECTIONS = ("horizontal", "vertical", "diagonal")
OCCLUSION_PROB, PAN_PROB, GRADIENT_PROB = 0.3, 0.25, 0.6
HELDOUT_PAIRS = (("red", "square"), ("yellow", "ring"), ("green", "triangle"),
                 ("blue", "star"), ("pink", "ball"))
COMBOS = ("all", "train", "heldout")


def frame_size(aspect: str, base_size: int) -> tuple[int, int]:
    """(width, height), multiples of 16, with the aspect ratio and about base_size**2 pixels."""
    if aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}; expected one of {sorted(ASPECTS)}")
    ratio = ASPECTS[aspect]
    width, height = base_size * math.sqrt(ratio), base_size / math.sqrt(ratio)
    return max(16, 16 * round(width / 16)), max(16, 16 * round(height / 16))


def _contrast_ok(rgb: tuple[int, ...], background: dict) -> bool:
    ends = [np.array(c["rgb"], float) for c in background["colors"]]
    shades = ends + [np.mean(ends, axis=0)]
    return all(np.linalg.norm(np.array(rgb, float) - s) >= MIN_CONTRAST for s in shades)


def _sample_background(rng: np.random.Generator) -> dict:
    names = list(BACKGROUND_COLORS)
    count = 2 if rng.random() < GRADIENT_PROB else 1
    picked = [names[k] for k in rng.choice(len(names), size=count, replace=False)]
    return {"kind": "gradient" if count == 2 else "solid",
            "colors": [{"name": n, "rgb": list(BACKGROUND_COLORS[n])} for n in picked],
            "direction": str(rng.choice(GRADIENT_DIRECTIONS)) if count == 2 else None}


def _sample_colors(rng: np.random.Generator, count: int,
                   first: str | None = None) -> tuple[dict, list[str]]:
    """A background and `count` distinct object colours that all stand out against it; the
    first colour is `first` when given."""
    while True:
        background = _sample_background(rng)
        usable = [n for n, rgb in COLORS.items() if _contrast_ok(rgb, background)]
        pool, need = [n for n in usable if n != first], count - (first is not None)
        if (first is None or first in usable) and len(pool) >= need:
            picked = [pool[k] for k in rng.choice(len(pool), need, replace=False)]
            return background, [first] * (first is not None) + picked


def _sample_motion(rng: np.random.Generator, shape: str, scene: Scene, radius: float,
                   extent: tuple[float, float]) -> tuple[dict, list[float]]:
    """A motion for one object and its start position, keeping it inside the frame."""
    kinds = [m for m in MOTIONS if not (m == "rotate" and shape in ROTATION_SYMMETRIC)]
    weights = np.array([MOTIONS[m] for m in kinds])
    kind = str(rng.choice(kinds, p=weights / weights.sum()))
    motion: dict[str, Any] = {"kind": kind}
    if kind == "grow":
        motion["factor"] = float(rng.uniform(1.5, 2.0))
    elif kind == "shrink":
        motion["factor"] = float(rng.uniform(0.4, 0.6))
    margin = BOUND[shape] * radius * max(1.0, motion.get("factor", 1.0))
    lo, hi = np.full(2, margin), np.array(extent) - margin
    position = rng.uniform(lo, hi)
    if kind == "move":
        motion["direction"] = str(rng.choice(list(DIRECTIONS)))
        axis_sign = np.array(DIRECTIONS[motion["direction"]])
        axis = int(np.argmax(np.abs(axis_sign)))
        travel = rng.uniform(0.4, 0.9) * (hi[axis] - lo[axis])
        position[axis] = rng.uniform(lo[axis], hi[axis] - travel) + travel * (axis_sign[axis] < 0)
        motion["speed"] = float(travel / scene["duration_s"])
    elif kind == "fall":
        position[1] = rng.uniform(lo[1], lo[1] + 0.35 * (hi[1] - lo[1]))
        motion.update(gravity=float(rng.uniform(2.5, 5.0)),
                      restitution=float(rng.uniform(0.55, 0.8)),
                      floor_y=float(extent[1] - BOTTOM[shape] * radius))
    elif kind == "rotate":
        motion.update(direction=str(rng.choice(["clockwise", "counterclockwise"])),
                      angular_speed=float(rng.uniform(1.0, 3.0)))
    return motion, [float(p) for p in position]


def _object(shape: str, color: str, size: str, radius: float, motion: dict,
            position: list[float]) -> dict:
    return {"shape": shape, "color": color, "rgb": list(COLORS[color]), "size": size,
            "radius": float(radius), "motion": motion, "position": position}


def _sample_object(rng: np.random.Generator, scene: Scene, color: str, placed: list[dict],
                   extent: tuple[float, float], shape: str | None = None) -> dict:
    """One object (of `shape` if given), started clear of those already placed (a few tries)
    so none starts hidden."""
    drawn, size = str(rng.choice(SHAPES)), str(rng.choice(list(SIZES)))
    shape = shape or drawn
    radius = float(rng.uniform(*SIZES[size]))
    for _ in range(10):
        motion, position = _sample_motion(rng, shape, scene, radius, extent)
        if all(math.dist(position, other["position"]) >
               0.8 * (BOUND[shape] * radius + BOUND[other["shape"]] * other["radius"])
               for other in placed):
            break
    return _object(shape, color, size, radius, motion, position)


def _sample_occlusion_pair(rng: np.random.Generator, scene: Scene, colors: list[str],
                           extent: tuple[float, float], shape: str | None = None) -> list[dict]:
    """A small object (of `shape` if given) that moves along the frame's long axis behind a
    large still one."""
    axis = 0 if extent[0] >= extent[1] else 1
    big = float(rng.uniform(0.16, 0.19))
    small = float(rng.uniform(0.06, 0.08))
    front_shape = str(rng.choice(["ball", "square"]))
    back_shape = shape or str(rng.choice(SHAPES))
    reach = BOUND[front_shape] * big + BOUND[back_shape] * small
    half_travel = reach + rng.uniform(0.02, 0.06)
    centre = rng.uniform(np.full(2, BOUND[front_shape] * big),
                         np.array(extent) - BOUND[front_shape] * big)
    room = BOUND[back_shape] * small + half_travel
    centre[axis] = rng.uniform(room, extent[axis] - room)
    forward = bool(rng.random() < 0.5)
    direction = ("right" if forward else "left") if axis == 0 else ("down" if forward else "up")
    start = centre.copy()
    start[axis] -= half_travel if forward else -half_travel
    mover = _object(back_shape, colors[0], "small", small,
                    {"kind": "move", "direction": direction,
                     "speed": float(2 * half_travel * scene["fps"] / (scene["num_frames"] - 1))},
                    [float(p) for p in start])
    blocker = _object(front_shape, colors[1], "large", big, {"kind": "still"},
                      [float(p) for p in centre])
    return [mover, blocker]


def uses_heldout_pair(scene: Scene) -> bool:
    """Whether any object of the scene shows a held-out (colour, shape) pair."""
    return any((obj["color"], obj["shape"]) in HELDOUT_PAIRS for obj in scene["objects"])


def sample_scene(seed: int, index: int, base_size: int = 128, *, combos: str = "all",
                 aspect: str | None = None) -> Scene:
    """The scene of clip `index` of `seed`: a pure function of the arguments.

    combos: "all" draws from the whole vocabulary; "train" redraws (from [seed, index, attempt])
    any scene showing a HELDOUT_PAIRS pair, so scenes without one are those of "all"; "heldout"
    gives the subject the pair HELDOUT_PAIRS[index % len(HELDOUT_PAIRS)]. `aspect` fixes the
    frame's aspect ratio (a key of ASPECTS) instead of drawing it.
    """
    if combos not in COMBOS:
        raise ValueError(f"unknown combos {combos!r}; expected one of {COMBOS}")
    if aspect is not None and aspect not in ASPECTS:
        raise ValueError(f"unknown aspect {aspect!r}; expected one of {sorted(ASPECTS)}")
    subject = HELDOUT_PAIRS[index % len(HELDOUT_PAIRS)] if combos == "heldout" else None
    attempt = 0
    while True:
        key = [seed, index] if attempt == 0 else [seed, index, attempt]
        scene = _draw_scene(np.random.default_rng(key), seed, index, base_size, aspect, subject)
        if combos != "train" or not uses_heldout_pair(scene):
            return scene
        attempt += 1


def _draw_scene(rng: np.random.Generator, seed: int, index: int, base_size: int,
                aspect: str | None, subject: tuple[str, str] | None) -> Scene:
    """One scene from `rng`; `subject` forces objects[0]'s (colour, shape)."""
    drawn = str(rng.choice(list(ASPECTS)))
    aspect = aspect or drawn
    width, height = frame_size(aspect, base_size)
    fps = int(rng.choice(FRAME_RATES))
    num_objects = int(rng.integers(1, 4))
    occlusion = num_objects >= 2 and rng.random() < OCCLUSION_PROB
    duration = rng.uniform(3.0 if occlusion else DURATION_S[0], DURATION_S[1])
    num_frames = max(1, int(round(duration * fps)))
    scene: Scene = {"seed": int(seed), "index": int(index), "aspect": aspect, "width": width,
                    "height": height, "fps": fps, "num_frames": num_frames,
                    "duration_s": num_frames / fps}
    extent = (width / min(width, height), height / min(width, height))
    subject_color, subject_shape = subject or (None, None)
    scene["background"], colors = _sample_colors(rng, num_objects, subject_color)
    objects = (_sample_occlusion_pair(rng, scene, colors, extent, subject_shape)
               if occlusion else [])
    for color in colors[len(objects):]:
        objects.append(_sample_object(rng, scene, color, objects, extent,
                                      None if objects else subject_shape))
    # Occlusion: the still blocker in front, the mover just behind it, any other at the back.
    depths = [1, 0, 2][:num_objects] if occlusion else rng.permutation(num_objects).tolist()
    for obj, depth in zip(objects, depths):
        obj["depth"] = int(depth)
    scene["objects"] = objects
    scene["occlusion"] = {"occluded": 0, "occluder": 1} if occlusion else None
    pan = str(rng.choice(list(DIRECTIONS))) if not occlusion and rng.random() < PAN_PROB else "none"
    span = extent[0] if pan in ("left", "right") else extent[1]
    scene["camera"] = {"pan": pan, "speed": float(rng.uniform(0.15, 0.35) * span /
                                                   scene["duration_s"]) if pan != "none" else 0.0}
    return scene


# Kinematics: closed-form functions of the scene, shared by the renderer and graders.

def frame_times(scene: Scene) -> np.ndarray:
    """Seconds at which each frame is shown: [T]."""
    return np.arange(scene["num_frames"]) / scene["fps"]


def camera_offset(scene: Scene) -> np.ndarray:
    """The camera's displacement from its mid-clip position, in short-side units: [T, 2]."""
    times = frame_times(scene)
    camera = scene["camera"]
    if camera["pan"] == "none":
        return np.zeros((len(times), 2))
    direction = np.array(DIRECTIONS[camera["pan"]])
    return direction[None] * camera["speed"] * (times - scene["duration_s"] / 2)[:, None]


def bounce_height(times: np.ndarray, drop: float, gravity: float,
                  restitution: float) -> np.ndarray:
    """Height above the floor of a body dropped from rest at `drop`, bouncing inelastically."""
    first = np.sqrt(2 * max(drop, 0.0) / gravity)
    height = np.where(times < first, drop - 0.5 * gravity * times**2, 0.0)
    start, speed = first, gravity * first * restitution
    while speed > 1e-3 and start < times.max():
        flight = 2 * speed / gravity
        tau = times - start
        in_flight = (tau >= 0) & (tau < flight)
        height = np.where(in_flight, speed * tau - 0.5 * gravity * tau**2, height)
        start, speed = start + flight, speed * restitution
    return np.maximum(height, 0.0)


def _object_motion(obj: dict, times: np.ndarray, duration: float) -> tuple[np.ndarray, ...]:
    """World-space centre [T, 2], radius [T] and angle [T] of one object."""
    motion = obj["motion"]
    kind = motion["kind"]
    centre = np.tile(np.array(obj["position"], float), (len(times), 1))
    radius = np.full(len(times), float(obj["radius"]))
    angle = np.zeros(len(times))
    if kind == "move":
        centre += np.array(DIRECTIONS[motion["direction"]])[None] * motion["speed"] * times[:, None]
    elif kind == "fall":
        drop = motion["floor_y"] - obj["position"][1]
        centre[:, 1] = motion["floor_y"] - bounce_height(
            times, drop, motion["gravity"], motion["restitution"])
    elif kind in ("grow", "shrink"):
        radius = radius * motion["factor"] ** (times / duration)
    elif kind == "rotate":
        sign = 1.0 if motion["direction"] == "clockwise" else -1.0
        angle = sign * motion["angular_speed"] * times
    elif kind != "still":
        raise ValueError(f"unknown motion kind {kind!r} in object {obj}")
    return centre, radius, angle


def object_states(scene: Scene) -> dict[str, np.ndarray]:
    """Per-frame geometry of every object on screen, in pixels of the scene's native size.

    Returns {"center": [N, T, 2] (x, y), "radius": [N, T], "angle": [N, T] (radians,
    clockwise)}, objects in scene order.
    """
    times = frame_times(scene)
    unit = min(scene["width"], scene["height"])
    offset = camera_offset(scene)
    centres, radii, angles = [], [], []
    for obj in scene["objects"]:
        centre, radius, angle = _object_motion(obj, times, scene["duration_s"])
        centres.append((centre - offset) * unit)
        radii.append(radius * unit)
        angles.append(angle)
    count = len(scene["objects"])
    return {"center": np.array(centres).reshape(count, len(times), 2),
            "radius": np.array(radii).reshape(count, len(times)),
            "angle": np.array(angles).reshape(count, len(times))}

"""Grades a clip against the synthetic-world scene its prompt was made from: prompt adherence.

`grade_clip(video, scene)` reads a uint8 clip [T, H, W, 3] (generated, or a real clip resized
and cropped like the training data: cover-resize then crop, data_pipelines/decode.py) and checks
what the scene's dense caption states, one boolean per check (None: not applicable, or not
visible: motion and size change are judged only from frames showing the object whole, touching
no other object, and are None when those span less than a third of the clip):

  count             how many objects there are (distinct palette colours, connected blobs)
  background        the background's named colour(s): solid, or both ends of a gradient
  color/i           object i's colour is on screen (the scene's objects have distinct colours)
  shape/i           ball, square, triangle, star or ring, from rotation-invariant moments
  size/i            small or large when the clip starts
  motion/i          the centroid's net travel on each axis: the direction the caption names,
                    plus the opposite of any camera pan (an axis where the two disagree is
                    free, as is a falling object's height)
  size_change/i     grows, shrinks or neither (area at the end against the start)
  gravity/i         falls and bounces: the height track fits a drop from rest with inelastic
                    bounces (sparse frames may sample them anywhere) landing inside the clip,
                    clearly better than a straight line, and peaks early (so not played back)

Only what the caption says is checked: positions, speeds and timing are free, and the frames
are taken to span the whole clip (as the demo's training windows do, frame_stride=0). Object i
is followed by its colour; if that colour is missing, by a leftover colour nobody asked for, so
a wrong colour does not also fail the object's shape and motion. Rotation is not checked: nine
frames over seconds alias any spin. Deterministic: no randomness anywhere.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from vidgen.evaluation.world_segment import (OPPONENT, PALETTE, Track, fit_background,
                                             track_colour, unmix)
from vidgen.io.video import check_frames

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MIN_MASS = 0.0015       # smallest blob counted, as a fraction of a scene unit squared
BRIDGE = 0.05           # blobs of one colour closer than this (scene units) are one object
MOVE = 0.05             # net travel (scene units) above which an axis counts as moving
SIZE_CHANGE = np.log(1.25)  # |log area ratio| above which an object grows or shrinks
LARGE = 0.08            # rms radius (scene units) above which an object is large
FOLDS = {"triangle": 0.6, "square": 0.4, "star": 0.75}  # clean 3-, 4-, 5-fold moments
FOLD = 0.4              # share of its clean k-fold moment from which a blob has that shape
RING_SPREAD = 0.24      # spread above which a round blob is a ring (disc 0.16, ring 0.30)
LINE_WORSE = 1.4        # a fall's line fit leaves at least this times the bounce fit's error
BACKGROUND_TOLERANCE = 45.0  # opponent distance from the named background colour(s)


def video_unit(video: np.ndarray, scene: dict) -> float:
    """Pixels per scene unit (the native frame's short side) after the cover-resize to video."""
    height, width = video.shape[1:3]
    scale = max(height / scene["height"], width / scene["width"])
    return scale * min(scene["height"], scene["width"])


def expected_axes(obj: dict, camera: dict) -> list[int | None]:
    """Expected sign of the centroid's travel in x and y on screen; None where undetermined:
    a fall's height (gravity_ok judges it), or an axis where the object moves one way and the
    camera pan carries it the other (either can be faster)."""
    motion = obj["motion"]
    own = {"move": DIRECTIONS.get(motion.get("direction"), (0, 0)), "fall": (0, None)}.get(
        motion["kind"], (0, 0))
    pan = DIRECTIONS.get(camera["pan"], (0, 0))
    return [None if o is None or (o and p and o != p) else o or p
            for o, p in zip(own, (-pan[0], -pan[1]))]


def _fit_line(times: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(slope, rms residual) of a least-squares line through the points."""
    coef = np.polyfit(times, values, 1)
    return float(coef[0]), float(np.sqrt(np.mean((np.polyval(coef, times) - values) ** 2)))


def judged_frames(track: Track, edges: bool) -> np.ndarray | None:
    """Frames showing the object whole (touching no other object and, if `edges`, not the
    frame's edge), or None when they span less than a third of the clip: an object that is
    never seen whole for long has no judgeable travel or growth."""
    whole = track.present & ~track.contact & (~track.border if edges else True)
    times = np.flatnonzero(whole)
    if len(times) < 2 or times[-1] - times[0] < (len(whole) - 1) / 3:
        return None
    return times


def motion_ok(track: Track, axes: list[int | None], unit: float) -> bool | None:
    """Whether the centroid's net travel over the clip (a line fit through the judged frames)
    has the expected sign on each axis: at least MOVE along it, or less than MOVE for 0."""
    times = judged_frames(track, edges=False)
    if times is None:
        return None
    span = len(track.mass) - 1
    for axis, sign in enumerate(axes):
        travel = _fit_line(times, track.center[times, axis])[0] * span / unit
        if sign is not None and (travel * sign < MOVE if sign else abs(travel) >= MOVE):
            return False
    return True


def bounce_heights(times: np.ndarray, land: np.ndarray, fall: np.ndarray,
                   restitution: np.ndarray) -> np.ndarray:
    """Height [M, T] over the floor of a body dropped from rest at height 1, landing at `land`
    after falling for `fall` (both [M], frames), bouncing with `restitution` [M]."""
    tau = times[None] - land[:, None]                      # time since the first landing
    height = np.where(tau < 0, 1 - (np.maximum(tau + fall[:, None], 0) / fall[:, None]) ** 2, 0.0)
    start = np.zeros_like(land)
    for bounce in range(1, 12):
        flight = 2 * restitution**bounce * fall            # airtime of this bounce
        u = (tau - start[:, None]) / (flight[:, None] / 2)  # 0 .. 2 across the bounce
        arc = restitution[:, None] ** (2 * bounce) * (1 - (u - 1) ** 2)
        height = np.where((u >= 0) & (u < 2), arc, height)
        start = start + flight
    return height


def _fit_drops(times: np.ndarray, y: np.ndarray, profile: np.ndarray,
               drift: bool) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares y = floor + h * profile (+ a drift linear in time) for each profile
    [M, T]: returns (h [M], rms residual [M]); rms is inf where h <= 0 (not a drop)."""
    basis = np.linalg.qr(np.stack([np.ones_like(times), times][:1 + drift], 1))[0]
    y_rest = y - basis @ (basis.T @ y)                    # y with floor (and drift) removed
    p_rest = profile - (profile @ basis) @ basis.T
    h = (p_rest @ y_rest) / np.maximum((p_rest**2).sum(1), 1e-12)
    rms = np.sqrt(np.mean((y_rest[None] - h[:, None] * p_rest) ** 2, axis=1))
    return h, np.where(h > 0, rms, np.inf)


def gravity_ok(track: Track, unit: float, pan: int) -> bool:
    """Whether the height track is a drop with bounces: y = floor - h * bounce_heights for a
    landing before the last frame seen (plus a drift the way a vertical camera pan carries the
    scene: pan = +1 down the screen, -1 up), fitting clearly better than a constant-velocity
    line, with a drop of at least MOVE on screen and its highest point in the first half."""
    times = np.flatnonzero(track.present).astype(float)
    if len(times) < 4:
        return False
    y = track.center[times.astype(int), 1] / unit
    span = len(track.mass) - 1
    land, fall, restitution = (g.ravel() for g in np.meshgrid(
        np.arange(-span / 2, span - 0.9, 0.25), np.geomspace(0.5, 2 * span, 16),
        np.array([0.5, 0.6, 0.7, 0.8]), indexing="ij"))
    profile = -bounce_heights(times, land, fall, restitution)      # [M, T]: y = floor + h * it
    h, rms = _fit_drops(times, y, profile, drift=False)
    if pan:
        h_pan, rms_pan = _fit_drops(times, y, profile, drift=True)
        centred = times - times.mean()
        drift = ((y[None] - h_pan[:, None] * profile) @ centred) / (centred @ centred)
        use = (drift * pan >= 0) & (rms_pan < rms)
        h, rms = np.where(use, h_pan, h), np.where(use, rms_pan, rms)
    best = int(np.argmin(rms))
    line_rms = _fit_line(times, y)[1]
    drop = h[best] * np.ptp(profile[best])
    # Bounces only lose height: the highest point comes in the first half (a clip played
    # backwards, whose aliased bounces can fit too, peaks at its end).
    peaks_early = np.argmin(y) < len(y) / 2
    return bool(drop >= MOVE and rms[best] <= 0.1 * drop and line_rms >= LINE_WORSE * rms[best]
                and times.max() > land[best] and peaks_early)


def size_change_ok(track: Track, kind: str) -> bool | None:
    """Whether the area grows, shrinks or holds: the log ratio of the largest mass among the
    last and the first quarter of the judged frames, scaled to the whole clip's duration."""
    times = judged_frames(track, edges=True)
    if times is None:
        return None
    k = max(1, len(times) // 4)
    first, last = times[:k], times[-k:]
    change = np.log(track.mass[last].max() / track.mass[first].max()) * (
        (len(track.mass) - 1) / (last.mean() - first.mean()))
    if kind in ("grow", "shrink"):
        return bool(change * (1 if kind == "grow" else -1) >= SIZE_CHANGE)
    return bool(abs(change) < SIZE_CHANGE)


def whole_views(track: Track) -> np.ndarray:
    """Frames likeliest to show the object whole: off the frame's edge and touching no other
    object; a condition no frame meets is dropped (touching first), so some frame is left."""
    usable = track.present
    for condition in (~track.border, ~track.contact):
        usable = usable & condition if (usable & condition).any() else usable
    return usable


def clear_views(track: Track) -> np.ndarray:
    """The whole views with at least 90% of the largest mass among them (for shape)."""
    usable = whole_views(track)
    return usable & (track.mass >= 0.9 * np.nanmax(np.where(usable, track.mass, np.nan)))


def classify_shape(features: np.ndarray) -> str:
    """ball, square, triangle, star or ring from shape_features [spread, 3-, 4-, 5-fold]:
    the k-fold term that is largest against its value for a clean shape, if at least FOLD of
    it; else ring or ball by spread."""
    spread, *folds = features
    strength = np.array(folds) / np.array(list(FOLDS.values()))
    if strength.max() >= FOLD:
        return list(FOLDS)[int(np.argmax(strength))]
    return "ring" if spread >= RING_SPREAD else "ball"


def size_ok(track: Track, size: str, unit: float) -> bool:
    """Whether the object's rms radius in its first clear views says small or large."""
    usable = np.flatnonzero(whole_views(track))
    if not len(usable):
        return False
    first = usable[:max(1, len(usable) // 4)]
    radius = np.sqrt(track.features[first, 0] * track.mass[first]).max() / unit
    return bool((radius >= LARGE) == (size == "large"))


def background_ok(background: np.ndarray, scene: dict) -> bool:
    """Whether the fitted background [T, H, W, 3] shows the named colour, or both gradient ends."""
    corners = background[:, [0, 0, -1, -1], [0, -1, 0, -1]] @ OPPONENT.T     # [T, 4, 3]
    named = np.array([c["rgb"] for c in scene["background"]["colors"]], float) @ OPPONENT.T
    if len(named) == 1:
        return bool(np.linalg.norm(corners - named[0], axis=-1).max() <= BACKGROUND_TOLERANCE)
    axis = named[1] - named[0]
    s = (corners - named[0]) @ axis / (axis @ axis)                          # [T, 4]
    off = np.linalg.norm(corners - named[0] - s[..., None] * axis, axis=-1)
    reach = BACKGROUND_TOLERANCE / np.linalg.norm(axis)
    return bool(off.max() <= BACKGROUND_TOLERANCE and np.median(np.ptp(s, axis=1)) >= 0.3
                and s.min() >= -reach and s.max() <= 1 + reach)


def _palette(scene: dict) -> np.ndarray:
    """The world's colours plus any scene colour outside them: [K, 3]."""
    colours = [tuple(rgb) for rgb in PALETTE.values()]
    colours += [tuple(o["rgb"]) for o in scene["objects"] if tuple(o["rgb"]) not in colours]
    return np.array(colours, float)


def _counted(track: Track) -> int:
    """Blobs of one colour seen in at least max(2, T / 8) frames (an object passing behind
    another can be hidden for most of a clip, flicker is rarely seen twice)."""
    ranked = np.sort(track.count)[::-1]
    return int(ranked[min(max(2, -(-len(ranked) // 8)), len(ranked)) - 1])


def grade_clip(video: np.ndarray, scene: dict) -> dict[str, bool | None]:
    """Checks a uint8 clip [T, H, W, 3] against the scene its prompt describes (module doc)."""
    video = check_frames(video, "video")
    unit = video_unit(video, scene)
    background = fit_background(video)
    palette = _palette(scene)
    label, alpha = unmix(video, background, palette)
    bridge = max(1, round(BRIDGE * unit))
    tracks = [track_colour(label, alpha, k, MIN_MASS * unit**2, bridge)
              for k in range(len(palette))]
    seen = [k for k, track in enumerate(tracks) if _counted(track) > 0]
    grades: dict[str, bool | None] = {
        "count": sum(_counted(t) for t in tracks) == len(scene["objects"]),
        "background": background_ok(background, scene)}
    wanted = [int(np.flatnonzero((palette == o["rgb"]).all(1))[0]) for o in scene["objects"]]
    spare = sorted((k for k in seen if k not in wanted), key=lambda k: -np.nansum(tracks[k].mass))
    for i, obj in enumerate(scene["objects"]):
        k = wanted[i] if wanted[i] in seen else (spare.pop(0) if spare else None)
        grades[f"color/{i}"] = k == wanted[i]
        kind = obj["motion"]["kind"]
        pan = -DIRECTIONS.get(scene["camera"]["pan"], (0, 0))[1]  # the scene's vertical slide
        grades[f"gravity/{i}"] = None if kind != "fall" else (
            k is not None and gravity_ok(tracks[k], unit, pan))
        if k is None:
            grades.update({f"{a}/{i}": False for a in ("shape", "size", "motion", "size_change")})
            continue
        track = tracks[k]
        features = np.median(track.features[clear_views(track)], axis=0)
        grades[f"shape/{i}"] = classify_shape(features) == obj["shape"]
        grades[f"size/{i}"] = size_ok(track, obj["size"], unit)
        grades[f"motion/{i}"] = motion_ok(track, expected_axes(obj, scene["camera"]), unit)
        grades[f"size_change/{i}"] = size_change_ok(track, kind)
    return grades


def summarize(grades: list[dict[str, bool | None]]) -> dict:
    """Accuracy per attribute (objects pooled: "shape/0" and "shape/1" count as "shape"), over
    all checks ("overall"), and the share of clips whose every check passed ("all_correct").

    Returns {"accuracy": {attribute: float}, "checks": {attribute: int}, "overall": float,
    "all_correct": float, "clips": int}; checks that were None are left out.
    """
    passed, total = defaultdict(int), defaultdict(int)
    for clip in grades:
        for key, value in clip.items():
            if value is not None:
                attribute = key.split("/")[0]
                passed[attribute] += bool(value)
                total[attribute] += 1
    checks = sum(total.values())
    return {"accuracy": {a: passed[a] / total[a] for a in sorted(total)},
            "checks": dict(sorted(total.items())),
            "overall": sum(passed.values()) / checks if checks else float("nan"),
            "all_correct": float(np.mean([all(v for v in clip.values() if v is not None)
                                          for clip in grades])) if grades else float("nan"),
            "clips": len(grades)}

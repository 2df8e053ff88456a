"""vidgen.evaluation.world_grader: it passes real synthetic-world clips seen the way the demo sees
them (frames spread over the whole clip, cover-resize and centre crop to the training size) and
fails clips that contradict their scene. Also the world's held-out (colour, shape) split that the
grader is applied to."""

import copy
import functools
import json

import numpy as np
import pytest

from data_pipelines import decode, shards, synthetic_world
from data_pipelines.world_render import render_clip
from data_pipelines.world_scene import (COLORS, DIRECTIONS, HELDOUT_PAIRS, SHAPES, sample_scene,
                                        uses_heldout_pair)
from vidgen.evaluation import world_grader
from vidgen.evaluation.world_grader import grade_clip, summarize
from vidgen.evaluation.world_segment import PALETTE

# (height, width, frames, aspect, combos, clips): the demo's 64x64 and a 16:9 size, 9 and 17
# frames, scenes from the train and the held-out vocabulary.
SETS = [(64, 64, 9, "1:1", "train", 60), (64, 64, 17, "1:1", "heldout", 60),
        (64, 112, 9, "16:9", "train", 30), (64, 112, 17, "16:9", "heldout", 30)]


def demo_view(frames: np.ndarray, num_frames: int, height: int, width: int) -> np.ndarray:
    """decode.decode_clip's eval path (centre window with frame_stride=0, cover-resize, centre
    crop) on rendered frames, without the mp4 round trip."""
    stride = decode.stride_for(len(frames), num_frames, 0)
    start = decode.choose_window(len(frames), (num_frames - 1) * stride + 1)
    clip, _ = decode.pad_to_length(frames[start::stride][:num_frames], num_frames)
    scaled = decode.cover_size(clip.shape[1:3], (height, width))
    return decode.resize_crop(clip, scaled, (height, width),
                              decode.choose_crop(scaled, (height, width)))


@functools.cache
def real_set(index: int) -> tuple[list[dict], list[np.ndarray], list[dict]]:
    """Scenes, demo-view clips and their grades of SETS[index]."""
    height, width, num_frames, aspect, combos, count = SETS[index]
    scenes = [sample_scene(7, i, 128, combos=combos, aspect=aspect) for i in range(count)]
    videos = [demo_view(render_clip(s), num_frames, height, width) for s in scenes]
    return scenes, videos, [grade_clip(v, s) for s, v in zip(scenes, videos)]


def test_grader_vocabulary_mirrors_the_world():
    assert PALETTE == COLORS
    assert {k: tuple(map(float, v)) for k, v in world_grader.DIRECTIONS.items()} == DIRECTIONS


@pytest.mark.parametrize("index", range(len(SETS)))
def test_real_clips_pass(index):
    scenes, videos, grades = real_set(index)
    summary = summarize(grades)
    print(SETS[index][:3], json.dumps(summary))
    assert summary["overall"] >= 0.98, summary
    assert set(summary["accuracy"]) == {"count", "background", "color", "shape", "size",
                                        "motion", "size_change", "gravity"}
    assert min(summary["accuracy"].values()) >= 0.9, summary
    assert all(isinstance(v, bool) or v is None for g in grades for v in g.values())
    assert grade_clip(videos[0], scenes[0]) == grades[0]  # deterministic


def test_at_least_100_clips_at_64x64():
    assert sum(count for h, w, *_, count in SETS if (h, w) == (64, 64)) >= 100


def _share_false(pairs: list[tuple[dict, str]]) -> float:
    """Fraction of (grades, key) pairs whose check failed; needs at least a few pairs."""
    assert len(pairs) >= 5, len(pairs)
    return float(np.mean([grades[key] is False for grades, key in pairs]))


def test_reversed_clips_fail_motion_gravity_and_growth():
    scenes, videos, grades = real_set(0)
    motion, gravity, growth = [], [], []
    for scene, video, before in zip(scenes, videos, grades):
        after = grade_clip(video[::-1], scene)
        for i, obj in enumerate(scene["objects"]):
            axes = world_grader.expected_axes(obj, scene["camera"])
            if before[f"motion/{i}"] and any(axes):
                motion.append((after, f"motion/{i}"))
            if before[f"gravity/{i}"]:
                gravity.append((after, f"gravity/{i}"))
            if before[f"size_change/{i}"] and obj["motion"]["kind"] in ("grow", "shrink"):
                growth.append((after, f"size_change/{i}"))
    assert _share_false(motion) >= 0.95
    assert _share_false(gravity) >= 0.9
    assert _share_false(growth) >= 0.95


def _lie(scene: dict) -> dict:
    """The scene with its subject's colour, shape and size and its background all changed."""
    lie = copy.deepcopy(scene)
    subject, used = lie["objects"][0], {o["color"] for o in scene["objects"]}
    subject["color"] = next(c for c in COLORS if c not in used)
    subject["rgb"] = list(COLORS[subject["color"]])
    subject["shape"] = SHAPES[(SHAPES.index(subject["shape"]) + 2) % len(SHAPES)]
    subject["size"] = "small" if subject["size"] == "large" else "large"
    far = max(COLORS.values(), key=lambda c: min(np.linalg.norm(np.subtract(c, b["rgb"]))
                                                  for b in scene["background"]["colors"]))
    lie["background"] = {"kind": "solid", "colors": [{"name": "x", "rgb": list(far)}],
                         "direction": None}
    return lie


def test_clips_that_contradict_the_scene_fail():
    scenes, videos, grades = real_set(1)
    lies = [grade_clip(video, _lie(scene)) for scene, video in zip(scenes, videos)]
    for key in ("color/0", "background"):
        assert _share_false([(g, key) for g in lies]) == 1.0, key
    for key in ("shape/0", "size/0"):
        assert _share_false([(g, key) for g, t in zip(lies, grades) if t[key]]) >= 0.95, key
    # Claiming an extra object, or one fewer, breaks the count.
    extra = [grade_clip(v, {**s, "objects": s["objects"] + [_lie(s)["objects"][0]]})
             for s, v in zip(scenes[:20], videos[:20])]
    assert _share_false([(g, "count") for g in extra]) == 1.0


def test_linear_descent_or_rest_is_not_a_fall():
    falls = []
    for scene, video in zip(*real_set(0)[:2]):
        for i, obj in enumerate(scene["objects"]):
            if obj["motion"]["kind"] in ("still", "move") and obj["motion"].get(
                    "direction") in (None, "down"):
                claim = copy.deepcopy(scene)
                claim["objects"][i]["motion"] = {"kind": "fall"}
                falls.append((grade_clip(video, claim), f"gravity/{i}"))
    assert _share_false(falls) >= 0.95


def test_grade_clip_wants_uint8_frames():
    scenes, videos, _ = real_set(0)
    with pytest.raises(ValueError, match="uint8"):
        grade_clip(videos[0].astype(np.float32), scenes[0])


# The held-out split.

def test_heldout_pairs_leave_every_colour_and_shape_in_training():
    colors, shapes = zip(*HELDOUT_PAIRS)
    assert sorted(shapes) == sorted(SHAPES) and len(set(colors)) == len(colors)
    train = [sample_scene(0, i, 32, combos="train") for i in range(1500)]
    assert not any(uses_heldout_pair(s) for s in train)
    objects = [o for s in train for o in s["objects"]]
    assert {o["color"] for o in objects} == set(COLORS)
    assert {o["shape"] for o in objects} == set(SHAPES)
    # Scenes without a held-out pair are those of the whole vocabulary ("all").
    for i in range(100):
        everything = sample_scene(0, i, 32)
        assert uses_heldout_pair(everything) or sample_scene(0, i, 32, combos="train") == everything
    heldout = [sample_scene(0, i, 32, combos="heldout") for i in range(200)]
    subjects = [(s["objects"][0]["color"], s["objects"][0]["shape"]) for s in heldout]
    assert set(subjects) == set(HELDOUT_PAIRS)
    with pytest.raises(ValueError, match="combos"):
        sample_scene(0, 0, combos="test")


def test_world_writes_a_heldout_split(tmp_path):
    synthetic_world.generate_world(str(tmp_path), 4, 2, seed=3, base_size=32, num_shards=1,
                                   show_progress=False, num_heldout_prompts=5, aspect="1:1")
    rows = [json.loads(line) for name in ("captions", "heldout")
            for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert [r["split"] for r in rows] == ["train"] * 4 + ["eval"] * 2 + ["heldout"] * 5
    for row in rows:
        scene = row["scene"]
        subject = (scene["objects"][0]["color"], scene["objects"][0]["shape"])
        if row["split"] != "eval":  # eval keeps the whole vocabulary
            assert (subject in HELDOUT_PAIRS) == (row["split"] == "heldout")
            assert uses_heldout_pair(scene) == (row["split"] == "heldout")
        assert " ".join(subject) in row["caption"]
        assert scene["width"] == scene["height"] == 32
    assert len(shards.find_shards(str(tmp_path), "heldout")) == 1
    index = synthetic_world.clip_index("heldout", 2)
    assert synthetic_world.make_clip(3, index, 32, aspect="1:1").scene == rows[8]["scene"]

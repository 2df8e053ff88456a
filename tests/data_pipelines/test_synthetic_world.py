"""data_pipelines.synthetic_world and its world_* modules: scenes, render, tracks, captions, CLI."""

import json
import os
import subprocess
import sys

import grain
import numpy as np
import pytest

from data_pipelines import shards, synthetic_world
from data_pipelines.world_captions import dense_caption, motion_phrase, short_caption
from data_pipelines.world_render import coverage, object_tracks, render_clip
from data_pipelines.world_scene import (ASPECTS, COLORS, DIRECTIONS, FRAME_RATES, POLYGONS,
                                        RING_INNER, SHAPES, SIZES, bounce_height, frame_size,
                                        sample_scene)
from vidgen.io.video import probe_video, read_video

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCENES = [sample_scene(0, i, 128) for i in range(200)]


def test_clip_is_a_pure_function_of_seed_and_index():
    a, b = synthetic_world.make_clip(7, 3, 32), synthetic_world.make_clip(7, 3, 32)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert (a.caption, a.short_caption, a.scene) == (b.caption, b.short_caption, b.scene)
    assert sample_scene(8, 3, 32) != a.scene and sample_scene(7, 4, 32) != a.scene
    assert a.frames.shape == (a.scene["num_frames"], a.scene["height"], a.scene["width"], 3)


def test_scenes_have_native_sizes_rates_and_durations_and_are_json():
    for scene in SCENES:
        width, height = scene["width"], scene["height"]
        assert width % 16 == 0 and height % 16 == 0
        assert 0.75 < width * height / 128**2 < 1.25
        assert abs(width / height - ASPECTS[scene["aspect"]]) < 0.2 * ASPECTS[scene["aspect"]]
        assert scene["fps"] in FRAME_RATES and 1.0 <= scene["duration_s"] <= 8.0 + 1 / scene["fps"]
        assert json.loads(json.dumps(scene)) == scene
    assert frame_size("16:9", 256) == (336, 192)
    with pytest.raises(ValueError, match="5:4"):
        frame_size("5:4", 128)


def test_sampled_scenes_cover_the_whole_vocabulary():
    objects = [obj for scene in SCENES for obj in scene["objects"]]
    assert {obj["shape"] for obj in objects} == set(SHAPES)
    assert {obj["color"] for obj in objects} == set(COLORS)
    assert {obj["size"] for obj in objects} == set(SIZES)
    assert {motion_phrase(obj) for obj in objects} == {
        "stays still", "falls and bounces", "grows", "shrinks", "rotates clockwise",
        "rotates counterclockwise", *(f"moves {d}" for d in DIRECTIONS)}
    assert {scene["aspect"] for scene in SCENES} == set(ASPECTS)
    assert {scene["fps"] for scene in SCENES} == set(FRAME_RATES)
    assert {scene["camera"]["pan"] for scene in SCENES} == {"none", *DIRECTIONS}
    assert {scene["background"]["kind"] for scene in SCENES} == {"solid", "gradient"}
    assert {len(scene["objects"]) for scene in SCENES} == {1, 2, 3}
    assert sum(scene["occlusion"] is not None for scene in SCENES) >= 10


def test_caption_of_a_hand_built_scene():
    scene = {"objects": [
        {"shape": "ball", "color": "red", "size": "large", "motion": {"kind": "fall"}},
        {"shape": "square", "color": "green", "size": "small",
         "motion": {"kind": "move", "direction": "left"}}],
        "background": {"kind": "gradient", "direction": "vertical",
                       "colors": [{"name": "blue"}, {"name": "white"}]},
        "camera": {"pan": "right"}, "occlusion": None}
    assert dense_caption(scene) == ("A large red ball falls and bounces on a blue-to-white "
                                    "gradient background while a small green square moves "
                                    "left; the camera pans right.")
    assert short_caption(scene) == "a red ball"


def test_captions_name_every_object_its_motion_and_the_camera():
    for scene in SCENES:
        caption = dense_caption(scene)
        for obj in scene["objects"]:
            assert f"{obj['size']} {obj['color']} {obj['shape']} {motion_phrase(obj)}" in caption
        assert ("the camera pans" in caption) == (scene["camera"]["pan"] != "none")
        if scene["occlusion"]:
            assert "passes behind" in caption
        subject = scene["objects"][0]
        assert short_caption(scene) == f"a {subject['color']} {subject['shape']}"


def test_occluded_object_is_hidden_then_visible_again():
    occluded = [s for s in SCENES[:80] if s["occlusion"]]
    assert len(occluded) >= 5
    for scene in occluded:
        visibility = object_tracks(scene)["visibility"][scene["occlusion"]["occluded"]]
        hidden = int(np.argmin(visibility))
        assert visibility[0] > 0.9 and visibility[hidden] == 0.0, scene["index"]
        assert visibility[hidden:].max() > 0.9, scene["index"]


def test_coverage_area_matches_analytic_shape_area():
    radius, grid = 20.0, np.arange(-40, 40) + 0.5
    polygon_area = {k: 0.5 * abs(np.dot(v[:, 0], np.roll(v[:, 1], 1)) -
                                 np.dot(v[:, 1], np.roll(v[:, 0], 1))) for k, v in POLYGONS.items()}
    areas = {"ball": np.pi, "ring": np.pi * (1 - RING_INNER**2), **polygon_area}
    for shape in SHAPES:
        cov = coverage(shape, np.array([[0.3, -0.2]]), np.array([radius]), np.array([0.4]),
                       grid[None], grid[None])
        assert cov.sum() == pytest.approx(areas[shape] * radius**2, rel=5e-3), shape


def _solid_point(obj: dict, center: np.ndarray, radius: float) -> tuple[int, int]:
    offset = radius * (1 + RING_INNER) / 2 if obj["shape"] == "ring" else 0.0
    return int(center[1]), int(center[0] + offset)


def test_visible_objects_show_their_named_colour():
    checked = 0
    for scene in SCENES[:30]:
        frames, tracks = render_clip(scene), object_tracks(scene)
        for i, obj in enumerate(scene["objects"]):
            if tracks["visibility"][i, 0] < 1.0:
                continue
            row, col = _solid_point(obj, tracks["center"][i, 0], tracks["radius"][i, 0])
            if obj["shape"] != "ring" or tracks["radius"][i, 0] * (1 - RING_INNER) > 6:
                assert frames[0, row, col].tolist() == obj["rgb"], (scene["index"], obj)
                checked += 1
    assert checked >= 20


def test_rendered_centroid_follows_the_track():
    """Coverage recovered from pixels (0 on background, 1 on the object) has the track's centre."""
    single = [s for s in SCENES if len(s["objects"]) == 1 and s["background"]["kind"] == "solid"]
    assert len(single) >= 10 and any(s["camera"]["pan"] != "none" for s in single)
    for scene in single:
        frames, tracks = render_clip(scene).astype(float), object_tracks(scene)
        background = np.array(scene["background"]["colors"][0]["rgb"], float)
        tint = np.array(scene["objects"][0]["rgb"], float) - background
        alpha = ((frames - background) @ tint) / (tint @ tint)
        ys, xs = np.mgrid[:frames.shape[1], :frames.shape[2]] + 0.5
        visible = np.flatnonzero(tracks["visibility"][0] == 1.0)
        assert len(visible) > 0, scene["index"]
        weight = alpha[visible].sum(axis=(1, 2))
        centroid = np.stack([(alpha[visible] * xs).sum(axis=(1, 2)) / weight,
                             (alpha[visible] * ys).sum(axis=(1, 2)) / weight], axis=-1)
        np.testing.assert_allclose(centroid, tracks["center"][0, visible], atol=0.25,
                                   err_msg=str(scene["index"]))


def test_bounce_follows_inelastic_ballistics():
    times = np.linspace(0.0, 6.0, 60001)
    height = bounce_height(times, drop=1.0, gravity=4.0, restitution=0.7)
    assert height.min() >= 0.0 and height[0] == 1.0
    first = np.sqrt(2 * 1.0 / 4.0)
    assert np.all(height[times < first - 1e-3] > 0) and height[np.searchsorted(times, first)] < 1e-3
    after = height[times > first + 1e-3]
    assert after.max() == pytest.approx(0.7**2, rel=1e-3)  # apex of the first bounce: e^2 h
    assert height[-1] == 0.0  # settled


def _read_records(paths: list[str]) -> dict[str, tuple[dict, bytes]]:
    source = grain.sources.ArrayRecordDataSource(paths)
    records = [shards.decode_record(source[i]) for i in range(len(source))]
    return {meta["id"]: (meta, video) for meta, video in records}


def test_cli_writes_videos_captions_and_shards(tmp_path):
    out = tmp_path / "world"
    subprocess.run([sys.executable, "-m", "data_pipelines.synthetic_world", f"--out={out}",
                    "--num_clips=3", "--num_eval_clips=2", "--seed=4", "--base_size=32",
                    "--num_shards=2", "--notfds"], cwd=REPO, check=True, capture_output=True,
                   timeout=120)
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"train-{i:06d}" for i in range(3)] + [
        f"eval-{i:06d}" for i in range(2)]
    records = {**_read_records(shards.find_shards(str(out), "train")),
               **_read_records(shards.find_shards(str(out), "eval"))}
    assert len(shards.find_shards(str(out), "eval")) == 2
    for row in rows:
        video = (out / row["path"]).read_bytes()
        frames = read_video(video)
        assert frames.shape == (row["num_frames"], row["height"], row["width"], 3)
        assert probe_video(video).fps == pytest.approx(row["fps"])
        meta, shard_video = records[row["id"]]
        assert shard_video == video
        assert meta == {k: v for k, v in row.items() if k not in ("path", "split")}
        position = int(row["id"].split("-")[1])
        assert row["scene"]["index"] == synthetic_world.clip_index(row["split"], position)
    # Clip i does not depend on how many clips a run makes.
    small = tmp_path / "small"
    synthetic_world.generate_world(str(small), 2, 1, seed=4, base_size=32, num_shards=1,
                                   show_progress=False)
    small_rows = [json.loads(line) for line in (small / "captions.jsonl").read_text().splitlines()]
    assert small_rows == [rows[0], rows[1], rows[3]]
    # Both runs' videos are clip (seed, index) up to h264 loss (x264's threaded encodes are not
    # bit-identical from run to run).
    for run, row in ((out, rows[1]), (small, rows[1]), (out, rows[3]), (small, rows[3])):
        rendered = synthetic_world.make_clip(4, row["scene"]["index"], 32).frames.astype(float)
        assert np.abs(read_video(str(run / row["path"])) - rendered).mean() < 5, (run, row["id"])


def test_bad_arguments_name_the_culprit(tmp_path):
    with pytest.raises(ValueError, match="num_clips=0"):
        synthetic_world.generate_world(str(tmp_path), 0)
    with pytest.raises(ValueError, match="split"):
        synthetic_world.clip_index("test", 0)

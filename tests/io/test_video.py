"""vidgen.io.video: encode/decode round trips, frame windows, probing and clear errors."""

import numpy as np
import pytest

from vidgen.io import video


def _ramp_clip(num_frames: int = 12, height: int = 32, width: int = 48) -> np.ndarray:
    """A clip whose frame index is readable from its brightness, to check frame windows."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[...] = (np.arange(num_frames) * 20 + 10)[:, None, None, None]
    return frames


def test_round_trip_is_close_and_probe_matches():
    frames = _ramp_clip()
    data = video.encode_video(frames, fps=12)
    decoded = video.read_video(data)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames).mean() < 2.0
    info = video.probe_video(data)
    assert (info.num_frames, info.width, info.height, info.codec) == (12, 48, 32, "h264")
    assert info.fps == pytest.approx(12.0)
    assert info.duration_s == pytest.approx(1.0, abs=0.1)


def test_window_picks_the_right_frames(tmp_path):
    frames = _ramp_clip()
    path = tmp_path / "clip.mp4"
    video.write_video(path, frames, fps=8)
    window = video.read_video(path, start=3, num_frames=4, stride=2)
    brightness = window.reshape(4, -1).mean(axis=1)
    np.testing.assert_allclose(brightness, [70, 110, 150, 190], atol=3)
    assert video.read_video(path, start=10, num_frames=5).shape[0] == 2  # clip ends first


def test_bad_input_names_the_culprit(tmp_path):
    with pytest.raises(video.VideoDecodeError, match="bytes"):
        video.read_video(b"\x00" * 100)
    missing = tmp_path / "missing.mp4"
    with pytest.raises(video.VideoDecodeError, match="missing.mp4"):
        video.probe_video(missing)
    with pytest.raises(ValueError, match="uint8"):
        video.encode_video(np.zeros((2, 8, 8, 3), np.float32), fps=8)
    with pytest.raises(ValueError, match="even"):
        video.encode_video(np.zeros((2, 7, 8, 3), np.uint8), fps=8)

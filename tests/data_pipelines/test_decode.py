"""data_pipelines.decode: window/crop choice, padding, and resize+crop against a NumPy reference."""

import numpy as np
import pytest

from data_pipelines import decode, pipeline, shards
from vidgen.io import video as video_io


def _triangle_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] float64 weights of an antialiased bilinear resize (triangle widened on shrink)."""
    scale = in_size / out_size
    width = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale
    dist = (np.arange(in_size)[None, :] + 0.5 - centres[:, None]) / width
    weights = np.clip(1.0 - np.abs(dist), 0.0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def _reference_resize_crop(frames, scaled_hw, out_hw, top_left):
    """Resize every whole frame in float64, then slice the crop: the definition, not the trick."""
    wy = _triangle_weights(frames.shape[1], scaled_hw[0])
    wx = _triangle_weights(frames.shape[2], scaled_hw[1])
    resized = np.einsum("yh,thwc,xw->tyxc", wy, frames.astype(np.float64), wx)
    (top, left), (h, w) = top_left, out_hw
    return resized[:, top:top + h, left:left + w]


@pytest.mark.parametrize("in_hw,out_hw,top_left", [
    ((48, 60), (24, 24), (0, 3)),    # 2x shrink, crop along the long side
    ((40, 30), (16, 16), (5, 0)),    # non-integer shrink, portrait
    ((12, 10), (20, 20), (2, 0)),    # upscale
    ((20, 20), (20, 20), (0, 0)),    # identity
])
def test_resize_crop_matches_numpy_reference(in_hw, out_hw, top_left):
    frames = np.random.default_rng(0).integers(0, 256, (2, *in_hw, 3), dtype=np.uint8)
    scaled_hw = decode.cover_size(in_hw, out_hw)
    got = decode.resize_crop(frames, scaled_hw, out_hw, top_left)
    want = _reference_resize_crop(frames, scaled_hw, out_hw, top_left)
    assert got.shape == (2, *out_hw, 3) and got.dtype == np.uint8
    # PIL rounds to uint8 between its horizontal and vertical passes: at most 1 level apart.
    assert np.abs(got.astype(np.float64) - want).max() <= 1.0


def test_cover_size_keeps_aspect_and_covers():
    assert decode.cover_size((128, 160), (64, 64)) == (64, 80)
    assert decode.cover_size((160, 128), (64, 32)) == (64, 51)
    assert decode.cover_size((10, 10), (32, 16)) == (32, 32)
    with pytest.raises(ValueError, match="positive"):
        decode.cover_size((0, 10), (4, 4))


def test_window_and_crop_choices():
    assert decode.choose_window(20, 9) == 5
    assert decode.choose_window(4, 9) == 0
    rng = np.random.default_rng(0)
    starts = {decode.choose_window(12, 9, rng) for _ in range(200)}
    assert starts == {0, 1, 2, 3}
    assert decode.choose_crop((64, 80), (64, 64)) == (0, 8)
    crops = {decode.choose_crop((66, 70), (64, 64), rng) for _ in range(400)}
    assert {t for t, _ in crops} == {0, 1, 2} and {l for _, l in crops} == set(range(7))
    with pytest.raises(ValueError, match="does not fit"):
        decode.choose_crop((10, 10), (12, 8))
    with pytest.raises(ValueError, match="num_frames"):
        decode.choose_window(5, 0)


def test_pad_to_length_repeats_last_frame():
    frames = np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)
    padded, count = decode.pad_to_length(frames, 5)
    assert count == 2 and padded.shape == (5, 2, 2, 3)
    np.testing.assert_array_equal(padded[:3], frames)
    np.testing.assert_array_equal(padded[3:], np.stack([frames[2], frames[2]]))
    assert decode.pad_to_length(frames, 2)[1] == 0


def _ramp_clip(num_frames: int, height: int = 32, width: int = 48) -> np.ndarray:
    """Frame t has brightness 20 + 12 t plus a gentle horizontal ramp (robust to h264)."""
    t = 20 + 12 * np.arange(num_frames)[:, None, None, None]
    x = np.arange(width)[None, None, :, None]
    return np.broadcast_to(t + x, (num_frames, height, width, 3)).astype(np.uint8)


@pytest.mark.parametrize("num_available,seed", [(12, 1), (12, 2), (5, 3)])
def test_decode_clip_matches_reference_pipeline(num_available, seed):
    video = video_io.encode_video(_ramp_clip(num_available), fps=8.0)
    got, padded = decode.decode_clip(video, num_available=num_available, num_frames=9,
                                     height=16, width=16, rng=np.random.default_rng(seed))
    # Replay the same draws on fully decoded frames with the reference resize.
    rng = np.random.default_rng(seed)
    start = decode.choose_window(num_available, 9, rng)
    window = video_io.read_video(video)[start:start + 9]
    window = np.concatenate([window, np.repeat(window[-1:], 9 - len(window), axis=0)])
    scaled_hw = decode.cover_size(window.shape[1:3], (16, 16))
    want = _reference_resize_crop(window, scaled_hw, (16, 16),
                                  decode.choose_crop(scaled_hw, (16, 16), rng))
    assert got.shape == (9, 16, 16, 3) and got.dtype == np.uint8
    assert padded == max(9 - num_available, 0)
    assert np.abs(got.astype(np.float64) - want).max() <= 1.0


def test_decode_clip_rejects_garbage():
    with pytest.raises(video_io.VideoDecodeError):
        decode.decode_clip(b"not a video", num_available=4, num_frames=2, height=8, width=8)


@pytest.mark.parametrize("frame_stride,num_available,want_stride", [(2, 15, 2), (0, 17, 2),
                                                                    (0, 20, 2), (0, 7, 1)])
def test_strided_windows_take_every_nth_frame(frame_stride, num_available, want_stride):
    assert decode.stride_for(num_available, 9, frame_stride) == want_stride
    video = video_io.encode_video(_ramp_clip(num_available, 16, 16), fps=8.0)
    got, padded = decode.decode_clip(video, num_available=num_available, num_frames=9,
                                     height=16, width=16, frame_stride=frame_stride)
    span = 8 * want_stride + 1
    start = max(num_available - span, 0) // 2                  # the eval path centres it
    want = 20 + 12 * np.minimum(start + want_stride * np.arange(9), num_available - 1)
    brightness = got[:, :, 0, 0].mean(axis=1)                  # the ramp's left edge
    assert np.abs(brightness - want).max() <= 3.0
    assert padded == max(9 - len(range(start, num_available, want_stride)), 0)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_records_decode_upright_on_every_path(rotation):
    """A record's `rotation` (clockwise degrees that make it upright) is applied by decode_clip,
    so the fixed-shape pipeline (ClipDecoder: training, eval, precompute) and the bucketed one
    return the same upright frames of the requested height x width."""
    coded = np.zeros((3, 16, 32, 3), np.uint8)
    coded[:, :8, :8] = 250                                  # a bright top-left corner
    video = video_io.encode_video(coded, fps=8.0)
    turns = rotation // 90
    height, width = (32, 16) if turns % 2 else (16, 32)
    plain, _ = decode.decode_clip(video, num_available=3, num_frames=3, height=16, width=32)
    want = np.rot90(plain, k=-turns, axes=(1, 2))
    got, _ = decode.decode_clip(video, num_available=3, num_frames=3, height=height, width=width,
                                rotation=rotation)
    np.testing.assert_array_equal(got, want)
    corner = {90: (slice(None, 8), slice(-8, None)), 180: (slice(-8, None), slice(-8, None)),
              270: (slice(-8, None), slice(None, 8))}[rotation]   # where top-left goes
    assert got[:, corner[0], corner[1]].mean() > 200
    record = shards.encode_record({"id": "phone", "num_frames": 3, "rotation": rotation}, video)
    decoder = pipeline.ClipDecoder(1, 3, height, width, seed=None)
    _, from_pipeline, _ = decoder.decode((0, record))
    np.testing.assert_array_equal(from_pipeline, want)

"""Per-clip transforms: pick a temporal window, decode only up to it, resize and crop.

Each step is a small pure function of its inputs and (for training) a NumPy generator, so the
pipeline can derive all randomness from (seed, record, epoch) and the eval path can use the
deterministic centre choice by passing `rng=None`.

Spatial sampling covers the target: the clip is scaled by `max(height / H, width / W)` (aspect
kept, so the short side in target terms lands exactly on the target) and a `height x width`
window is cut from the scaled frame. Scaling and cutting happen in one PIL call that resamples
only the cut region with an antialiased bilinear (triangle) filter.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from vidgen.io import video as video_io


def choose_window(num_available: int, num_frames: int,
                  rng: np.random.Generator | None = None) -> int:
    """The first frame of a `num_frames` window: uniform over valid starts, or centred if no rng.

    A clip shorter than the window starts at 0 (the caller pads it).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    slack = max(int(num_available) - num_frames, 0)
    return slack // 2 if rng is None else int(rng.integers(0, slack + 1))


def pad_to_length(frames: np.ndarray, num_frames: int) -> tuple[np.ndarray, int]:
    """Repeats the last frame until there are `num_frames`; returns (frames, frames added)."""
    missing = num_frames - frames.shape[0]
    if missing <= 0:
        return frames[:num_frames], 0
    tail = np.repeat(frames[-1:], missing, axis=0)
    return np.concatenate([frames, tail], axis=0), missing


def cover_size(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) a frame is scaled to, aspect kept, so it just covers `out_hw`."""
    (in_h, in_w), (out_h, out_w) = in_hw, out_hw
    if min(in_h, in_w, out_h, out_w) < 1:
        raise ValueError(f"frame sizes must be positive, got in={in_hw} out={out_hw}")
    scale = max(out_h / in_h, out_w / in_w)
    return max(out_h, round(in_h * scale)), max(out_w, round(in_w * scale))


def choose_crop(scaled_hw: tuple[int, int], out_hw: tuple[int, int],
                rng: np.random.Generator | None = None) -> tuple[int, int]:
    """The (top, left) of an `out_hw` window inside the scaled frame: uniform, or centred."""
    slack_h, slack_w = scaled_hw[0] - out_hw[0], scaled_hw[1] - out_hw[1]
    if slack_h < 0 or slack_w < 0:
        raise ValueError(f"crop {out_hw} does not fit in scaled frame {scaled_hw}")
    if rng is None:
        return slack_h // 2, slack_w // 2
    return int(rng.integers(0, slack_h + 1)), int(rng.integers(0, slack_w + 1))


def resize_crop(frames: np.ndarray, scaled_hw: tuple[int, int], out_hw: tuple[int, int],
                top_left: tuple[int, int]) -> np.ndarray:
    """Scales uint8 [T, H, W, 3] frames to `scaled_hw` and cuts `out_hw` at `top_left`.

    Equal to resizing the whole frame and slicing, but only the kept pixels are computed.
    """
    in_h, in_w = frames.shape[1:3]
    (scaled_h, scaled_w), (out_h, out_w), (top, left) = scaled_hw, out_hw, top_left
    sy, sx = in_h / scaled_h, in_w / scaled_w
    box = (left * sx, top * sy, (left + out_w) * sx, (top + out_h) * sy)
    out = np.empty((frames.shape[0], out_h, out_w, 3), np.uint8)
    for t, frame in enumerate(frames):
        image = Image.fromarray(frame)
        out[t] = np.asarray(image.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box))
    return out


def stride_for(num_available: int, num_frames: int, frame_stride: int) -> int:
    """The frame step of a window: `frame_stride`, or with 0 the largest step whose window
    still fits in the clip (num_frames spread over its whole duration)."""
    if frame_stride < 0:
        raise ValueError(f"frame_stride must be >= 0, got {frame_stride}")
    if frame_stride > 0:
        return frame_stride
    return max(1, (int(num_available) - 1) // max(num_frames - 1, 1))


def decode_clip(video: bytes, *, num_available: int, num_frames: int, height: int, width: int,
                rng: np.random.Generator | None = None, frame_stride: int = 1,
                rotation: int = 0) -> tuple[np.ndarray, int]:
    """Decodes one training (rng given) or eval (rng None) clip to upright uint8
    [num_frames, height, width, 3], taking every `frame_stride`-th frame (0: spread over the
    whole clip, see stride_for); `rotation` is the record's clockwise degrees (0, 90, 180, 270)
    that turn the decoded frames upright (data_pipelines/manifest.py).

    Only frames up to the window's end are decoded. Returns the frames and how many trailing
    frames are repeats of the last real one (clips shorter than the window). Raises
    `vidgen.io.video.VideoDecodeError` if the bytes cannot be decoded.
    """
    quarter_turns = int(rotation) // 90 % 4
    coded_hw = (width, height) if quarter_turns % 2 else (height, width)
    stride = stride_for(num_available, num_frames, frame_stride)
    start = choose_window(num_available, (num_frames - 1) * stride + 1, rng)
    frames = video_io.read_video(video, start=start, num_frames=num_frames, stride=stride)
    frames, num_padded = pad_to_length(frames, num_frames)
    scaled_hw = cover_size(frames.shape[1:3], coded_hw)
    top_left = choose_crop(scaled_hw, coded_hw, rng)
    frames = resize_crop(frames, scaled_hw, coded_hw, top_left)
    if quarter_turns:
        frames = np.ascontiguousarray(np.rot90(frames, k=-quarter_turns, axes=(1, 2)))
    return frames, num_padded

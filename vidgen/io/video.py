"""The one PyAV wrapper: read (with frame sampling), probe and write mp4 video.

Frames are uint8 arrays shaped [T, H, W, 3] (RGB). Sources may be a path or the encoded bytes of
a container, so shards holding raw mp4 bytes decode without touching the file system.
"""

from __future__ import annotations

import dataclasses
import io
import os
from fractions import Fraction

import av
import numpy as np

VideoSource = str | bytes | os.PathLike


class VideoDecodeError(ValueError):
    """A video could not be opened or decoded; the message names the source and the cause."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a container says about its first video stream."""

    num_frames: int
    fps: float
    width: int
    height: int
    duration_s: float
    codec: str


def _describe(src: VideoSource) -> str:
    return f"<{len(src)} bytes>" if isinstance(src, bytes) else str(src)


def _open(src: VideoSource) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(src) if isinstance(src, bytes) else os.fspath(src), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoDecodeError(f"cannot open video {_describe(src)}: {e}") from e


def _video_stream(container: av.container.InputContainer, src: VideoSource) -> av.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError(f"no video stream in {_describe(src)}")
    return container.streams.video[0]


def probe_video(src: VideoSource) -> VideoInfo:
    """Reads a video's size, rate and length from its container headers, without decoding."""
    with _open(src) as container:
        stream = _video_stream(container, src)
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        num_frames = stream.frames or int(round(duration * fps))
        return VideoInfo(num_frames=num_frames, fps=fps, width=stream.codec_context.width,
                         height=stream.codec_context.height, duration_s=duration,
                         codec=stream.codec_context.name)


def read_video(src: VideoSource, *, start: int = 0, num_frames: int | None = None,
               stride: int = 1) -> np.ndarray:
    """Decodes frames start, start+stride, ... (num_frames of them, or to the end) as uint8 RGB.

    Decoding stops as soon as the last wanted frame is reached, so a short window near the start
    of a long clip costs only that window. Returns fewer frames than asked if the clip ends first.
    """
    if start < 0 or stride < 1 or (num_frames is not None and num_frames < 0):
        raise ValueError(f"bad frame window start={start} num_frames={num_frames} stride={stride}")
    last = None if num_frames is None else start + (num_frames - 1) * stride
    frames = []
    try:
        with _open(src) as container:
            stream = _video_stream(container, src)
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if last is not None and i > last:
                    break
                if i >= start and (i - start) % stride == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as e:
        raise VideoDecodeError(f"cannot decode video {_describe(src)}: {e}") from e
    if not frames:
        if num_frames == 0:
            return np.zeros((0, 0, 0, 3), np.uint8)
        raise VideoDecodeError(f"no frames decoded from {_describe(src)} (start={start})")
    return np.stack(frames)


def check_frames(frames: np.ndarray, what: str = "frames", batched: bool = False) -> np.ndarray:
    """`frames` as a NumPy array, if it is uint8 RGB video ([T, H, W, 3], or [B, T, H, W, 3]
    when batched); raises ValueError naming `what` otherwise."""
    frames = np.asarray(frames)
    rank, layout = (5, "[B, T, H, W, 3]") if batched else (4, "[T, H, W, 3]")
    if frames.ndim != rank or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 {layout}, got {frames.dtype} {frames.shape}")
    return frames


def _write(target: str | io.BytesIO, frames: np.ndarray, fps: float, crf: int) -> None:
    frames = check_frames(frames)
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"h264 needs even height and width, got {frames.shape[1:3]}")
    with av.open(target, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # One x264 thread: threaded encoding is not bit-reproducible, and shards should be.
        stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float, *, crf: int = 18) -> None:
    """Writes uint8 [T, H, W, 3] frames to an h264 mp4 file."""
    _write(os.fspath(path), frames, fps, crf)


def encode_video(frames: np.ndarray, fps: float, *, crf: int = 18) -> bytes:
    """Encodes uint8 [T, H, W, 3] frames to h264 mp4 bytes in memory."""
    buffer = io.BytesIO()
    _write(buffer, frames, fps, crf)
    return buffer.getvalue()

"""From a folder of videos and their captions to manifest rows: discovery, captions, probing.

This module also defines the format of an ingested dataset; `python -m data_pipelines.ingest`
(data_pipelines/ingest.py) writes it, and data_pipelines.pipeline, data_pipelines.tfds_builder
and any other reader may rely on it. For split SPLIT (default "train") the output folder OUT is:

    OUT/shards/SPLIT-00000-of-0000N.array_record  one record per accepted clip, in the format of
                            data_pipelines.shards (encode_record(meta, video bytes)); the video
                            bytes are the original file's, never re-encoded. Shards are balanced
                            by bytes; inside a shard, records are in path order.
    OUT/SPLIT.manifest.jsonl  one row per accepted clip: its record `meta` plus "shard" (file
                            name under OUT/shards) and "record" (index inside that shard).
    OUT/SPLIT.rejects.jsonl   one row per rejected video: {"path", "reason", "detail"}, and one per
                            unusable caption row: {"path" (the captions file), "line", "reason",
                            "detail"}. ASCII JSON, so undecodable file names survive as escapes.
    OUT/SPLIT.summary.json    counts: "inputs" (video files found), "accepted", "rejected",
                            "rejected_by_reason", "caption_rows" (read, merged_duplicates,
                            unparseable, without_video), "other_files" (not videos, side-car captions included), "shards",
                            "bytes", "frames", "hours", "seconds"; "accounted" is true when
                            accepted + rejected == inputs (the run fails otherwise).
    OUT/tfds/               with --tfds: the same records as a TFDS dataset (tfds_builder).

Record metadata (`meta`), every key always present:
    id          path relative to the videos folder (unique; "/"-separated)
    caption     the first caption; captions: all distinct captions, in input order (>= 1)
    num_frames  frames in the video stream (its demuxed packets); fps: average frame rate
    duration_s  stream duration (num_frames / fps when the container gives none)
    width, height  coded frame size, i.e. what decoding returns (display rotation not applied)
    rotation    clockwise degrees (0, 90, 180, 270) that turn decoded frames upright,
                np.rot90(frames, -(rotation // 90), axes=(1, 2)), from the stream's display
                matrix (FFmpeg's autorotate turns the same way); 90 and 270 swap the displayed
                width and height (a phone clip shot upright and stored landscape has 90)
    codec       FFmpeg decoder name ("h264", "vp9", ...); bytes: file size; sha1: file digest

Captions come from a JSONL file ({"path" or "video": ..., "caption" or "captions": str or list}),
a CSV file (header with a path/video column and a caption/captions column) or, with no captions
file, a side-car SAME_NAME.txt next to each video (its whole stripped text is one caption).
Caption paths are relative to the videos folder, or else to the captions file's folder, or
absolute. Rows naming the same video are merged (distinct captions kept, counted). Captions that
are not valid UTF-8 reject their video ("caption_not_utf8") rather than being kept with
replacement characters: a mangled caption would teach the model the wrong text.

A video gets the first reason (in the order of REASONS) that applies to it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Iterator

import av

# Why a video was rejected, in the order the checks run.
REASONS = {
    "path_not_utf8": "the file name is not valid UTF-8",
    "caption_not_utf8": "its caption is not valid UTF-8",
    "missing_caption": "no caption, or only blank ones",
    "not_a_file": "not a regular file (a FIFO, a device, a broken link)",
    "empty_file": "zero bytes",
    "unreadable": "FFmpeg cannot open it as a container (random bytes, no moov atom, ...)",
    "no_video_stream": "the container has no video stream (audio only, subtitles only)",
    "bad_dimensions": "a side below min_side or above max_side, or aspect beyond max_aspect",
    "bad_frame_rate": "frame rate missing, not positive or above max_fps",
    "truncated": "the demuxer failed mid-file, or found fewer frames than the header declares",
    "undecodable": "not one frame decodes",
    "too_short": "fewer than min_frames frames",
    "timeout": "probing took longer than the per-file timeout (its worker was killed)",
    "probe_crashed": "the probing process died (a crash inside FFmpeg) or raised",
    "duplicate_content": "byte-identical to an accepted video earlier in path order",
    "changed_during_ingest": "its bytes changed or vanished between probing and shard writing",
}
# Why a caption row was not used (listed in the rejects file with its line number).
ROW_REASONS = ("caption_row_unparseable", "caption_row_without_video")
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg",
                              ".ts", ".flv", ".wmv", ".3gp", ".ogv", ".y4m"})


class Rejected(Exception):
    """A video failed a check; `reason` is a key of REASONS, `detail` says what was seen."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class Limits:
    """What a usable clip must satisfy (field metadata: the ingest CLI's flag help)."""

    min_frames: int = dataclasses.field(default=9, metadata={"help": "Fewest frames a clip has."})
    min_side: int = dataclasses.field(default=16, metadata={"help": "Smallest width or height."})
    max_side: int = dataclasses.field(default=8192, metadata={"help": "Largest width or height."})
    max_aspect: float = dataclasses.field(default=8.0, metadata={"help": "Largest long:short side ratio."})
    max_fps: float = dataclasses.field(default=480.0, metadata={"help": "Highest frame rate."})


def find_videos(videos_dir: str) -> tuple[list[str], int]:
    """Video files under `videos_dir` (by extension, recursive, sorted relative paths) and the
    number of other files there."""
    videos, others = [], 0
    for root, dirs, files in os.walk(videos_dir):
        dirs.sort()
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), videos_dir).replace(os.sep, "/")
            if os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                videos.append(rel)
            else:
                others += 1
    return videos, others


def _sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _scan(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[int, int]:
    """Demuxes every packet of `stream`, decoding only until one frame comes out.

    Returns (number of frames, the first frame's display rotation in counter-clockwise degrees
    as FFmpeg's display matrix gives it).
    """
    frames, rotation = 0, None
    try:
        for packet in container.demux(stream):
            frames += packet.size > 0
            if rotation is None:
                try:
                    decoded = packet.decode()
                except av.FFmpegError as e:
                    raise Rejected("undecodable", f"decoding packet {frames}: {e}") from e
                rotation = decoded[0].rotation if decoded else None
    except av.FFmpegError as e:
        raise Rejected("truncated", f"demuxing stopped after {frames} frames: {e}") from e
    if rotation is None:
        raise Rejected("undecodable", f"no frame decoded from {frames} packets")
    return frames, rotation


def _check_header(stream: av.VideoStream, limits: Limits) -> tuple[int, int, float]:
    """The stream's (width, height, fps) if they are within `limits`."""
    width, height = stream.codec_context.width, stream.codec_context.height
    if (min(width, height) < limits.min_side or max(width, height) > limits.max_side
            or max(width, height) > limits.max_aspect * min(width, height)):
        raise Rejected("bad_dimensions", f"{width}x{height} (limits: sides {limits.min_side}.."
                       f"{limits.max_side}, aspect <= {limits.max_aspect})")
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    if not 0 < fps <= limits.max_fps:
        raise Rejected("bad_frame_rate", f"{fps} fps (limit {limits.max_fps})")
    return width, height, fps


def probe(path: str, limits: Limits) -> dict:
    """Checks one video file and returns its record metadata (all `meta` keys but id and the
    captions); raises Rejected with the first failing check's reason."""
    if not os.path.isfile(path):
        raise Rejected("not_a_file", "not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise Rejected("empty_file", "0 bytes")
    try:
        container = av.open(path, mode="r")
    except (av.FFmpegError, OSError) as e:
        raise Rejected("unreadable", str(e)) from e
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise Rejected("no_video_stream", f"streams: {', '.join(kinds)}")
        stream = container.streams.video[0]
        width, height, fps = _check_header(stream, limits)
        frames, rotation = _scan(container, stream)
        if stream.frames and frames < stream.frames:
            raise Rejected("truncated", f"{frames} of the {stream.frames} frames declared")
        duration = (float(stream.duration * stream.time_base) if stream.duration else frames / fps)
        codec = stream.codec_context.name
    if frames < limits.min_frames:
        raise Rejected("too_short", f"{frames} frames < min_frames={limits.min_frames}")
    return {"num_frames": frames, "fps": fps, "duration_s": duration, "width": width,
            "height": height, "rotation": round(-rotation) % 360, "codec": codec,
            "bytes": size, "sha1": _sha1(path)}


def probe_or_reject(path: str, limits: Limits) -> dict:
    """`probe`, with a rejection returned as {"reason", "detail"} (a picklable worker result)."""
    try:
        return probe(path, limits)
    except Rejected as r:
        return {"reason": r.reason, "detail": r.detail}


@dataclasses.dataclass
class Captions:
    """Captions per video (relative path), and what went wrong reading them."""

    by_video: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    not_utf8: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> detail
    bad_rows: list[dict] = dataclasses.field(default_factory=list)  # rejects-file rows
    rows: int = 0
    merged: int = 0

    def add(self, video: str, captions: list[str], where: str) -> None:
        """Adds a row's captions; captions with undecodable bytes mark the video instead."""
        for caption in captions:
            try:
                caption.encode("utf-8")
            except UnicodeEncodeError:
                raw = caption.encode("utf-8", "surrogateescape")
                self.not_utf8[video] = f"{where}: invalid UTF-8 in {raw[:60]!r}"
                return
        self.merged += video in self.by_video
        known = self.by_video.setdefault(video, [])
        known.extend(c for c in dict.fromkeys(captions) if c not in known)

    def of(self, video: str) -> list[str]:
        """The video's captions; raises Rejected if it has none or they are not UTF-8."""
        if video in self.not_utf8:
            raise Rejected("caption_not_utf8", self.not_utf8[video])
        if not self.by_video.get(video):
            raise Rejected("missing_caption", "no caption row or side-car .txt")
        return self.by_video[video]


def _caption_list(value: object) -> list[str]:
    """A row's caption field as a list of stripped, non-blank strings."""
    values = [value] if isinstance(value, str) or value is None else value
    if not isinstance(values, list) or not all(isinstance(v, str | None) for v in values):
        raise ValueError(f"caption must be a string or a list of strings, got {value!r:.60}")
    return [v.strip() for v in values if v and v.strip()]


def _rows(path: str) -> Iterator[tuple[int, dict | None, str]]:
    """(line, row or None, error) for each row of a JSONL or CSV captions file. Bytes that are not
    UTF-8 come through as surrogate escapes, so one bad caption cannot hide its row."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8-sig", "surrogateescape")
    if path.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            yield reader.line_num, row, ""
        return
    for line_no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                is_dict = isinstance(row, dict)
                yield line_no, row if is_dict else None, "" if is_dict else "not a JSON object"
            except json.JSONDecodeError as e:
                yield line_no, None, f"not JSON: {e}"


def _resolve(path: str, videos_dir: str, base_dir: str, videos: set[str]) -> str | None:
    """The video (relative path) a caption row names, or None if it names none of them."""
    candidates = [path] if os.path.isabs(path) else [
        os.path.join(videos_dir, path), os.path.join(base_dir, path)]
    for candidate in candidates:
        rel = os.path.relpath(os.path.normpath(candidate), videos_dir).replace(os.sep, "/")
        if rel in videos:
            return rel
    return None


def read_captions(captions_file: str | None, videos_dir: str, videos: list[str]) -> Captions:
    """The captions of `videos` from a JSONL/CSV file, or from side-car .txt files if None."""
    captions = Captions()
    if captions_file is None:
        for video in videos:
            sidecar = os.path.join(videos_dir, os.path.splitext(video)[0] + ".txt")
            if os.path.isfile(sidecar):
                with open(sidecar, "rb") as f:
                    text = f.read().decode("utf-8-sig", "surrogateescape")
                captions.rows += 1
                captions.add(video, _caption_list(text), sidecar)
        return captions
    known, base_dir = set(videos), os.path.dirname(os.path.abspath(captions_file))
    for line, row, error in _rows(captions_file):
        captions.rows += 1
        bad = {"path": captions_file, "line": line, "reason": "caption_row_unparseable"}
        path = row and (row.get("path") or row.get("video"))
        if not isinstance(path, str):
            captions.bad_rows.append(bad | {"detail": error or "no path/video field"})
            continue
        try:
            texts = _caption_list(row.get("captions", row.get("caption")))
        except ValueError as e:
            captions.bad_rows.append(bad | {"detail": str(e)})
            continue
        if (video := _resolve(path, videos_dir, base_dir, known)) is None:
            captions.bad_rows.append(bad | {"reason": "caption_row_without_video",
                                            "detail": f"no video file {path!r}"})
            continue
        captions.add(video, texts, f"{captions_file}:{line}")
    return captions

"""ArrayRecord shards of clips: one record per clip holding its metadata and encoded video.

A record is a 4-byte little-endian length, that many bytes of UTF-8 JSON metadata, then the raw
container bytes (mp4), or for precomputed latents (data_pipelines/precompute.py) a .npy array.
Neither part is pickled, so shards are safe to read from anywhere.
"""

from __future__ import annotations

import glob
import io
import json
import os
import struct
import threading
from collections.abc import Iterable

import numpy as np
from array_record.python import array_record_module

_HEADER = struct.Struct("<I")
# np.load parses the .npy header with ast.literal_eval, and CPython 3.11's AST constructor keeps
# its recursion depth in interpreter-wide state: grain's reader threads parsing at once can fail
# with "SystemError: AST constructor recursion depth mismatch" (seen mid-run; cpython#106905).
_NPY_LOAD = threading.Lock()


def encode_record(meta: dict, video: bytes) -> bytes:
    """Packs a clip's JSON-able metadata and its encoded video into one record."""
    header = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _HEADER.pack(len(header)) + header + video


def decode_record(record: bytes) -> tuple[dict, bytes]:
    """Splits a record into (metadata, encoded video); raises ValueError if it is malformed."""
    if len(record) < _HEADER.size:
        raise ValueError(f"record of {len(record)} bytes is too short for a header")
    (size,) = _HEADER.unpack_from(record)
    end = _HEADER.size + size
    if end > len(record):
        raise ValueError(f"record header claims {size} metadata bytes, record has {len(record)}")
    try:
        meta = json.loads(record[_HEADER.size:end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"record metadata is not UTF-8 JSON: {e}") from e
    return meta, bytes(record[end:])


def array_to_bytes(array: np.ndarray) -> bytes:
    """A float32 array as .npy bytes (no pickle): the payload of a precomputed-latents record."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, np.float32), allow_pickle=False)
    return buffer.getvalue()


def array_from_bytes(data: bytes) -> np.ndarray:
    """The inverse of array_to_bytes (safe to call from many threads at once)."""
    with _NPY_LOAD:
        return np.load(io.BytesIO(data), allow_pickle=False)


def shard_path(out_dir: str, prefix: str, index: int, count: int) -> str:
    """The file name of shard `index` of `count` for a split prefix."""
    return os.path.join(out_dir, f"{prefix}-{index:05d}-of-{count:05d}.array_record")


def _writer(path: str) -> array_record_module.ArrayRecordWriter:
    # group_size:1 keeps every record individually addressable for fast random reads.
    return array_record_module.ArrayRecordWriter(path, "group_size:1")


def write_shard(path: str, records: Iterable[tuple[dict, bytes]]) -> None:
    """Writes (metadata, video) pairs in order into one ArrayRecord file."""
    writer = _writer(path)
    try:
        for meta, video in records:
            writer.write(encode_record(meta, video))
    finally:
        writer.close()


def write_shards(records: Iterable[tuple[dict, bytes]], out_dir: str, prefix: str,
                 num_shards: int) -> list[str]:
    """Writes (metadata, video) pairs round-robin into `num_shards` ArrayRecord files."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    os.makedirs(out_dir, exist_ok=True)
    paths = [shard_path(out_dir, prefix, i, num_shards) for i in range(num_shards)]
    writers = [_writer(p) for p in paths]
    try:
        for i, (meta, video) in enumerate(records):
            writers[i % num_shards].write(encode_record(meta, video))
    finally:
        for writer in writers:
            writer.close()
    return paths


def find_shards(path: str, split: str) -> list[str]:
    """The sorted shard files of a split under a dataset directory (`{path}/shards/{split}-*`)."""
    paths = sorted(glob.glob(os.path.join(path, "shards", f"{split}-*.array_record")))
    if not paths:
        raise FileNotFoundError(f"no {split!r} shards under {os.path.join(path, 'shards')}")
    return paths

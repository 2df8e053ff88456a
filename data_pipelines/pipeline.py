"""The grain graph that turns ArrayRecord clip shards into fixed-shape training and eval batches.

Training graph (each stage a plain grain step):

    ArrayRecordDataSource -> tag each record with its index       (MapDataset, random access)
      -> this host's shard (ShardOptions, drop_remainder)
      -> seed(seed).shuffle()  (a new order each epoch)  -> repeat(num_epochs)
      -> decode: random window + random crop, rng from (seed, record index, epoch)
      -> to_iter_dataset -> drop undecodable clips (counted) -> batch(host batch)
      -> mp_prefetch(num_workers)  (optional)

Every random choice is a function of (seed, record index, epoch) alone, never of the host
count, worker count or position in the stream, so a restored iterator state replays exactly.
Batches are dicts of NumPy arrays with a leading host-batch axis:
  video            uint8 [b, T, H, W, 3]
  padded_frames    int32 [b]  trailing frames repeated because the clip was shorter than T
  skipped_records  int32 [b]  undecodable records dropped just before this clip; their sum over
                              all batches is the number of records skipped so far.
The iterator state is {"num_workers": k, "pipeline": grain's state}; restoring it into a
pipeline with another worker count raises instead of silently yielding a different stream.

The bucketed graph (one clip shape per global step, config.data.buckets) is
data_pipelines/bucketed.py; packed latents are data_pipelines/packing.py.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Callable, Sequence

import grain
import jax
import numpy as np
from absl import flags

from data_pipelines import decode, shards
from vidgen.io import video as video_io

log = logging.getLogger(__name__)


def tagged_records(shard_paths: Sequence[str]) -> grain.MapDataset:
    """All records of the shards in file order, as (index, record bytes) pairs.

    Below shuffle and repeat the index is `epoch * num_records + record`, which is what lets the
    decode step recover both the record and the epoch.
    """
    if not shard_paths:
        raise ValueError("shard_paths is empty: no shard files to read")
    source = grain.MapDataset.source(grain.sources.ArrayRecordDataSource(list(shard_paths)))
    return source.map_with_index(_tag)


def _tag(index: int, record: bytes) -> tuple[int, bytes]:
    return index, record


def host_records(records: grain.MapDataset, *, shard: grain.sharding.ShardOptions, seed: int,
                 shuffle: bool, num_epochs: int | None) -> grain.MapDataset:
    """This host's slice of the records, shuffled per epoch and repeated.

    With `drop_remainder` every host gets `len // shard_count` records, strided over the files.
    """
    count = len(records) // shard.shard_count * shard.shard_count if shard.drop_remainder else None
    if count == 0:
        raise ValueError(f"{len(records)} records cannot fill {shard.shard_count} host shards")
    records = records[shard.shard_index:count:shard.shard_count]
    if shuffle:
        records = records.seed(seed).shuffle()
    return records.repeat(num_epochs)


@dataclasses.dataclass(frozen=True)
class ClipDecoder:
    """Decodes a tagged record to a clip dict, or None (logged) if the record is unusable.

    `seed=None` selects the deterministic eval path: centre window and centre crop.
    `text_fn(metadata) -> dict of arrays` adds per-clip text fields (e.g. caption token ids).
    """

    num_records: int
    num_frames: int
    height: int
    width: int
    seed: int | None
    text_fn: Callable[[dict], dict[str, np.ndarray]] | None = None
    frame_stride: int = 1

    def decode(self, tagged: tuple[int, bytes]) -> tuple[dict, np.ndarray, int] | None:
        """(metadata, uint8 [T, H, W, 3] frames, number of padded frames), or None if unusable."""
        index, record = tagged
        epoch, record_index = divmod(index, self.num_records)
        try:
            meta, video = shards.decode_record(record)
        except ValueError as e:
            log.warning("skipping record %d: %s", record_index, e)
            return None
        rng = None if self.seed is None else np.random.default_rng([self.seed, record_index, epoch])
        try:
            num_available = meta.get("num_frames") or video_io.probe_video(video).num_frames
            frames, padded = decode.decode_clip(
                video, num_available=int(num_available), num_frames=self.num_frames,
                height=self.height, width=self.width, rng=rng, frame_stride=self.frame_stride,
                rotation=meta.get("rotation") or 0)
        except video_io.VideoDecodeError as e:
            log.warning("skipping clip %r (record %d): %s", meta.get("id"), record_index, e)
            return None
        return meta, frames, padded

    def __call__(self, tagged: tuple[int, bytes]) -> dict[str, np.ndarray] | None:
        if (decoded := self.decode(tagged)) is None:
            return None
        meta, frames, padded = decoded
        element = {"video": frames, "padded_frames": np.int32(padded)}
        return element if self.text_fn is None else element | self.text_fn(meta)


class _DropSkippedIterator(grain.DatasetIterator):
    """Drops None elements, stamping on the next clip how many it dropped before it."""

    def __next__(self) -> dict[str, np.ndarray]:
        skipped = 0
        while (element := next(self._parent)) is None:
            skipped += 1
        return element | {"skipped_records": np.int32(skipped)}

    def get_state(self) -> dict:
        return self._parent.get_state()

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state)


class DropSkipped(grain.IterDataset):
    """Filters out undecodable clips (None) and counts them in a `skipped_records` field.

    A finite stream that ends in skipped records has no later clip to carry their count.
    """

    def __iter__(self) -> _DropSkippedIterator:
        return _DropSkippedIterator(self._parent.__iter__())


class _WorkerCountIterator(grain.DatasetIterator):
    """Passes elements through; its state records the worker count and refuses another one."""

    def __init__(self, parent: grain.DatasetIterator, num_workers: int):
        super().__init__(parent)
        self._num_workers = num_workers

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    def get_state(self) -> dict:
        return {"num_workers": self._num_workers, "pipeline": self._parent.get_state()}

    def set_state(self, state: dict) -> None:
        if state.get("num_workers") != self._num_workers:
            raise ValueError(f"iterator state was saved with num_workers={state.get('num_workers')}"
                             f", this pipeline has num_workers={self._num_workers}: the stream "
                             "would differ, restore with the same data.num_workers")
        self._parent.set_state(state["pipeline"])


class PinWorkerCount(grain.IterDataset):
    """Makes a restored state with a different `num_workers` fail loudly instead of drifting."""

    def __init__(self, parent: grain.IterDataset, num_workers: int):
        super().__init__(parent)
        self._num_workers = num_workers

    def __iter__(self) -> _WorkerCountIterator:
        return _WorkerCountIterator(self._parent.__iter__(), self._num_workers)


def host_batch_size(batch_size: int) -> int:
    """The per-host share of a global batch; raises unless it divides evenly."""
    hosts = jax.process_count()
    if batch_size < 1 or batch_size % hosts:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of the "
                         f"{hosts} JAX processes")
    return batch_size // hosts


def make_clip_dataset(shard_paths: Sequence[str], *, num_frames: int, height: int, width: int,
                      batch_size: int, seed: int, shuffle: bool = True,
                      num_epochs: int | None = None, num_workers: int = 0,
                      shard_by_process: bool = True,
                      text_fn: Callable[[dict], dict[str, np.ndarray]] | None = None,
                      frame_stride: int = 1) -> grain.IterDataset:
    """The training input: host-local batches of random clip windows and crops (see module doc).

    `batch_size` is global; `text_fn` adds per-clip text fields from each record's metadata;
    `frame_stride` takes every n-th frame (0: num_frames spread over each whole clip).
    `num_workers > 0` decodes in that many spawned processes; a state saved with one worker
    count must be restored with the same count (the stream differs).
    """
    local_batch = host_batch_size(batch_size)
    records = tagged_records(shard_paths)
    shard = (grain.sharding.ShardByJaxProcess(drop_remainder=True) if shard_by_process
             else grain.sharding.NoSharding())
    clips = host_records(records, shard=shard, seed=seed, shuffle=shuffle, num_epochs=num_epochs)
    decoder = ClipDecoder(len(records), num_frames, height, width, seed, text_fn, frame_stride)
    read = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * local_batch)
    ds = DropSkipped(clips.map(decoder).to_iter_dataset(read, allow_nones=True))
    return in_workers(ds.batch(local_batch, drop_remainder=True), num_workers)


def in_workers(ds: grain.IterDataset, num_workers: int) -> PinWorkerCount:
    """ds run in `num_workers` spawned processes (0: in this one), its worker count pinned."""
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain 0.2.18 reads an absl flag when starting workers
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return PinWorkerCount(ds, num_workers)


def load_eval_clips(shard_paths: Sequence[str], *, num_frames: int, height: int, width: int,
                    num_clips: int | None, frame_stride: int = 1,
                    allow_fewer: bool = False) -> dict:
    """The first `num_clips` decodable clips in file order, centre window and centre crop.

    For held-out evaluation: the same clips and pixels every call (`num_clips=None`: all of
    them); fewer decodable clips than `num_clips` raise ValueError unless `allow_fewer`.
    Returns {"video": uint8 [N, T, H, W, 3], "id": list of clip ids, "meta": list of record
    metadata, "skipped": number of undecodable records passed over}.
    """
    records = tagged_records(shard_paths)
    decoder = ClipDecoder(len(records), num_frames, height, width, seed=None,
                          frame_stride=frame_stride)
    clips, skipped = [], 0
    for index in range(len(records)):
        if len(clips) == num_clips:
            break
        if (decoded := decoder.decode(records[index])) is not None:
            clips.append(decoded)
        else:
            skipped += 1
    if num_clips is not None and len(clips) < num_clips and not allow_fewer:
        raise ValueError(f"asked for {num_clips} eval clips, only {len(clips)} decodable in "
                         f"{len(records)} records of {list(shard_paths)}")
    return {"video": np.stack([frames for _, frames, _ in clips]),
            "id": [meta.get("id") for meta, _, _ in clips],
            "meta": [meta for meta, _, _ in clips], "skipped": skipped}


def read_latent_payload(payload: bytes) -> dict[str, np.ndarray]:
    """The arrays of a precomputed-latents record: {"latents"} from a .npy payload, or every
    array of an .npz payload ("latents" and, when precomputed, the caption's "context")."""
    if payload[:2] == b"PK":
        with np.load(io.BytesIO(payload), allow_pickle=False) as arrays:
            return {k: arrays[k] for k in arrays.files}
    return {"latents": shards.array_from_bytes(payload)}


@dataclasses.dataclass(frozen=True)
class LatentDecoder:
    """A precomputed-latents record (data_pipelines/precompute.py) to an example dict."""

    text_fn: Callable[[dict], dict[str, np.ndarray]] | None = None

    def __call__(self, tagged: tuple[int, bytes]) -> dict[str, np.ndarray]:
        meta, payload = shards.decode_record(tagged[1])
        element = read_latent_payload(payload)
        return element if self.text_fn is None else element | self.text_fn(meta)


def make_latent_dataset(shard_paths: Sequence[str], *, batch_size: int, seed: int,
                        shuffle: bool = True, num_epochs: int | None = None,
                        text_fn: Callable[[dict], dict[str, np.ndarray]] | None = None
                        ) -> grain.IterDataset:
    """Training batches of precomputed latents ({"latents": float32 [b, t, h, w, C]} plus the
    text_fn fields): the same host sharding, shuffling and resumable state as clip batches."""
    records = tagged_records(shard_paths)
    clips = host_records(records, shard=grain.sharding.ShardByJaxProcess(drop_remainder=True),
                         seed=seed, shuffle=shuffle, num_epochs=num_epochs)
    ds = clips.map(LatentDecoder(text_fn)).to_iter_dataset()
    return ds.batch(host_batch_size(batch_size), drop_remainder=True)

"""The bucketed grain graph: clip shards -> host batches whose shape is the bucket of each step.

Config: config.data.buckets (the table, assignment and schedule are data_pipelines/buckets.py).
One static shape per global step:

    clip metadata (the ingest manifest, or a scan of the records) -> bucket of every clip (plan)
    BucketSteps: step s -> the bucket the schedule draws for s (seed, s; the same on every
      host) and this host's slots of that step's global batch    (MapDataset over steps)
      -> BucketBatchLoader: read each slot's record, decode a random window at the bucket's
         frame rate, resize and crop to the bucket's shape (data_pipelines/decode.py)
      -> TextFields: per-clip text fields (caption tokens) from the metadata -> the host batch
      -> to_iter_dataset (threads) -> mp_prefetch(num_workers)  (optional)

Batches hold the fields of pipeline.make_clip_dataset's (video, padded_frames, skipped_records
and the text fields), shaped by the step's bucket. An element is a whole host batch and its
iterator state is just the next step, so:
- resuming continues the exact batch sequence (same clips, windows and crops);
- the host count may change between runs: step s reads the same global batch (the same clips,
  windows, crops and order) on any number of hosts that divides every bucket's global batch
  (buckets.batch_multiple), since host i of n reads the i-th contiguous n-th of it. The state
  saved by any host restores on any host (vidgen/train/checkpoint.py restores process 0's
  state on every process when the count changed). A host count that does not divide a
  bucket's batch raises.
- the worker count is pinned (pipeline.PinWorkerCount): restoring with another one raises.
Over one schedule epoch (the steps in which every bucket has used each of its clips weight
times), every clip is used exactly once across all hosts when the weights are 1 and every
bucket's clip count is a multiple of its global batch; otherwise a bucket's leftover clips
start its next epoch, so no clip is skipped or used twice within a lap of its bucket.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

import grain
import numpy as np

from data_pipelines import buckets, decode, pipeline, shards

log = logging.getLogger(__name__)


def read_clip_infos(shard_paths: Sequence[str], manifest: str | None = None
                    ) -> list[buckets.ClipInfo | None]:
    """Every record's ClipInfo in record order (None: the record is unusable), from an ingest
    manifest (data_pipelines/manifest.py: rows with "shard" and "record") when given and
    complete, else by reading every record once."""
    source = grain.sources.ArrayRecordDataSource(list(shard_paths))
    if manifest is not None and os.path.exists(manifest):
        with open(manifest, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        order = {os.path.basename(p): i for i, p in enumerate(shard_paths)}
        rows.sort(key=lambda r: (order.get(r["shard"], -1), r["record"]))
        if len(rows) == len(source) and all(r["shard"] in order for r in rows):
            return [buckets.clip_info(row) for row in rows]
        log.warning("manifest %s does not list exactly the %d records of %d shards: scanning "
                    "them instead", manifest, len(source), len(shard_paths))
    return [_record_info(source[i]) for i in range(len(source))]


def _record_info(record: bytes) -> buckets.ClipInfo | None:
    try:
        meta, video = shards.decode_record(record)
        return buckets.clip_info(meta, video)
    except ValueError as e:        # a malformed record or video (VideoDecodeError)
        log.warning("record unusable for bucketing: %s", e)
        return None


class BucketSteps(grain.MapDataset):
    """Step s -> {"step", "bucket", "slots"}: the bucket the schedule draws for global step s
    and the slots of its global batch that this host reads (buckets.BucketSchedule)."""

    def __init__(self, schedule: buckets.BucketSchedule, shard: grain.sharding.ShardOptions,
                 num_epochs: int | None = None):
        super().__init__()
        self._schedule, self._shard = schedule, shard
        self._length = sys.maxsize if num_epochs is None else schedule.epoch_start(num_epochs)

    def __len__(self) -> int:
        return self._length

    def __str__(self) -> str:
        return f"BucketSteps(host {self._shard.shard_index} of {self._shard.shard_count})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        bucket, slots = self._schedule.host_batch(index, self._shard)
        return {"step": index, "bucket": bucket, "slots": slots}


@functools.lru_cache(maxsize=4)
def _record_source(shard_paths: tuple[str, ...]) -> grain.sources.ArrayRecordDataSource:
    """One reader of the shards per process (loaders are pickled into workers as paths)."""
    return grain.sources.ArrayRecordDataSource(list(shard_paths))


MAX_STAND_INS = 16      # undecodable clips replaced in a row before a batch gives up
READ_THREADS = 2        # host batches loaded at once by each process


@dataclasses.dataclass(frozen=True)
class BucketBatchLoader:
    """A BucketSteps element -> this host's batch of the step's bucket: every slot's clip read,
    a random window decoded at the bucket's frame rate, resized and cropped to its shape (rng
    from (seed, record, bucket epoch, lap)), rotated upright. An undecodable clip is replaced
    by the next clip of the same lap, counted in `skipped_records`. Clip metadata is passed on
    in "meta" for TextFields."""

    shard_paths: tuple[str, ...]
    schedule: buckets.BucketSchedule

    def __call__(self, element: dict) -> dict:
        clips = [self._clip(element["bucket"], slot) for slot in element["slots"]]
        return {"video": np.stack([frames for frames, _, _, _ in clips]),
                "padded_frames": np.array([padded for _, padded, _, _ in clips], np.int32),
                "skipped_records": np.array([skipped for _, _, skipped, _ in clips], np.int32),
                "meta": [meta for _, _, _, meta in clips]}

    def _clip(self, bucket: int, slot: int) -> tuple[np.ndarray, int, int, dict]:
        for offset in range(MAX_STAND_INS + 1):
            record, epoch, lap = self.schedule.clip_at(bucket, slot, offset)
            rng = np.random.default_rng([self.schedule.seed, record, epoch, lap])
            if (decoded := self._decode(record, bucket, rng)) is not None:
                return (*decoded[:2], offset, decoded[2])
        raise RuntimeError(f"{MAX_STAND_INS + 1} undecodable clips in a row in bucket "
                           f"{self.schedule.plan.table.buckets[bucket].name}")

    def _decode(self, record: int, bucket: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, int, dict] | None:
        b = self.schedule.plan.table.buckets[bucket]
        try:
            meta, video = shards.decode_record(_record_source(self.shard_paths)[record])
            frames, padded = decode_to_bucket(meta, video, b, self.schedule.plan.table, rng)
        except ValueError as e:     # a malformed record or video (VideoDecodeError)
            log.warning("replacing record %d of bucket %s: %s", record, b.name, e)
            return None
        return frames, padded, meta


def decode_to_bucket(meta: dict, video: bytes, bucket: buckets.Bucket,
                     table: buckets.BucketTable, rng: np.random.Generator | None
                     ) -> tuple[np.ndarray, int]:
    """uint8 frames [F, h, w, 3] of a clip in `bucket`'s shape and the number of padded frames:
    a window at the table's frame rate, resized and cropped (random with rng, centred without;
    decode.decode_clip), turned upright by the record's `rotation`. Raises ValueError
    (VideoDecodeError) on an undecodable video."""
    info = buckets.clip_info(meta, video)
    return decode.decode_clip(
        video, num_available=info.num_frames, num_frames=bucket.num_frames,
        height=bucket.height, width=bucket.width, rng=rng,
        frame_stride=table.frame_stride(info.fps), rotation=meta.get("rotation") or 0)


@dataclasses.dataclass(frozen=True)
class TextFields:
    """Replaces a batch's per-clip "meta" by the stacked fields of text_fn(meta) (caption
    tokens), or just drops it without a text_fn."""

    text_fn: Callable[[dict], dict[str, np.ndarray]] | None = None

    def __call__(self, batch: dict) -> dict[str, np.ndarray]:
        batch = dict(batch)
        metas = batch.pop("meta")
        if self.text_fn is not None:
            fields = [self.text_fn(meta) for meta in metas]
            batch |= {k: np.stack([f[k] for f in fields]) for k in fields[0]}
        return batch


def make_bucketed_clip_dataset(shard_paths: Sequence[str], *, table: buckets.BucketTable,
                               seed: int, num_epochs: int | None = None, num_workers: int = 0,
                               shard: grain.sharding.ShardOptions | None = None,
                               text_fn: Callable[[dict], dict[str, np.ndarray]] | None = None,
                               manifest: str | None = None,
                               plan: buckets.BucketPlan | None = None) -> grain.IterDataset:
    """The bucketed training input (see the module docstring): host batches whose shape is the
    bucket of each global step. `shard` defaults to this JAX process's; `plan` (default: the
    table applied to the clips' metadata, read from `manifest` or the records) may be passed
    to reuse one."""
    shard = shard or grain.sharding.ShardByJaxProcess()
    plan = plan or buckets.make_plan(table, read_clip_infos(shard_paths, manifest))
    for bucket, members in zip(plan.table.buckets, plan.members):
        if len(members) and bucket.batch_size % shard.shard_count:
            raise ValueError(f"bucket {bucket.name}: global batch {bucket.batch_size} does not "
                             f"split over {shard.shard_count} hosts (buckets.batch_multiple)")
    log.info("buckets: %d clips in %d buckets, %d fit none", sum(map(len, plan.members)),
             sum(1 for m in plan.members if len(m)), plan.rejected)
    schedule = buckets.BucketSchedule(plan, seed)
    ds = BucketSteps(schedule, shard, num_epochs).map(
        BucketBatchLoader(tuple(shard_paths), schedule)).map(TextFields(text_fn))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=2))
    return pipeline.in_workers(ds, num_workers)

"""data_pipelines.bucketed: every step in its bucket's shape, each clip once per epoch, exact
resume (also through grain's checkpoint check and a worker process), stand-ins for undecodable
clips, clip metadata from a manifest, 8 simulated hosts, and a host-count change."""

import json
import os

import grain
import numpy as np
import pytest

from data_pipelines import bucketed, buckets, shards
from vidgen.io import video as video_io

from test_pipeline import _assert_same_batches, _take   # tests/data_pipelines is on sys.path


BUCKETS = dict(resolutions={"s": 32 * 32}, aspect_ratios=("2:3", "1:1", "3:2"),
               num_frames=(1, 5, 9), fps=8.0, token_stride=(4, 8, 8), max_upscale=1.0,
               tokens_per_step=180, batch_multiple=2)
# (height, width, frames, fps, count): landscape 9f, portrait 5f, square 9f at 16 fps.
MIXED = [(32, 48, 10, 8.0, 8), (48, 32, 6, 8.0, 6), (40, 40, 20, 16.0, 4)]


def _mixed_records() -> list[tuple[dict, bytes]]:
    records = []
    for h, w, frames, fps, count in MIXED:
        for _ in range(count):
            i = len(records)
            t, y, x = np.ogrid[:frames, :h, :w]
            rgb = np.broadcast_arrays((5 * x + 9 * t + 13 * i) % 256, (3 * y + 11 * i) % 256,
                                      (x + y + 17 * t) % 256)
            video = video_io.encode_video(np.stack(rgb, -1).astype(np.uint8), fps=fps)
            records.append(({"id": f"m{i:02d}", "num_frames": frames, "fps": fps, "height": h,
                             "width": w}, video))
    return records


@pytest.fixture(scope="module")
def mixed_paths(tmp_path_factory) -> list[str]:
    return shards.write_shards(_mixed_records(), str(tmp_path_factory.mktemp("mixed")), "train",
                               num_shards=3)


def _clip_index(meta: dict) -> dict[str, np.ndarray]:
    return {"index": np.int32(int(meta["id"][1:]))}


def _bucketed(paths, **overrides) -> grain.IterDataset:
    kwargs = dict(table=buckets.BucketTable.from_config(BUCKETS), seed=5, text_fn=_clip_index,
                  shard=grain.sharding.ShardOptions(0, 1)) | overrides
    return bucketed.make_bucketed_clip_dataset(paths, **kwargs)


def test_bucketed_epoch_uses_every_clip_once_in_its_bucket_shape(mixed_paths):
    table = buckets.BucketTable.from_config(BUCKETS)
    plan = buckets.make_plan(table, bucketed.read_clip_infos(mixed_paths))
    names = {table.buckets[k].name: len(m) for k, m in enumerate(plan.members) if len(m)}
    assert names == {"s_3x2_9f": 8, "s_2x3_5f": 6, "s_1x1_9f": 4} and plan.rejected == 0
    steps = bucketed.BucketSteps(buckets.BucketSchedule(plan, 5), grain.sharding.NoSharding(), 1)
    batches = list(_bucketed(mixed_paths, num_epochs=1, plan=plan))
    assert len(batches) == len(steps)
    for batch, step in zip(batches, steps):
        b = table.buckets[step["bucket"]]
        assert batch["video"].shape == (b.batch_size, b.num_frames, b.height, b.width, 3)
        assert batch["index"].shape == (b.batch_size,)
    seen = np.concatenate([b["index"] for b in batches])
    assert sorted(seen.tolist()) == list(range(18))      # 8 + 6 + 4 clips, batches 4, 6, 2
    assert sum(int(b["padded_frames"].sum()) for b in batches) == 0


def test_bucketed_kill_and_resume_replays_exactly(mixed_paths):
    iterator = iter(_bucketed(mixed_paths))
    _take(iterator, 4)
    state = iterator.get_state()
    expected = _take(iterator, 4)                       # an epoch is 5 steps: crosses into 2
    restored = iter(_bucketed(mixed_paths))
    restored.set_state(state)
    _assert_same_batches(_take(restored, 4), expected)


def test_bucketed_grain_checkpoint_check(mixed_paths):
    grain.experimental.assert_equal_output_after_checkpoint(
        _bucketed(mixed_paths, num_epochs=1, text_fn=None))


def test_host_count_change_keeps_every_global_batch(mixed_paths):
    """Documented: step s's global batch is the same on 1 or 2 hosts (host i reads the i-th
    half), and a state saved by any host restores on any host count."""
    whole = _take(iter(_bucketed(mixed_paths)), 6)
    halves = [iter(_bucketed(mixed_paths, shard=grain.sharding.ShardOptions(i, 2)))
              for i in range(2)]
    for want in whole[:3]:
        parts = [next(h) for h in halves]
        for key in want:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), want[key])
    resumed = iter(_bucketed(mixed_paths))               # 1 host, from host 1-of-2's state
    resumed.set_state(halves[1].get_state())
    _assert_same_batches(_take(resumed, 3), whole[3:])


def test_bucketed_worker_process_matches_in_process(mixed_paths):
    want = _take(iter(_bucketed(mixed_paths)), 3)
    iterator = iter(_bucketed(mixed_paths, num_workers=1))
    try:
        _assert_same_batches(_take(iterator, 3), want)
    finally:
        iterator.close()


def test_undecodable_clip_is_replaced_and_counted(tmp_path):
    records = _mixed_records()[:8]                      # the eight 9f landscape clips
    records[3] = (records[3][0], b"\x00not an mp4" * 20)
    paths = shards.write_shards(records, str(tmp_path), "train", num_shards=1)
    batches = list(_bucketed(paths, num_epochs=1))
    assert len(batches) == 2 and all(b["video"].shape == (4, 9, 24, 40, 3) for b in batches)
    assert sum(int(b["skipped_records"].sum()) for b in batches) == 1
    assert 3 not in np.concatenate([b["index"] for b in batches])


def test_clip_infos_from_an_ingest_manifest_match_the_records(mixed_paths, tmp_path):
    rows = []
    for path in mixed_paths:
        for r, record in enumerate(grain.sources.ArrayRecordDataSource([path])):
            meta, _ = shards.decode_record(record)
            rows.append(json.dumps(meta | {"shard": os.path.basename(path), "record": r}))
    manifest = tmp_path / "train.manifest.jsonl"
    manifest.write_text("\n".join(reversed(rows)) + "\n")
    assert bucketed.read_clip_infos(mixed_paths, str(manifest)) == \
        bucketed.read_clip_infos(mixed_paths)


def _simulated_plan() -> buckets.BucketPlan:
    """48 clips (no videos) in three buckets, each a multiple of 8 clips."""
    table = buckets.BucketTable.from_config(BUCKETS | {"batch_multiple": 8,
                                                        "tokens_per_step": 1})
    clips = ([buckets.ClipInfo(10, 8.0, 32, 48)] * 16 + [buckets.ClipInfo(6, 8.0, 48, 32)] * 24
             + [buckets.ClipInfo(20, 16.0, 40, 40)] * 8)
    return buckets.make_plan(table, clips)


def test_eight_hosts_agree_on_buckets_and_cover_each_epoch_once():
    schedule = buckets.BucketSchedule(_simulated_plan(), seed=11)
    hosts = [bucketed.BucketSteps(schedule, grain.sharding.ShardOptions(i, 8), num_epochs=2)
             for i in range(8)]
    assert len({len(h) for h in hosts}) == 1 and len(hosts[0]) == 2 * (16 + 24 + 8) // 8
    for epoch in range(2):
        seen = []
        for step in range(schedule.epoch_start(epoch), schedule.epoch_start(epoch + 1)):
            elements = [h[step] for h in hosts]
            assert len({e["bucket"] for e in elements}) == 1
            for e in elements:
                assert len(e["slots"]) == 1            # 8 clips per step, one per host
                seen += [schedule.clip_at(e["bucket"], slot)[0] for slot in e["slots"]]
        assert sorted(seen) == list(range(48))          # disjoint, and every clip once

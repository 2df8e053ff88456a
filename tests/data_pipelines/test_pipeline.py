"""data_pipelines.pipeline: shapes, determinism, exact resume, host sharding, corrupt records."""

import logging

import grain
import numpy as np
import pytest
from array_record.python import array_record_module

from data_pipelines import decode, pipeline, shards
from vidgen.io import video as video_io

NUM_CLIPS = 16
SHORT_CLIP = 3  # has fewer frames than the training window
SHAPE = dict(num_frames=5, height=16, width=24)


def _clip(index: int) -> np.ndarray:
    """A small moving pattern, landscape or portrait by parity, distinct per clip."""
    num_frames = 4 if index == SHORT_CLIP else 10
    height, width = (32, 48) if index % 2 else (48, 32)
    t, y, x = np.ogrid[:num_frames, :height, :width]
    rgb = np.broadcast_arrays((4 * x + 9 * t + 15 * index) % 256, (3 * y + 7 * index) % 256,
                              (2 * (x + y) + 20 * t) % 256)
    return np.stack(rgb, axis=-1).astype(np.uint8)


def _records(count: int) -> list[tuple[dict, bytes]]:
    return [({"id": f"clip{i:02d}", "num_frames": len(_clip(i))},
             video_io.encode_video(_clip(i), fps=8.0)) for i in range(count)]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("clips")
    return shards.write_shards(_records(NUM_CLIPS), str(out), "train", num_shards=4)


def _dataset(paths, **overrides) -> grain.IterDataset:
    kwargs = dict(SHAPE, batch_size=4, seed=7) | overrides
    return pipeline.make_clip_dataset(paths, **kwargs)


def _take(iterator, count: int) -> list[dict]:
    return [next(iterator) for _ in range(count)]


def _assert_same_batches(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batch_shapes_and_dtypes(paths):
    batch = next(iter(_dataset(paths)))
    assert batch["video"].shape == (4, 5, 16, 24, 3) and batch["video"].dtype == np.uint8
    assert batch["padded_frames"].shape == (4,) and batch["padded_frames"].dtype == np.int32
    assert batch["skipped_records"].shape == (4,) and batch["skipped_records"].dtype == np.int32


def test_one_epoch_sees_every_clip_once_with_short_clip_padded(paths):
    batches = list(_dataset(paths, num_epochs=1))
    assert len(batches) == NUM_CLIPS // 4
    padded = np.concatenate([b["padded_frames"] for b in batches])
    assert sorted(padded.tolist()) == [0] * (NUM_CLIPS - 1) + [1]  # 4-frame clip, 5-frame window
    videos = np.concatenate([b["video"] for b in batches])
    short = videos[padded == 1][0]
    np.testing.assert_array_equal(short[-1], short[-2])


def test_same_seed_same_stream_other_seed_differs(paths):
    first = _take(iter(_dataset(paths)), 3)
    _assert_same_batches(_take(iter(_dataset(paths)), 3), first)
    other = _take(iter(_dataset(paths, seed=8)), 3)
    assert any(not np.array_equal(a["video"], b["video"]) for a, b in zip(first, other))


def test_restored_iterator_replays_exactly_across_epoch_boundary(paths):
    iterator = iter(_dataset(paths))
    _take(iterator, 3)
    state = iterator.get_state()
    expected = _take(iterator, 3)  # an epoch is 4 batches: this crosses into epoch 2
    restored = iter(_dataset(paths))
    restored.set_state(state)
    _assert_same_batches(_take(restored, 3), expected)


def test_grain_checkpoint_check_on_tiny_pipeline(paths):
    grain.experimental.assert_equal_output_after_checkpoint(
        _dataset(paths[:2], batch_size=2, num_epochs=1))


def test_restore_refuses_other_worker_count(paths):
    state = iter(_dataset(paths)).get_state()
    with pytest.raises(ValueError, match="num_workers=0"):
        iter(_dataset(paths, num_workers=2)).set_state(state)


def test_worker_process_stream_matches_in_process_and_resumes(paths):
    want = _take(iter(_dataset(paths)), 3)
    iterator = iter(_dataset(paths, num_workers=1))
    try:
        _assert_same_batches(_take(iterator, 1), want[:1])
        state = iterator.get_state()
        _assert_same_batches(_take(iterator, 2), want[1:])
    finally:
        iterator.close()
    restored = iter(_dataset(paths, num_workers=1))
    try:
        restored.set_state(state)
        _assert_same_batches(_take(restored, 2), want[1:])
    finally:
        restored.close()


def _ids(records: grain.MapDataset) -> list[tuple[int, str]]:
    """(epoch, clip id) for each record of a host's stream."""
    return [(index // NUM_CLIPS, shards.decode_record(record)[0]["id"])
            for index, record in (records[i] for i in range(len(records)))]


@pytest.mark.parametrize("shuffle", [True, False])
def test_eight_hosts_read_disjoint_clips_covering_each_epoch_once(paths, shuffle):
    records = pipeline.tagged_records(paths)
    streams = [_ids(pipeline.host_records(
        records, shard=grain.sharding.ShardOptions(host, 8, drop_remainder=True), seed=3,
        shuffle=shuffle, num_epochs=2)) for host in range(8)]
    for epoch in range(2):
        seen = [clip for stream in streams for e, clip in stream if e == epoch]
        assert sorted(seen) == [f"clip{i:02d}" for i in range(NUM_CLIPS)]
    assert all(len(stream) == 2 * NUM_CLIPS // 8 for stream in streams)


def test_host_shards_drop_the_remainder(paths):
    records = pipeline.tagged_records(paths)[:13]
    sizes = {len(pipeline.host_records(records, shard=grain.sharding.ShardOptions(h, 4, True),
                                       seed=0, shuffle=True, num_epochs=1)) for h in range(4)}
    assert sizes == {3}


def test_crop_and_window_depend_on_epoch_not_stream_position(paths):
    records = pipeline.tagged_records(paths)
    decoder = pipeline.ClipDecoder(NUM_CLIPS, seed=0, **SHAPE)
    _, record = records[0]
    first = decoder((0, record))["video"]
    np.testing.assert_array_equal(decoder((0, record))["video"], first)
    later = [decoder((epoch * NUM_CLIPS, record))["video"] for epoch in range(1, 6)]
    assert any(not np.array_equal(v, first) for v in later)


@pytest.fixture(scope="module")
def corrupt_paths(tmp_path_factory) -> list[str]:
    out = str(tmp_path_factory.mktemp("corrupt"))
    records = _records(6)
    records[2] = ({"id": "truncated"}, records[2][1][:100])
    records[4] = ({"id": "garbage", "num_frames": 10}, b"\x00not an mp4" * 10)
    paths = shards.write_shards(records, out, "train", num_shards=1)
    bad_header = shards.shard_path(out, "bad", 0, 1)
    writer = array_record_module.ArrayRecordWriter(bad_header, "group_size:1")
    writer.write(b"\xff\xff\xff\x00{")
    writer.close()
    return paths + [bad_header]


def test_corrupt_records_are_skipped_counted_and_named(corrupt_paths, caplog):
    with caplog.at_level(logging.WARNING, logger=pipeline.__name__):
        batches = list(_dataset(corrupt_paths, batch_size=1, shuffle=False, num_epochs=1))
    assert len(batches) == 4  # 7 records: truncated mp4, garbage mp4, malformed record (last)
    # The malformed record is last: no later clip carries its count in a finite stream.
    assert sum(int(b["skipped_records"].sum()) for b in batches) == 2
    assert "'truncated'" in caplog.text and "'garbage'" in caplog.text
    assert "record 6" in caplog.text


def _id_tokens(meta: dict) -> dict[str, np.ndarray]:
    """A stand-in tokenizer: the clip id's digits as int32 tokens."""
    return {"text_ids": np.array([int(c) for c in meta["id"][-2:]], np.int32)}


def test_text_fn_adds_per_clip_fields_from_record_metadata(paths):
    plain = next(iter(_dataset(paths)))
    batch = next(iter(_dataset(paths, text_fn=_id_tokens)))
    np.testing.assert_array_equal(batch["video"], plain["video"])
    assert batch["text_ids"].shape == (4, 2) and batch["text_ids"].dtype == np.int32
    ids = {tuple(row) for row in batch["text_ids"]}
    assert all(0 <= 10 * a + b < NUM_CLIPS for a, b in ids) and len(ids) == 4


def test_eval_clips_are_first_decodable_centre_crops(corrupt_paths):
    clips = pipeline.load_eval_clips(corrupt_paths, num_clips=4, **SHAPE)
    assert clips["id"] == ["clip00", "clip01", "clip03", "clip05"]
    assert [m["id"] for m in clips["meta"]] == clips["id"]
    assert clips["video"].shape == (4, 5, 16, 24, 3) and clips["video"].dtype == np.uint8
    _, stored = shards.decode_record(grain.sources.ArrayRecordDataSource(corrupt_paths)[1])
    want, _ = decode.decode_clip(stored, num_available=10, **SHAPE)  # rng=None: centre choices
    np.testing.assert_array_equal(clips["video"][1], want)
    again = pipeline.load_eval_clips(corrupt_paths, num_clips=4, **SHAPE)
    np.testing.assert_array_equal(again["video"], clips["video"])
    with pytest.raises(ValueError, match="only 4 decodable"):
        pipeline.load_eval_clips(corrupt_paths, num_clips=5, **SHAPE)
    fewer = pipeline.load_eval_clips(corrupt_paths, num_clips=5, allow_fewer=True, **SHAPE)
    assert fewer["id"] == clips["id"]             # every decodable clip, no error
    np.testing.assert_array_equal(fewer["video"], clips["video"])


def test_bad_arguments_name_the_culprit(paths):
    with pytest.raises(ValueError, match="batch_size=0"):
        _dataset(paths, batch_size=0)
    with pytest.raises(ValueError, match="shard_paths"):
        _dataset([])

"""data_pipelines.shards: record format round trip and shard files readable through grain."""

import concurrent.futures
import threading
import time

import grain
import numpy as np
import pytest

from data_pipelines import shards


def test_record_round_trip_keeps_bytes_and_unicode():
    video = b"\x00\x01mp4\x00\x00"  # trailing NULs must survive
    meta = {"id": "clip-é", "caption": "a red ball ☂", "fps": 12.5}
    assert shards.decode_record(shards.encode_record(meta, video)) == (meta, video)


@pytest.mark.parametrize("record", [b"\x01", b"\xff\x00\x00\x00{}", b"\x02\x00\x00\x00\xff\xfe"])
def test_malformed_records_raise_value_error(record):
    with pytest.raises(ValueError):
        shards.decode_record(record)


def test_write_and_find_shards(tmp_path):
    records = [({"id": str(i)}, bytes([i]) * (i + 1)) for i in range(7)]
    paths = shards.write_shards(records, str(tmp_path / "shards"), "train", num_shards=3)
    assert shards.find_shards(str(tmp_path), "train") == paths
    source = grain.sources.ArrayRecordDataSource(paths)
    got = sorted((shards.decode_record(source[i]) for i in range(len(source))),
                 key=lambda r: int(r[0]["id"]))
    assert got == records
    with pytest.raises(FileNotFoundError, match="eval"):
        shards.find_shards(str(tmp_path), "eval")


def test_latent_payloads_parse_one_thread_at_a_time(monkeypatch):
    """array_from_bytes never runs np.load (an ast parse of the .npy header) in two threads at
    once: concurrent parses break CPython 3.11's AST constructor, and grain reads in threads."""
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    data = shards.array_to_bytes(array)
    inside, most, real_load = [0], [0], np.load
    counter = threading.Lock()

    def slow_load(*args, **kwargs):
        with counter:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.01)                 # long enough that unserialised calls overlap
        try:
            return real_load(*args, **kwargs)
        finally:
            with counter:
                inside[0] -= 1

    monkeypatch.setattr(np, "load", slow_load)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: shards.array_from_bytes(data), range(16)))
    assert most[0] == 1
    for result in results:
        np.testing.assert_array_equal(result, array)

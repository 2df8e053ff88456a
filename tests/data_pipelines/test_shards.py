"""data_pipelines.shards: record format round trip and shard files readable through grain."""

import grain
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

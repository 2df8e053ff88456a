"""data_pipelines.tfds_builder: clip shards as TFDS, built and read without TensorFlow."""

import json
import sys

import grain
import pytest
import tensorflow_datasets as tfds

from data_pipelines import shards, synthetic_world, tfds_builder
from vidgen.io.video import read_video


def shard_records(path, split: str) -> list[tuple[dict, bytes]]:
    """Every record of a split's shards, in file order (what the TFDS split must hold)."""
    source = grain.sources.ArrayRecordDataSource(shards.find_shards(str(path), split))
    return [shards.decode_record(source[i]) for i in range(len(source))]


def assert_example_is_record(example: dict, record: tuple[dict, bytes]) -> None:
    """A TFDS example carries exactly one shard record: its bytes, caption, size and metadata."""
    meta, video = record
    assert example["video"] == video
    assert example["id"].decode() == meta["id"]
    assert example["caption"].decode() == meta["caption"]
    assert json.loads(example["metadata"]) == meta
    for key in ("fps", "num_frames", "width", "height", "duration_s"):
        assert example[key] == pytest.approx(meta[key]), key


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]


def test_build_and_read_back_without_tensorflow(tmp_path):
    out = tmp_path / "world"
    synthetic_world.generate_world(str(out), 3, 2, seed=1, base_size=32, num_shards=2,
                                   build_tfds=True, show_progress=False)
    sources = tfds.data_source("clip_shards", data_dir=str(out / "tfds"))
    assert {split: len(source) for split, source in sources.items()} == {"train": 3, "eval": 2}
    for split in ("train", "eval"):
        records = shard_records(out, split)
        for i, record in enumerate(records):
            assert_example_is_record(sources[split][i], record)
    # The world's own files agree: same clips, scenes and captions.
    by_id = {row["id"]: row for row in _rows(out)}
    example = sources["eval"][1]
    row = by_id[example["id"].decode()]
    assert example["video"] == (out / row["path"]).read_bytes()
    assert json.loads(example["metadata"])["scene"] == row["scene"]
    frames = read_video(example["video"])
    assert frames.shape == (row["num_frames"], row["height"], row["width"], 3)
    assert grain.MapDataset.source(sources["eval"])[1]["id"] == example["id"]
    assert "tensorflow" not in sys.modules


def test_rebuild_replaces_old_clips_and_files_alone_suffice(tmp_path):
    out = tmp_path / "world"
    synthetic_world.generate_world(str(out), 2, 0, seed=1, base_size=32, show_progress=False)
    tfds_builder.build(str(out))
    synthetic_world.generate_world(str(out), 2, 0, seed=2, base_size=32, show_progress=False)
    builder_dir = tfds_builder.build(str(out))
    # A reader that never imports the builder class: TFDS reconstructs it from the files.
    source = tfds.builder_from_directory(builder_dir).as_data_source()["train"]
    records = shard_records(out, "train")
    assert len(source) == len(records) == 2
    for i, record in enumerate(records):
        assert record[0]["scene"]["seed"] == 2
        assert_example_is_record(source[i], record)


def test_build_without_shards_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="shards"):
        tfds_builder.build(str(tmp_path))

"""data_pipelines.tfds_synthetic: the synthetic world as TFDS, built and read without TensorFlow."""

import json
import sys

import grain
import pytest
import tensorflow_datasets as tfds

from data_pipelines import synthetic_world, tfds_synthetic
from vidgen.io.video import read_video


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]


def _assert_matches(example: dict, row: dict, out) -> None:
    assert example["video"] == (out / row["path"]).read_bytes()
    assert example["id"].decode() == row["id"]
    assert example["caption"].decode() == row["caption"]
    assert example["short_caption"].decode() == row["short_caption"]
    assert json.loads(example["scene"]) == row["scene"]
    for key in ("fps", "num_frames", "width", "height", "duration_s"):
        assert example[key] == pytest.approx(row[key]), key
    frames = read_video(example["video"])
    assert frames.shape == (row["num_frames"], row["height"], row["width"], 3)


def test_build_and_read_back_without_tensorflow(tmp_path):
    out = tmp_path / "world"
    synthetic_world.generate_world(str(out), 3, 2, seed=1, base_size=32, num_shards=1,
                                   build_tfds=True, show_progress=False)
    rows = _rows(out)
    sources = tfds.data_source("synthetic_world", data_dir=str(out / "tfds"))
    assert {split: len(source) for split, source in sources.items()} == {"train": 3, "eval": 2}
    examples = [sources["train"][i] for i in range(3)] + [sources["eval"][i] for i in range(2)]
    for example, row in zip(examples, rows):  # same order as captions.jsonl
        _assert_matches(example, row, out)
    assert grain.MapDataset.source(sources["eval"])[1]["id"] == b"eval-000001"
    assert "tensorflow" not in sys.modules


def test_rebuild_replaces_old_clips_and_files_alone_suffice(tmp_path):
    out = tmp_path / "world"
    synthetic_world.generate_world(str(out), 2, 0, seed=1, base_size=32, show_progress=False)
    tfds_synthetic.build(str(out))
    synthetic_world.generate_world(str(out), 2, 0, seed=2, base_size=32, show_progress=False)
    builder_dir = tfds_synthetic.build(str(out))
    # A reader that never imports the builder class: TFDS reconstructs it from the files.
    source = tfds.builder_from_directory(builder_dir).as_data_source()["train"]
    for i, row in enumerate(_rows(out)):
        assert row["scene"]["seed"] == 2
        _assert_matches(source[i], row, out)


def test_build_without_a_world_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions.jsonl"):
        tfds_synthetic.build(str(tmp_path))

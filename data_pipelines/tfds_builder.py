"""Clip shards as a TFDS dataset (array_record files), built and read without TensorFlow.

Builds from any dataset folder DIR holding DIR/shards/SPLIT-*.array_record files in the
data_pipelines.shards record format: the synthetic world (data_pipelines.synthetic_world) and
ingested folders of videos (data_pipelines.ingest) alike. One TFDS split per shard prefix
("train", "eval", ...), with the records in shard-file order. Each example holds the encoded
video as raw bytes (tfds.features.Video would need TensorFlow; decode the bytes with
vidgen.io.video.read_video), its caption, its size and rate, and the record's whole metadata
as JSON (the synthetic world's scene and short caption, an ingested clip's captions, rotation,
codec ...):

    ds = tfds.data_source("clip_shards", data_dir="DIR/tfds")  # grain-compatible sources
    example = ds["train"][0]  # {"video": b"...mp4...", "caption": b"A large ...", "metadata": ...}

Text features come back as UTF-8 bytes. TFDS stores its own copy of the records under DIR/tfds.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from etils import epath

from data_pipelines import shards

_SHARD_NAME = re.compile(r"^(?P<split>.+)-\d{5}-of-\d{5}\.array_record$")
_SCALARS = {"fps": np.float32, "num_frames": np.int32, "width": np.int32, "height": np.int32,
            "duration_s": np.float32}


def find_splits(source_dir: str) -> dict[str, list[str]]:
    """The shard files of each split under `source_dir/shards`, in order."""
    splits = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(source_dir, "shards", "*.array_record"))):
        if match := _SHARD_NAME.match(os.path.basename(path)):
            splits[match["split"]].append(path)
    if not splits:
        raise FileNotFoundError(f"no clip shards under {os.path.join(source_dir, 'shards')}: run "
                                "data_pipelines.synthetic_world or data_pipelines.ingest first")
    return dict(splits)


class ClipShards(tfds.core.GeneratorBasedBuilder):
    """TFDS builder over the clip shards of one dataset folder."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Clips as raw video bytes with caption, size, rate and metadata."}

    def __init__(self, *, source_dir: str | None = None, **kwargs: Any):
        """`source_dir` is the dataset folder to build from; reading needs none."""
        self._source_dir = source_dir
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file. TFDS's default resolves builders inside packages through
        importlib_resources, which it does not install; this is its own fallback's answer."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly: dataset_info_from_configs() needs a builder defined in a package
        # with metadata files, which this one-file builder does not ship.
        features = tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "video": tfds.features.Scalar(np.object_, doc="encoded container bytes (mp4, ...)"),
            "caption": tfds.features.Text(),
            "metadata": tfds.features.Text(doc="the shard record's metadata as JSON"),
            **{name: tfds.features.Scalar(dtype) for name, dtype in _SCALARS.items()},
        })
        return tfds.core.DatasetInfo(
            builder=self, features=features, disable_shuffling=True,
            description="Captioned clips from data_pipelines.shards files.")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # nothing to download: the shards are local files
        if self._source_dir is None:
            raise ValueError("ClipShards needs source_dir= (a folder with shards/) to build")
        return {split: self._generate_examples(paths)
                for split, paths in find_splits(self._source_dir).items()}

    def _generate_examples(self, paths: list[str]) -> Iterator[tuple[int, dict]]:
        index = 0
        for path in paths:
            reader = array_record_module.ArrayRecordReader(path)
            try:
                for _ in range(reader.num_records()):  # one record in memory at a time
                    meta, video = shards.decode_record(reader.read())
                    yield index, {"id": meta["id"], "video": video, "caption": meta["caption"],
                                  "metadata": json.dumps(meta, ensure_ascii=False),
                                  **{name: meta[name] for name in _SCALARS}}
                    index += 1
            finally:
                reader.close()


def build(source_dir: str, data_dir: str | None = None) -> str:
    """(Re)builds the TFDS dataset of a folder's clip shards; returns the dataset's directory.

    `data_dir` defaults to `source_dir/tfds`; read it back with
    `tfds.data_source("clip_shards", data_dir=data_dir)`.
    """
    data_dir = data_dir or os.path.join(source_dir, "tfds")
    builder = ClipShards(source_dir=source_dir, data_dir=data_dir, file_format="array_record")
    mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD  # a rerun must not serve stale clips
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    return os.fspath(builder.data_dir)

"""The synthetic world as a TFDS dataset (array_record files), readable without TensorFlow.

Built from a directory written by data_pipelines.synthetic_world (its captions.jsonl and
videos/), one split per split there ("train", "eval"), in the JSONL's order. Each example holds
the encoded mp4 as raw bytes (tfds.features.Video would need TensorFlow; decode the bytes with
vidgen.io.video.read_video), its captions, the scene JSON and the clip's size and rate:

    ds = tfds.data_source("synthetic_world", data_dir="DIR/tfds")  # grain-compatible sources
    example = ds["train"][0]   # {"video": b"...mp4...", "caption": b"A large ...", ...}

Text features come back as UTF-8 bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath


class SyntheticWorld(tfds.core.GeneratorBasedBuilder):
    """TFDS builder over the clips of one generated synthetic world."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Clips as raw mp4 bytes with captions and scene JSON."}

    def __init__(self, *, source_dir: str | None = None, **kwargs: Any):
        """`source_dir` is the synthetic_world output to build from; reading needs none."""
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
            "video": tfds.features.Scalar(np.object_, doc="h264 mp4 container bytes"),
            "caption": tfds.features.Text(),
            "short_caption": tfds.features.Text(),
            "scene": tfds.features.Text(doc="scene JSON (see data_pipelines.world_scene)"),
            "fps": tfds.features.Scalar(np.float32),
            "num_frames": tfds.features.Scalar(np.int32),
            "width": tfds.features.Scalar(np.int32),
            "height": tfds.features.Scalar(np.int32),
            "duration_s": tfds.features.Scalar(np.float32),
        })
        return tfds.core.DatasetInfo(
            builder=self, features=features, disable_shuffling=True,
            description="Procedurally rendered, captioned clips of vidgen's synthetic world.")

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # nothing to download: the clips are local files
        if self._source_dir is None:
            raise ValueError("SyntheticWorld needs source_dir= (a synthetic_world output) to build")
        path = os.path.join(self._source_dir, "captions.jsonl")
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {path}: run data_pipelines.synthetic_world first")
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        splits = dict.fromkeys(row["split"] for row in rows)
        return {split: self._generate_examples([r for r in rows if r["split"] == split])
                for split in splits}

    def _generate_examples(self, rows: list[dict]) -> Iterator[tuple[str, dict]]:
        for row in rows:
            with open(os.path.join(self._source_dir, row["path"]), "rb") as f:
                video = f.read()
            yield row["id"], {
                "id": row["id"], "video": video, "caption": row["caption"],
                "short_caption": row["short_caption"], "scene": json.dumps(row["scene"]),
                "fps": row["fps"], "num_frames": row["num_frames"], "width": row["width"],
                "height": row["height"], "duration_s": row["duration_s"]}


def build(source_dir: str, data_dir: str | None = None) -> str:
    """(Re)builds the TFDS dataset of a synthetic_world output; returns the dataset's directory.

    `data_dir` defaults to `source_dir/tfds`; read it back with
    `tfds.data_source("synthetic_world", data_dir=data_dir)`.
    """
    data_dir = data_dir or os.path.join(source_dir, "tfds")
    builder = SyntheticWorld(source_dir=source_dir, data_dir=data_dir, file_format="array_record")
    mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD  # a rerun must not serve stale clips
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    return os.fspath(builder.data_dir)

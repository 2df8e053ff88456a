r"""Encodes clip shards once with a trained VAE (and, optionally, a frozen text encoder), so that
DiT training reads latents, not video.

    python -m data_pipelines.precompute --checkpoint=runs/demo/vae_tiny \
        --shards=runs/demo/world --num_frames=5 --height=64 --width=64 --frame_stride=0 \
        --out=runs/demo/latents
    python -m data_pipelines.precompute --checkpoint=runs/vae --shards=runs/data \
        --config=launch/configs/dit_tiny.py:buckets --out=runs/latents_bucketed

--checkpoint is the workdir of a finished vae run; --shards is a dataset folder (its
shards/{split}-*), a folder of {split}-*.array_record files, or a glob of shard files. Clip
shapes: one fixed shape (--num_frames, --height, --width, --frame_stride), or with --config
each clip's bucket of the config's data.buckets table (data_pipelines/buckets.py), at the
table's frame rate: latents of many sizes, for packing mode (data_pipelines/packing.py).
Each clip is decoded the deterministic way (centre window, centre crop), encoded to the
posterior mode and normalised with the VAE run's per-channel statistics: exactly the latents the
dit task computes on the fly. With --text_encoder (a Hugging Face T5/UMT5 encoder folder) and
--tokenizer, each caption's frozen-encoder features are stored too ("context" [Lt, D]); the dit
task's prepare_batch then skips the text encoder. One fixed window per clip: the price of
encoding once is that training sees no temporal or spatial crop augmentation.

Output: OUT/shards/{split}-*.array_record; a record holds the clip's metadata plus "latents":
{"vae_workdir", "num_frames", "height", "width", "frame_stride", "bucket", "text_encoder"} and,
as payload, the latents [t, h, w, C] as .npy, or an .npz of "latents" and "context".
`pipeline.make_latent_dataset` and `packing.make_packed_latent_dataset` read them
(`pipeline.read_latent_payload`). --vae_workdir and --data are the older names of --checkpoint
and --shards.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import os
import time
from collections.abc import Iterator, Sequence

import grain
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import app, flags
from ml_collections import config_flags

from data_pipelines import bucketed, buckets, pipeline, shards
from vidgen.train.tasks import dit as dit_task


def resolve_shards(spec: str, split: str) -> list[str]:
    """Shard files of `split` from a dataset folder, a folder of shards or a glob."""
    if os.path.isdir(os.path.join(spec, "shards")):
        return shards.find_shards(spec, split)
    pattern = os.path.join(spec, f"{split}-*.array_record") if os.path.isdir(spec) else spec
    if not (paths := sorted(glob.glob(pattern))):
        raise FileNotFoundError(f"no shard files match {pattern}")
    return paths


@dataclasses.dataclass(frozen=True)
class ClipShapes:
    """Each clip's shape: one fixed shape, or its bucket in `table` when one is given."""

    num_frames: int = 9
    height: int = 64
    width: int = 64
    frame_stride: int = 1
    table: buckets.BucketTable | None = None

    def decoded(self, paths: Sequence[str], counts: dict) -> Iterator[tuple[dict, np.ndarray,
                                                                            dict]]:
        """(metadata, centre-cropped uint8 frames, clip size) of every usable clip in record
        order; counts["skipped"] gets the undecodable ones, counts["unfit"] those no bucket
        takes."""
        source = grain.sources.ArrayRecordDataSource(list(paths))
        fixed = pipeline.ClipDecoder(len(source), self.num_frames, self.height, self.width,
                                     seed=None, frame_stride=self.frame_stride)
        for index in range(len(source)):
            if self.table is None:
                if (clip := fixed.decode((index, source[index]))) is None:
                    counts["skipped"] += 1
                    continue
                size = {"num_frames": self.num_frames, "height": self.height,
                        "width": self.width, "frame_stride": self.frame_stride, "bucket": None}
                yield clip[0], clip[1], size
            elif (clip := self._bucketed(source[index], counts)) is not None:
                yield clip

    def _bucketed(self, record: bytes, counts: dict) -> tuple[dict, np.ndarray, dict] | None:
        try:
            meta, video = shards.decode_record(record)
            info = buckets.clip_info(meta, video)
            if (k := self.table.assign(info)) is None:
                counts["unfit"] += 1
                return None
            b = self.table.buckets[k]
            frames, _ = bucketed.decode_to_bucket(meta, video, b, self.table, rng=None)
        except ValueError:             # malformed record or undecodable video
            counts["skipped"] += 1
            return None
        return meta, frames, {"num_frames": b.num_frames, "height": b.height, "width": b.width,
                              "frame_stride": self.table.frame_stride(info.fps),
                              "bucket": b.name}


@dataclasses.dataclass(frozen=True)
class FrozenText:
    """A frozen pretrained text encoder and its tokenizer: captions -> features [B, Lt, D]."""

    encoder_path: str
    tokenizer_path: str
    max_length: int = 512
    caption_field: str = "caption"

    def encode_fn(self):
        """metas -> float32 features [B, Lt, D] of their captions."""
        encode = dit_task.caption_encoder(self.encoder_path, self.tokenizer_path, self.max_length)
        return lambda metas: encode([m[self.caption_field] for m in metas])


def _payload(latents: np.ndarray, context: np.ndarray | None) -> bytes:
    if context is None:
        return shards.array_to_bytes(latents)
    buffer = io.BytesIO()
    np.savez(buffer, latents=np.asarray(latents, np.float32), context=context)
    return buffer.getvalue()


def precompute(vae_workdir: str, shard_paths: Sequence[str], out: str, *, split: str = "train",
               shapes: ClipShapes = ClipShapes(), text: FrozenText | None = None,
               batch_size: int = 8, num_shards: int = 4, show_progress: bool = True) -> dict:
    """Encodes every usable clip of the shards (clips of one shape batched together); returns
    counts and timing."""
    start, counts = time.perf_counter(), {"skipped": 0, "unfit": 0}
    encode = dit_task.latent_encoder(vae_workdir)
    encode_text = None if text is None else text.encode_fn()
    queues: dict[tuple, list] = {}
    records = []

    def flush(queue: list) -> None:
        z = np.asarray(encode(jnp.asarray(np.stack([frames for _, frames, _ in queue]))))
        context = None if encode_text is None else encode_text([m for m, _, _ in queue])
        for i, (meta, _, size) in enumerate(queue):
            info = {**size, "vae_workdir": vae_workdir,
                    "text_encoder": None if text is None else text.encoder_path}
            records.append(({**meta, "latents": info},
                            _payload(z[i], None if context is None else context[i])))
        queue.clear()

    clips = shapes.decoded(shard_paths, counts)
    for meta, frames, size in tqdm.tqdm(clips, unit="clip", desc=f"encoding {split}",
                                        disable=not show_progress):
        queue = queues.setdefault(frames.shape, [])
        queue.append((meta, frames, size))
        if len(queue) == batch_size:
            flush(queue)
    for queue in queues.values():
        if queue:
            flush(queue)
    if not records:
        raise ValueError(f"no usable clip in {len(shard_paths)} shard files ({counts})")
    shards.write_shards(records, f"{out}/shards", split, min(num_shards, len(records)))
    return {"clips": len(records), **counts, "seconds": time.perf_counter() - start}


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The CLI's flags (defined only when run as a program)."""
    flags.DEFINE_string("checkpoint", None, "Workdir of a finished vae run.", required=True,
                        flag_values=fv)
    flags.DEFINE_alias("vae_workdir", "checkpoint", flag_values=fv)
    flags.DEFINE_string("shards", None, "Dataset folder (with shards/), folder of shards or glob.",
                        required=True, flag_values=fv)
    flags.DEFINE_alias("data", "shards", flag_values=fv)
    flags.DEFINE_string("split", "train", "Which split's shards to encode.", flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder (gets shards/{split}-*).", required=True,
                        flag_values=fv)
    config_flags.DEFINE_config_file("config", None, "A config whose data.buckets gives each "
                                    "clip's shape (instead of the fixed shape flags).",
                                    flag_values=fv)
    for name, default, help_text in (
            ("num_frames", 9, "Fixed shape: frames per clip (1 + 4k)."),
            ("height", 64, "Fixed shape: clip height in pixels."),
            ("width", 64, "Fixed shape: clip width in pixels."),
            ("frame_stride", 1, "Fixed shape: every n-th frame; 0 spreads them."),
            ("max_length", 512, "Caption tokens for --text_encoder."),
            ("batch_size", 8, "Clips per encoder call."),
            ("num_shards", 4, "Output shards (at most).")):
        flags.DEFINE_integer(name, default, help_text, flag_values=fv)
    flags.DEFINE_string("text_encoder", None, "Hugging Face T5/UMT5 encoder folder: also store "
                        "each caption's frozen features.", flag_values=fv)
    flags.DEFINE_string("tokenizer", None, "Sentencepiece model of --text_encoder.",
                        flag_values=fv)
    flags.DEFINE_string("caption_field", "caption", "Metadata field holding the caption.",
                        flag_values=fv)


def run(f: flags.FlagValues) -> dict:
    """`precompute` as the parsed flags `f` ask; returns its counts and timing."""
    if bool(f.text_encoder) != bool(f.tokenizer):
        raise app.UsageError("--text_encoder and --tokenizer go together")
    table = None if f.config is None else buckets.BucketTable.from_config(f.config.data.buckets)
    shapes = ClipShapes(f.num_frames, f.height, f.width, f.frame_stride, table)
    text = (FrozenText(f.text_encoder, f.tokenizer, f.max_length, f.caption_field)
            if f.text_encoder else None)
    return precompute(f.checkpoint, resolve_shards(f.shards, f.split), f.out, split=f.split,
                      shapes=shapes, text=text, batch_size=f.batch_size,
                      num_shards=f.num_shards)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    stats = run(flags.FLAGS)
    print(f"encoded {stats['clips']} clips ({stats['skipped']} undecodable, {stats['unfit']} "
          f"fitting no bucket) to {flags.FLAGS.out}/shards in {stats['seconds']:.1f} s")


if __name__ == "__main__":
    define_flags()
    app.run(main)

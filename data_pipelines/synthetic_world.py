r"""The synthetic world: vidgen's embedded dataset of procedurally rendered, captioned clips.

Each clip shows 1-3 shapes (ball, square, triangle, star, ring; 8 colours; small or large)
that stay still, move, fall and bounce, grow, shrink or rotate, on a solid or gradient
background, sometimes with a camera pan or one object passing behind another. Clips have mixed
native durations (1-8 s), frame rates (8-24 fps) and aspect ratios (16:9 ... 21:9) around a
pixel budget of base_size**2 (--aspect fixes one ratio, e.g. 1:1 so that a square training
crop keeps the whole frame and the captions stay true). Clip i of seed s is a pure function of
(s, i, base_size, aspect), whatever else is generated. Every clip carries a dense caption, a
short caption and its scene as JSON; `world_render.object_tracks(scene)` recomputes per-frame
object tracks from that scene.

The train split never shows a held-out (colour, shape) pair (world_scene.HELDOUT_PAIRS); every
clip of the heldout split has one on its subject: prompts for testing composition. The eval split
draws from the whole vocabulary, as it always has (it is never trained on).

    python -m data_pipelines.synthetic_world --out=runs/world --num_clips=200 \
        --num_eval_clips=16 --num_heldout_prompts=16 --seed=0 --base_size=128 --num_shards=4

writes DIR/videos/{id}.mp4, DIR/captions.jsonl (one JSON object per train and eval clip: its
"split", captions, scene, ...), DIR/heldout.jsonl (the same for the heldout split: prompts with
the scenes a grader checks them against; empty without --num_heldout_prompts), DIR/shards/
{train,eval,heldout}-*.array_record (data_pipelines.shards records) and, with --tfds, DIR/tfds/.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
import time
from collections.abc import Iterator
from typing import IO

import numpy as np
import tqdm
from absl import app, flags

from data_pipelines import shards
from data_pipelines.world_captions import dense_caption, short_caption
from data_pipelines.world_render import render_clip
from data_pipelines.world_scene import ASPECTS, Scene, sample_scene
from vidgen.io.video import encode_video

# Clip j of the eval (heldout) split is clip EVAL_INDEX_OFFSET + j (HELDOUT_INDEX_OFFSET + j)
# of the seed, so no two splits share a clip.
EVAL_INDEX_OFFSET = 1_000_000_000
HELDOUT_INDEX_OFFSET = 2_000_000_000
# Each split's first index and its world_scene.sample_scene combos.
SPLITS = {"train": (0, "train"), "eval": (EVAL_INDEX_OFFSET, "all"),
          "heldout": (HELDOUT_INDEX_OFFSET, "heldout")}


@dataclasses.dataclass(frozen=True)
class Clip:
    """One rendered clip: its id, scene, uint8 frames [T, H, W, 3] and captions."""

    id: str
    scene: Scene
    frames: np.ndarray
    caption: str
    short_caption: str

    @property
    def meta(self) -> dict:
        """The shard record metadata of the clip (keys fixed by data_pipelines.shards)."""
        scene = self.scene
        return {"id": self.id, "caption": self.caption, "short_caption": self.short_caption,
                "scene": scene, "fps": scene["fps"], "num_frames": scene["num_frames"],
                "width": scene["width"], "height": scene["height"],
                "duration_s": scene["duration_s"]}


def clip_index(split: str, position: int) -> int:
    """The world index of the `position`-th clip of a split (a key of SPLITS)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return position + SPLITS[split][0]


def make_clip(seed: int, index: int, base_size: int = 128, clip_id: str | None = None,
              aspect: str | None = None) -> Clip:
    """Samples, renders and captions clip `index` of `seed`, with the combos of the split the
    index falls in (see SPLITS)."""
    combos = max((start, combos) for start, combos in SPLITS.values() if start <= index)[1]
    scene = sample_scene(seed, index, base_size, combos=combos, aspect=aspect)
    return Clip(id=clip_id or f"clip-{index:010d}", scene=scene, frames=render_clip(scene),
                caption=dense_caption(scene), short_caption=short_caption(scene))


def _clip_records(out: str, split: str, count: int, seed: int, base_size: int,
                  aspect: str | None, captions: IO[str], progress: tqdm.tqdm,
                  counts: collections.Counter) -> Iterator[tuple[dict, bytes]]:
    """Renders a split's clips, writing each mp4 and JSONL line, and yields shard records."""
    for position in range(count):
        clip = make_clip(seed, clip_index(split, position), base_size, f"{split}-{position:06d}",
                         aspect)
        video = encode_video(clip.frames, clip.scene["fps"])
        path = os.path.join("videos", f"{clip.id}.mp4")
        with open(os.path.join(out, path), "wb") as f:
            f.write(video)
        captions.write(json.dumps({**clip.meta, "path": path, "split": split}) + "\n")
        progress.update(1)
        counts["clips"] += 1
        counts["frames"] += clip.scene["num_frames"]
        yield clip.meta, video


def generate_world(out: str, num_clips: int, num_eval_clips: int = 0, seed: int = 0,
                   base_size: int = 128, num_shards: int = 4, build_tfds: bool = False,
                   show_progress: bool = True, num_heldout_prompts: int = 0,
                   aspect: str | None = None) -> dict[str, float]:
    """Writes the synthetic world under `out`; returns counts and timings of the run."""
    for name, value, low in (("num_clips", num_clips, 1), ("num_eval_clips", num_eval_clips, 0),
                             ("num_heldout_prompts", num_heldout_prompts, 0),
                             ("base_size", base_size, 32), ("num_shards", num_shards, 1)):
        if value < low:
            raise ValueError(f"{name}={value}: must be >= {low}")
    start = time.perf_counter()
    os.makedirs(os.path.join(out, "videos"), exist_ok=True)
    shard_dir = os.path.join(out, "shards")
    # A previous run's indexes and shards go first: the .jsonl files exist only for a whole world.
    for stale in glob.glob(os.path.join(shard_dir, "*.array_record")) + glob.glob(
            os.path.join(out, "captions.jsonl")) + glob.glob(os.path.join(out, "heldout.jsonl")):
        os.remove(stale)
    sizes = {"train": num_clips, "eval": num_eval_clips, "heldout": num_heldout_prompts}
    progress = tqdm.tqdm(total=sum(sizes.values()), unit="clip", desc="synthetic world",
                         disable=not show_progress)
    counts = collections.Counter()
    partial = {name: os.path.join(out, f"{name}.jsonl.partial") for name in ("captions", "heldout")}
    with open(partial["captions"], "w", encoding="utf-8") as captions, \
            open(partial["heldout"], "w", encoding="utf-8") as heldout:
        for split, count in sizes.items():
            if count:
                rows = heldout if split == "heldout" else captions
                records = _clip_records(out, split, count, seed, base_size, aspect, rows,
                                        progress, counts)
                shards.write_shards(records, shard_dir, split, min(num_shards, count))
    progress.close()
    for name, path in partial.items():
        os.replace(path, os.path.join(out, f"{name}.jsonl"))
    seconds = time.perf_counter() - start
    stats = {"clips": counts["clips"], "frames": counts["frames"], "seconds": seconds}
    if build_tfds:
        # Imported here so that runs without --tfds never load TFDS.
        from data_pipelines import tfds_builder  # pylint: disable=import-outside-toplevel
        tfds_builder.build(out)
        stats["tfds_seconds"] = time.perf_counter() - start - seconds
    return stats


_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 200, "Number of training clips.")
_NUM_EVAL_CLIPS = flags.DEFINE_integer("num_eval_clips", 16, "Number of eval clips.")
_NUM_HELDOUT_PROMPTS = flags.DEFINE_integer(
    "num_heldout_prompts", 0, "Number of heldout-split clips (heldout.jsonl and shards): their "
    "subject has a held-out (colour, shape) pair.")
_ASPECT = flags.DEFINE_enum("aspect", None, list(ASPECTS),
                            "Fix every clip's aspect ratio (default: drawn per clip).")
_SEED = flags.DEFINE_integer("seed", 0, "World seed; clip i is a pure function of (seed, i).")
_BASE_SIZE = flags.DEFINE_integer("base_size", 128, "Frames hold about base_size**2 pixels.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 4, "ArrayRecord shards per split (at most).")
_TFDS = flags.DEFINE_bool("tfds", True, "Also build a TFDS dataset under OUT/tfds.")


def main(argv: list[str]) -> None:
    """Generates the world the flags describe and reports its generation speed."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    stats = generate_world(_OUT.value, _NUM_CLIPS.value, _NUM_EVAL_CLIPS.value, _SEED.value,
                           _BASE_SIZE.value, _NUM_SHARDS.value, build_tfds=_TFDS.value,
                           num_heldout_prompts=_NUM_HELDOUT_PROMPTS.value, aspect=_ASPECT.value)
    print(f"wrote {stats['clips']} clips ({stats['frames']} frames) to {_OUT.value} in "
          f"{stats['seconds']:.1f} s: {stats['clips'] / stats['seconds']:.1f} clips/s, "
          f"{stats['frames'] / stats['seconds']:.0f} frames/s"
          + (f"; TFDS built in {stats['tfds_seconds']:.1f} s" if "tfds_seconds" in stats else ""))


if __name__ == "__main__":
    app.run(main)

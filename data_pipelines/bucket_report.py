r"""How a bucket table splits a dataset: clips, tokens and steps per bucket, and what cropping
throws away.

    python -m data_pipelines.bucket_report --data=runs/world \
        --config=launch/configs/dit_buckets.py [--split=train]

--data is a dataset folder: shards/{split}-*, plus {split}.manifest.jsonl when it was ingested
(data_pipelines/ingest.py; then no video is read). One row per bucket that gets clips: its shape
and global batch, clips, tokens and steps per epoch, and `crop`, the share of its clips' tokens
the spatial crop throws away (the part of the resized clip outside the bucket's aspect ratio),
and `unused`, the share of their frames outside the temporal window (not lost for good: each
epoch draws another window). Totals follow, with the clips that fit no bucket.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from data_pipelines import bucketed, buckets, decode, shards


def clip_losses(clip: buckets.ClipInfo, bucket: buckets.Bucket,
                table: buckets.BucketTable) -> tuple[float, float]:
    """(share of the resized clip's pixels the crop to the bucket cuts off, share of the clip's
    frames at the target rate outside the bucket's window)."""
    scaled = decode.cover_size((clip.height, clip.width), (bucket.height, bucket.width))
    available = table.frames_at_rate(clip)
    return (1 - bucket.height * bucket.width / (scaled[0] * scaled[1]),
            1 - min(bucket.num_frames, available) / available)


def bucket_rows(plan: buckets.BucketPlan, clips: Sequence[buckets.ClipInfo | None]) -> list[dict]:
    """Per bucket with clips: name, shape, batch, clips, tokens and steps per epoch, and the
    tokens kept and lost to cropping (for `crop`) and the mean unused frame share."""
    rows = []
    for bucket, members, slots in zip(plan.table.buckets, plan.members, plan.slots_per_epoch()):
        if not len(members):
            continue
        losses = [clip_losses(clips[i], bucket, plan.table) for i in members]
        kept = slots * bucket.tokens
        lost = sum(bucket.tokens * crop / (1 - crop) for crop, _ in losses) * slots / len(members)
        rows.append({"bucket": bucket.name, "shape": f"{bucket.num_frames}x{bucket.height}x"
                     f"{bucket.width}", "batch": bucket.batch_size, "clips": len(members),
                     "tokens": kept, "steps": slots / bucket.batch_size, "lost": lost,
                     "unused": sum(u for _, u in losses) / len(losses)})
    return rows


def format_report(rows: list[dict], rejected: int) -> str:
    """The report table and its totals as text."""
    header = (f"{'bucket':<22}{'F x h x w':>14}{'batch':>7}{'clips':>8}{'tokens/epoch':>14}"
              f"{'steps/epoch':>13}{'crop':>8}{'unused':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['bucket']:<22}{r['shape']:>14}{r['batch']:>7}{r['clips']:>8}"
                     f"{r['tokens']:>14,}{r['steps']:>13.1f}"
                     f"{r['lost'] / (r['tokens'] + r['lost']):>8.1%}{r['unused']:>8.1%}")
    clips, kept, lost = (sum(r[k] for r in rows) for k in ("clips", "tokens", "lost"))
    unused = sum(r["unused"] * r["clips"] for r in rows) / max(clips, 1)
    lines += ["-" * len(header),
              f"{len(rows)} buckets, {clips} clips ({rejected} fit no bucket), {kept:,} tokens "
              f"and {sum(r['steps'] for r in rows):.1f} steps per epoch; cropping throws away "
              f"{lost / max(kept + lost, 1):.1%} of the tokens, {unused:.1%} of frames unused"]
    return "\n".join(lines)


def report(data: str, table: buckets.BucketTable, split: str = "train") -> str:
    """The report for the `split` of dataset folder `data`."""
    paths = shards.find_shards(data, split)
    clips = bucketed.read_clip_infos(paths, os.path.join(data, f"{split}.manifest.jsonl"))
    plan = buckets.make_plan(table, clips)
    return format_report(bucket_rows(plan, clips), plan.rejected)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    print(report(f.data, buckets.BucketTable.from_config(f.config.data.buckets), f.split))


if __name__ == "__main__":
    flags.DEFINE_string("data", None, "Dataset folder holding shards/{split}-*.", required=True)
    flags.DEFINE_string("split", "train", "Which split to report on.")
    config_flags.DEFINE_config_file("config", None, "Config with data.buckets.")
    flags.mark_flags_as_required(["config"])
    app.run(main)

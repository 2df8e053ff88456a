r"""Ingest a folder of videos and their captions into ArrayRecord shards plus a manifest.

    python -m data_pipelines.ingest --videos=DIR --captions=captions.jsonl --out=OUT \
        [--num_shards=N | --shard_size_mb=512] [--workers=8] [--timeout_s=120] \
        [--min_frames=9] [--min_side=16] [--max_side=8192] [--max_aspect=8] [--split=train] [--tfds]

Without --captions each video's caption is read from a side-car .txt file next to it. Every video
is probed with PyAV in a worker process (data_pipelines/workers.py) with a per-file timeout: a file that hangs or crashes
FFmpeg costs at most its timeout, then its worker is replaced. Output (the format is in
data_pipelines/manifest.py's docstring): OUT/shards/SPLIT-*.array_record, OUT/SPLIT.manifest.jsonl,
OUT/SPLIT.rejects.jsonl and OUT/SPLIT.summary.json; every video found ends up either in the
manifest or in the rejects file with its reason, and the run fails if the counts disagree.
Train on the result with `--config.data.path=OUT`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import hashlib
import heapq
import json
import math
import os
import time
from collections.abc import Iterator, Sequence

import tqdm
from absl import app, flags

from data_pipelines import manifest, shards
from data_pipelines.workers import run_with_timeouts

def probe_videos(videos_dir: str, videos: Sequence[str], limits: manifest.Limits, *, workers: int,
                 timeout_s: float, show_progress: bool = True) -> dict[str, dict]:
    """manifest.probe_or_reject for every video (paths relative to `videos_dir`), in parallel
    with a progress bar; a timeout or a dead worker becomes a rejection too."""
    paths = [os.path.join(videos_dir, video) for video in videos]
    fn = functools.partial(manifest.probe_or_reject, limits=limits)
    results = {}
    with tqdm.tqdm(total=len(paths), unit="video", desc="probe", disable=not show_progress) as bar:
        for index, status, value in run_with_timeouts(fn, paths, workers=workers,
                                                      timeout_s=timeout_s):
            if status != "ok":
                value = {"reason": "timeout" if status == "timeout" else "probe_crashed",
                         "detail": value}
            results[videos[index]] = value
            bar.update()
    return results


def balance(sizes: Sequence[int], num_shards: int) -> list[list[int]]:
    """Indices of `sizes` split into `num_shards` groups of near-equal total size (largest first
    into the lightest group); each group sorted."""
    heap = [(0, shard) for shard in range(num_shards)]
    groups = [[] for _ in range(num_shards)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, shard = heapq.heappop(heap)
        groups[shard].append(index)
        heapq.heappush(heap, (load + sizes[index], shard))
    return [sorted(group) for group in groups]


def _write_shard(task: tuple[str, list[dict]], videos_dir: str) -> tuple[list[dict], list[dict]]:
    """Writes one shard from its clips' files; returns (manifest rows, rejects) for them."""
    path, metas = task
    rows, rejects = [], []

    def records() -> Iterator[tuple[dict, bytes]]:
        for meta in metas:
            try:
                with open(os.path.join(videos_dir, meta["id"]), "rb") as f:
                    video = f.read()
            except OSError as e:
                rejects.append({"path": meta["id"], "reason": "changed_during_ingest",
                                "detail": str(e)})
                continue
            if hashlib.sha1(video).hexdigest() != meta["sha1"]:
                rejects.append({"path": meta["id"], "reason": "changed_during_ingest",
                                "detail": f"{len(video)} bytes now, sha1 differs from the probe"})
                continue
            rows.append(meta | {"shard": os.path.basename(path), "record": len(rows)})
            yield meta, video

    shards.write_shard(path, records())
    return rows, rejects


def write_clips(metas: list[dict], videos_dir: str, out_dir: str, split: str, num_shards: int,
                workers: int) -> tuple[list[dict], list[dict]]:
    """Writes the accepted clips into `num_shards` byte-balanced shards (replacing the split's old
    ones) in parallel; returns (manifest rows in shard order, rejects)."""
    shard_dir = os.path.join(out_dir, "shards")
    os.makedirs(shard_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(shard_dir, f"{split}-*.array_record")):
        os.remove(stale)
    if not metas:
        return [], []
    groups = balance([meta["bytes"] for meta in metas], num_shards)
    tasks = [(shards.shard_path(shard_dir, split, i, num_shards), [metas[j] for j in group])
             for i, group in enumerate(groups)]
    results = [None] * len(tasks)
    fn = functools.partial(_write_shard, videos_dir=videos_dir)
    for index, status, value in run_with_timeouts(fn, tasks, workers=workers, timeout_s=None):
        if status != "ok":
            raise RuntimeError(f"writing shard {tasks[index][0]} failed: {value}")
        results[index] = value
    return [r for rows, _ in results for r in rows], [r for _, bad in results for r in bad]


def _admit(videos: list[str], captions: manifest.Captions) -> tuple[dict[str, list[str]], dict]:
    """The videos that pass the name and caption checks (with their captions), and rejects."""
    admitted, rejects = {}, {}
    for video in videos:
        try:
            try:
                video.encode("utf-8")
            except UnicodeEncodeError as e:
                raise manifest.Rejected("path_not_utf8", str(e)) from e
            admitted[video] = captions.of(video)
        except manifest.Rejected as r:
            rejects[video] = {"path": video, "reason": r.reason, "detail": r.detail}
    return admitted, rejects


def _accept(admitted: dict[str, list[str]], probed: dict[str, dict],
            rejects: dict[str, dict]) -> list[dict]:
    """Record metadata of the probed videos that passed, in path order; the first of several
    byte-identical files is kept, the others join `rejects`."""
    metas, first_of = [], {}
    for video in sorted(admitted):
        info = probed[video]
        if "reason" in info:
            rejects[video] = {"path": video, **info}
        elif (first := first_of.setdefault(info["sha1"], video)) != video:
            rejects[video] = {"path": video, "reason": "duplicate_content",
                              "detail": f"same bytes as {first}"}
        else:
            texts = admitted[video]
            metas.append({"id": video, "caption": texts[0], "captions": texts, **info})
    return metas


def _summary(inputs: int, rows: list[dict], rejects: list[dict], captions: manifest.Captions,
             other_files: int, num_shards: int) -> dict:
    """The summary file's counts (see data_pipelines/manifest.py)."""
    by_reason = collections.Counter(r["reason"] for r in rejects)
    rejected = sum(by_reason[reason] for reason in manifest.REASONS)
    frames = sum(row["num_frames"] for row in rows)
    return {
        "inputs": inputs, "accepted": len(rows), "rejected": rejected,
        "accounted": len(rows) + rejected == inputs,
        "rejected_by_reason": {k: by_reason[k] for k in manifest.REASONS if by_reason[k]},
        "caption_rows": {"read": captions.rows, "merged_duplicates": captions.merged,
                         **{k.removeprefix("caption_row_"): by_reason[k]
                            for k in manifest.ROW_REASONS}},
        "other_files": other_files, "shards": num_shards,
        "bytes": sum(row["bytes"] for row in rows), "frames": frames,
        "hours": sum(row["duration_s"] for row in rows) / 3600}


def _write_jsonl(path: str, rows: list[dict], ensure_ascii: bool) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=ensure_ascii) + "\n")


def ingest(videos_dir: str, out_dir: str, *, captions_file: str | None = None,
           split: str = "train", num_shards: int | None = None, shard_size_mb: float = 512.0,
           workers: int | None = None, timeout_s: float = 120.0,
           limits: manifest.Limits = manifest.Limits(), show_progress: bool = True,
           build_tfds: bool = False) -> dict:
    """Probes, filters and shards a folder of videos (see the module docstring); returns the
    summary it writes to OUT/SPLIT.summary.json. Workers start with forkserver, so a script
    calling this needs the `if __name__ == "__main__":` guard."""
    start = time.perf_counter()
    workers = workers or os.cpu_count() or 1
    videos, other_files = manifest.find_videos(videos_dir)
    captions = manifest.read_captions(captions_file, videos_dir, videos)
    admitted, rejects = _admit(videos, captions)
    probed = probe_videos(videos_dir, list(admitted), limits, workers=workers,
                          timeout_s=timeout_s, show_progress=show_progress)
    metas = _accept(admitted, probed, rejects)
    total = sum(meta["bytes"] for meta in metas)
    count = num_shards or math.ceil(total / (shard_size_mb * 2**20))
    count = max(1, min(count, len(metas)))
    rows, late = write_clips(metas, videos_dir, out_dir, split, count, workers)
    rejects = sorted([*rejects.values(), *late], key=lambda r: r["path"]) + captions.bad_rows
    summary = _summary(len(videos), rows, rejects, captions, other_files, count if rows else 0)
    summary["seconds"] = time.perf_counter() - start
    _write_jsonl(os.path.join(out_dir, f"{split}.manifest.jsonl"), rows, ensure_ascii=False)
    _write_jsonl(os.path.join(out_dir, f"{split}.rejects.jsonl"), rejects, ensure_ascii=True)
    with open(os.path.join(out_dir, f"{split}.summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    if not summary["accounted"]:
        raise RuntimeError(f"accepted + rejected != inputs: {summary}")
    if build_tfds and rows:
        from data_pipelines import tfds_builder  # pylint: disable=import-outside-toplevel
        tfds_builder.build(out_dir)
    return summary


def define_flags() -> None:
    """The CLI's flags (defined only when run as a script)."""
    flags.DEFINE_string("videos", None, "Folder of videos (searched recursively).", required=True)
    flags.DEFINE_string("captions", None, "JSONL or CSV captions file; default: side-car .txt.")
    flags.DEFINE_string("out", None, "Output folder.", required=True)
    flags.DEFINE_string("split", "train", "Split name: shard prefix and output file prefix.")
    flags.DEFINE_integer("num_shards", None, "Number of shards (exclusive with shard_size_mb).")
    flags.DEFINE_float("shard_size_mb", None, "Target shard size in MiB (default 512).")
    flags.DEFINE_integer("workers", None, "Probing and writing processes (default: all cores).")
    flags.DEFINE_float("timeout_s", 120.0, "Per-file probing timeout in seconds.")
    for field in dataclasses.fields(manifest.Limits):
        define = flags.DEFINE_integer if field.type == "int" else flags.DEFINE_float
        define(field.name, field.default, f"{field.metadata['help']} Others are rejected.")
    flags.DEFINE_bool("tfds", False, "Also build a TFDS dataset of all splits under OUT/tfds.")


def main(argv: list[str]) -> None:
    """Runs the ingest the flags describe and prints its summary."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if f.num_shards is not None and f.shard_size_mb is not None:
        raise app.UsageError("give --num_shards or --shard_size_mb, not both")
    limits = manifest.Limits(**{k.name: f[k.name].value for k in dataclasses.fields(manifest.Limits)})
    summary = ingest(f.videos, f.out, captions_file=f.captions, split=f.split,
                     num_shards=f.num_shards, shard_size_mb=f.shard_size_mb or 512.0,
                     workers=f.workers, timeout_s=f.timeout_s, limits=limits, build_tfds=f.tfds)
    reasons = ", ".join(f"{k}={v}" for k, v in summary["rejected_by_reason"].items())
    print(f"accepted {summary['accepted']} of {summary['inputs']} videos into "
          f"{summary['shards']} shards ({summary['bytes'] / 2**20:.1f} MiB, "
          f"{summary['hours']:.2f} h) in {summary['seconds']:.1f} s; rejected "
          f"{summary['rejected']} ({reasons or 'none'}); see {f.out}/{f.split}.*.json*")


if __name__ == "__main__":
    # Run the module under its importable name, so that worker functions pickle by that name.
    from data_pipelines import ingest as _ingest  # pylint: disable=import-self
    _ingest.define_flags()
    flags.adopt_module_key_flags(_ingest)  # listed by --help
    app.run(_ingest.main)

"""Evaluation sweeps over checkpoints and sampling settings, resumable cell by cell.

A cell is one checkpoint step with one choice of every setting (sampler, solver steps, CFG
scale, shift, seed, frames, height, width); `cell_grid` makes the product of the value lists.
`run_cells` evaluates the cells not yet done and writes, under the sweep's folder:

    cells/{key}/result.json     the cell's settings, metrics and videos (written last and
                                atomically: its presence marks the cell done)
    cells/{key}/{i:03d}.mp4     text to video: the video of prompt i
    eval/step_{step:07d}/       VAE runs: the task's original | reconstruction mp4s
    metrics.csv, metrics.json   one row per cell of the grid: settings and metrics
    tensorboard/                the metrics as scalars "{settings}/{metric}" at the cell's step
    gallery.html                prompts x cells (vidgen/evaluation/gallery.py)

Rerunning with the same grid skips every finished cell; a cell whose prompts (or feature
extractor) changed since it was written is run again. Each finished cell logs its time and the
ETA of the rest. Text-to-video metrics per cell: temporal consistency (clip_stats.py), the world
grader's prompt adherence for prompts that carry a scene, and FVD against real clips of the
cell's size (fvd.py). VAE runs: reconstruction PSNR and SSIM over the eval clips.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from vidgen.diffusion import samplers
from vidgen.evaluation import gallery
from vidgen.train import checkpoint
from vidgen.train import metrics as train_metrics

log = logging.getLogger(__name__)
DIT_METRICS = ("fvd", "grader_overall", "grader_all_correct", "temporal_consistency", "seconds")
VAE_METRICS = ("psnr", "ssim", "seconds")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One text-to-video cell: a checkpoint step and the sampling settings."""
    step: int
    sampler: str = "euler"
    num_steps: int = 20
    cfg_scale: float = 4.0
    shift: float = 1.0
    seed: int = 0
    num_frames: int = 5
    height: int = 64
    width: int = 64

    @property
    def settings_key(self) -> str:
        """The settings without the step, e.g. 'euler_n20_cfg4_shift1_seed0_5x64x64'."""
        return (f"{self.sampler}_n{self.num_steps}_cfg{self.cfg_scale:g}_shift{self.shift:g}"
                f"_seed{self.seed}_{self.num_frames}x{self.height}x{self.width}")

    @property
    def key(self) -> str:
        return f"step{self.step:07d}_{self.settings_key}"

    @property
    def title(self) -> str:
        return (f"step {self.step} | {self.sampler} x{self.num_steps} | cfg {self.cfg_scale:g}"
                f" | seed {self.seed} | {self.num_frames}x{self.height}x{self.width}")

    def sampler_config(self) -> samplers.SamplerConfig:
        return samplers.SamplerConfig(solver=self.sampler, num_steps=self.num_steps,
                                      shift=self.shift, cfg_scale=self.cfg_scale)


@dataclasses.dataclass(frozen=True)
class VAECell:
    """One VAE cell: a checkpoint step, scored by reconstructing the eval clips."""
    step: int
    settings_key = "reconstruction"

    @property
    def key(self) -> str:
        return f"step{self.step:07d}"

    @property
    def title(self) -> str:
        return f"step {self.step}"


def cell_grid(steps: Sequence[int], *, samplers_: Sequence[str], sample_steps: Sequence[int],
              cfg_scales: Sequence[float], seeds: Sequence[int],
              sizes: Sequence[tuple[int, int, int]], shift: float = 1.0) -> list[Cell]:
    """Every combination, step-major (so each checkpoint is loaded once); sizes are
    (num_frames, height, width). Raises on an empty list or a setting samplers rejects."""
    lists = dict(steps=steps, samplers=samplers_, sample_steps=sample_steps,
                 cfg_scales=cfg_scales, seeds=seeds, sizes=sizes)
    if empty := [name for name, values in lists.items() if not values]:
        raise ValueError(f"empty sweep lists: {empty}")
    for solver, num_steps in itertools.product(samplers_, sample_steps):
        samplers.SamplerConfig(solver=solver, num_steps=num_steps, shift=shift)   # validates
    cells = [Cell(step, sampler, n, float(cfg), shift, seed, *size) for step, size, sampler, n,
             cfg, seed in itertools.product(steps, sizes, samplers_, sample_steps, cfg_scales,
                                            seeds)]
    return list(dict.fromkeys(cells))


def load_prompts(path: str) -> list[dict]:
    """Prompts as {"caption", "scene" (None unless given)}: a .jsonl file with a "caption" (and
    optional synthetic-world "scene") per line, or any other file with one prompt per line."""
    with open(path, encoding="utf-8") as f:
        lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no prompts")
    if not path.endswith(".jsonl"):
        return [{"caption": line, "scene": None} for _, line in lines]
    prompts = []
    for number, line in lines:
        record = json.loads(line)
        if "caption" not in record:
            raise ValueError(f"{path}:{number}: no \"caption\" field")
        prompts.append({"caption": record["caption"], "scene": record.get("scene")})
    return prompts


def read_run(workdir: str) -> tuple[str, ml_collections.ConfigDict, list[int]]:
    """(task name, config, checkpoint steps) of a training workdir, from its newest checkpoint."""
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir} holds no checkpoints/ of a training run")
    meta, _, steps = checkpoint.read_meta(directory)
    return meta["task"], ml_collections.ConfigDict(meta["config"]), steps


def fingerprint(*parts: Any) -> str:
    """A short hash of what a cell's results depend on besides its settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _result_path(out_dir: str, key: str) -> str:
    return os.path.join(out_dir, "cells", key, "result.json")


def load_result(out_dir: str, key: str, want_fingerprint: str) -> dict | None:
    """The saved result of a finished cell, or None if absent or made for other inputs."""
    path = _result_path(out_dir, key)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    return result if result.get("fingerprint") == want_fingerprint else None


def _save_json(path: str, payload: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    gallery.write_atomically(path, json.dumps(payload, indent=1))


def write_table(out_dir: str, results: Sequence[dict], info: dict | None = None) -> list[dict]:
    """metrics.csv and metrics.json (one row per cell: key, settings, metrics; the JSON also
    holds `info`, e.g. which FVD features); returns the rows."""
    rows = [{"key": r["key"], **r["cell"], **r["metrics"]} for r in results]
    columns = list(dict.fromkeys(name for row in rows for name in row))
    with open(os.path.join(out_dir, "metrics.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    _save_json(os.path.join(out_dir, "metrics.json"), {**(info or {}), "cells": rows})
    return rows


def _eta(done: int, total: int, elapsed: float) -> str:
    """The time the remaining cells will take at the mean pace so far, as H:MM:SS."""
    return str(datetime.timedelta(seconds=round(elapsed / done * (total - done))))


def run_cells(out_dir: str, cells: Sequence[Cell | VAECell], inputs_fingerprint: str,
              evaluate: Callable[[Any], dict], info: dict | None = None) -> list[dict]:
    """Evaluates the cells without a current result (evaluate(cell) -> {"metrics": {...},
    "videos": [{"video": path relative to out_dir, ...}]}), saving each as it finishes, its
    metrics also to TensorBoard; then writes the metrics table (with `info`). Returns every
    cell's result."""
    results = {c.key: load_result(out_dir, c.key, inputs_fingerprint) for c in cells}
    pending = [c for c in cells if results[c.key] is None]
    log.info("sweep: %d cells, %d done before, %d to run", len(cells),
             len(cells) - len(pending), len(pending))
    writer = train_metrics.ScalarWriter(os.path.join(out_dir, "tensorboard")) if pending else None
    start = time.perf_counter()
    for i, cell in enumerate(pending, 1):
        began = time.perf_counter()
        result = {"key": cell.key, "cell": dataclasses.asdict(cell),
                  "fingerprint": inputs_fingerprint, **evaluate(cell)}
        result["metrics"]["seconds"] = time.perf_counter() - began
        _save_json(_result_path(out_dir, cell.key), result)
        writer.write(cell.step, {k: v for k, v in result["metrics"].items()
                                 if v is not None and math.isfinite(v)}, f"{cell.settings_key}/")
        results[cell.key] = result
        log.info("sweep: cell %d/%d %s done in %.1fs | ETA %s", i, len(pending), cell.key,
                 result["metrics"]["seconds"], _eta(i, len(pending), time.perf_counter() - start))
    if writer is not None:
        writer.close()
    done = [results[c.key] for c in cells]
    write_table(out_dir, done, info)
    return done


def write_gallery(out_dir: str, title: str, row_labels: Sequence[str], cells: Sequence,
                  results: Sequence[dict], metric_names: Sequence[str]) -> str:
    """gallery.html for finished cells: a column per cell, row i holding each cell's video i."""
    columns = []
    for cell, result in zip(cells, results):
        slots = [gallery.Slot(v["video"], gallery.format_metrics(v, ("temporal_consistency",
                                                                      "grader")))
                 for v in result["videos"]]
        slots += [None] * (len(row_labels) - len(slots))
        columns.append(gallery.Column(cell.title, gallery.format_metrics(
            result["metrics"], metric_names), slots[:len(row_labels)]))
    path = os.path.join(out_dir, "gallery.html")
    gallery.write(path, title, [f"{len(cells)} cells; metrics in metrics.csv"], row_labels,
                  columns)
    return path

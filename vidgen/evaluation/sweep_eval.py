"""What one sweep cell computes (vidgen/evaluation/sweep.py runs the grid).

TextToVideoEval: sample every prompt with the cell's settings from the cell's checkpoint, write
one mp4 per prompt, and score the cell: temporal consistency (clip_stats.py), world-grader
prompt adherence over the prompts that carry a scene, and FVD of the cell's clips against real
clips of the same size (features from fvd.make_extractor: I3D or the documented fallback).
VAEEval: reconstruct the run's eval clips with the step's EMA VAE (the vae task's own
evaluation: mean PSNR and SSIM, original | reconstruction mp4s).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from vidgen.evaluation import clip_stats, fvd, world_grader
from vidgen.evaluation.sweep import Cell, VAECell
from vidgen.io.video import write_video

RealClips = Callable[[int, int, int], np.ndarray]   # (frames, height, width) -> uint8 clips


class TextToVideoEval:
    """evaluate(cell) for text-to-video cells (sweep.run_cells); loads each step once."""

    def __init__(self, out_dir: str, prompts: Sequence[dict], load_generator: Callable,
                 *, real_clips: RealClips | None = None,
                 extractor: tuple[str, fvd.FeatureExtractor] | None = None, fps: float = 8.0):
        self.out_dir, self.prompts, self.fps = out_dir, list(prompts), fps
        self._load_generator, self._real_clips = load_generator, real_clips
        self._extractor = extractor
        self._loaded: tuple[int, object] | None = None
        self._real_features: dict[tuple[int, int, int], np.ndarray] = {}

    def _generator(self, step: int):
        if self._loaded is None or self._loaded[0] != step:
            self._loaded = None                               # free the previous checkpoint
            self._loaded = (step, self._load_generator(step))
        return self._loaded[1]

    def _fvd(self, cell: Cell, videos: np.ndarray) -> float | None:
        """FVD of the cell's clips against the real clips of its size; None without real
        clips, without an extractor, or with fewer than two clips on either side."""
        if self._real_clips is None or self._extractor is None or len(videos) < 2:
            return None
        size = (cell.num_frames, cell.height, cell.width)
        extract = self._extractor[1]
        if size not in self._real_features:
            self._real_features[size] = extract(self._real_clips(*size))
        real = self._real_features[size]
        return fvd.fvd(real, extract(videos)) if len(real) >= 2 else None

    def __call__(self, cell: Cell) -> dict:
        videos = self._generator(cell.step).generate(
            [p["caption"] for p in self.prompts], num_frames=cell.num_frames,
            height=cell.height, width=cell.width, settings=cell.sampler_config(),
            seed=cell.seed)
        consistency = clip_stats.temporal_consistency(videos)
        entries, grades = [], []
        for i, (video, prompt) in enumerate(zip(videos, self.prompts)):
            path = os.path.join("cells", cell.key, f"{i:03d}.mp4")
            os.makedirs(os.path.dirname(os.path.join(self.out_dir, path)), exist_ok=True)
            write_video(os.path.join(self.out_dir, path), video, self.fps)
            entry = {"video": path, "temporal_consistency": float(consistency[i])}
            if prompt["scene"] is not None:
                grades.append(world_grader.grade_clip(video, prompt["scene"]))
                checks = [v for v in grades[-1].values() if v is not None]
                entry["grader"] = f"{sum(checks)}/{len(checks)}"
            entries.append(entry)
        metrics = {"temporal_consistency": float(np.nanmean(consistency))
                   if not np.isnan(consistency).all() else None,
                   "fvd": self._fvd(cell, videos)}
        if grades:
            summary = world_grader.summarize(grades)
            metrics.update(grader_overall=summary["overall"],
                           grader_all_correct=summary["all_correct"])
        return {"metrics": metrics, "videos": entries}


class VAEEval:
    """evaluate(cell) for VAE cells: the vae task's evaluation of the step's EMA weights."""

    def __init__(self, out_dir: str, workdir: str, eval_clips: dict):
        self.out_dir, self.workdir, self.eval_clips = out_dir, workdir, eval_clips

    def __call__(self, cell: VAECell) -> dict:
        from vidgen.train import checkpoint
        from vidgen.train.tasks import vae as vae_task
        model, config, _ = checkpoint.load_trained_model(
            os.path.join(self.workdir, "checkpoints"), vae_task.build_model, cell.step)
        metrics = vae_task.evaluate(model, self.eval_clips, self.out_dir, cell.step, config)
        folder = os.path.join("eval", f"step_{cell.step:07d}")
        names = sorted(n for n in os.listdir(os.path.join(self.out_dir, folder))
                       if n.endswith(".mp4"))
        return {"metrics": dict(metrics), "videos": [{"video": os.path.join(folder, n)}
                                                     for n in names]}

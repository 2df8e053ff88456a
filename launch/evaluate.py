r"""Evaluation sweep over checkpoints and sampling settings, with a metrics table and a gallery.

    python -m launch.evaluate --checkpoints=runs/demo/dit_tiny --steps_to_eval=1000,3000 \
        --prompts=runs/demo/world/heldout.jsonl --cfg_scales=3,5,7 --sample_steps=20,50 \
        --samplers=euler,heun --seeds=0,1 --num_frames=5 --resolutions=64x64,48x80 \
        [--i3d_weights=i3d_pretrained_400.pt] [--out=runs/demo/dit_tiny/eval_sweep]

List flags take comma-separated values and the sweep runs their product; each left out takes
the run's own value (config.sample, config.data), --steps_to_eval the newest checkpoint.
Resolutions are HEIGHTxWIDTH. Rerunning the same command skips finished cells. For a vae run
(python -m launch.evaluate --checkpoints=runs/demo/vae_tiny) each step's reconstruction PSNR and
SSIM over the run's eval clips is the cell. Writes, under --out (default WORKDIR/eval_sweep):
one mp4 per (cell, prompt), metrics.csv, metrics.json, tensorboard/ scalars at each checkpoint
step, and gallery.html (layout in vidgen/evaluation/sweep.py). FVD compares each cell's clips
with --num_real clips of --real_split under --real_data (default: the run's data) using I3D
when --i3d_weights is given, else a fallback whose numbers are not comparable with published
FVD (vidgen/evaluation/fvd.py).
"""

from __future__ import annotations

import logging
import os

from absl import app, flags

from data_pipelines import pipeline, shards
from vidgen.evaluation import fvd, sweep, sweep_eval
from vidgen.generate import VideoGenerator

log = logging.getLogger(__name__)


def define_flags(values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this command's flags on `values` (the global FLAGS when run as a program)."""
    def lst(name: str, default, help_: str) -> None:
        flags.DEFINE_list(name, default, help_, flag_values=values)

    flags.DEFINE_string("checkpoints", None, "Workdir of a dit or vae training run.",
                        flag_values=values)
    lst("steps_to_eval", [], "Checkpoint steps (default: the newest).")
    flags.DEFINE_string("prompts", None, "Prompts: .jsonl (caption, optional scene) or text "
                        "lines; default DATA/heldout.jsonl.", flag_values=values)
    lst("cfg_scales", [], "Guidance scales (default: config.sample.cfg_scale).")
    lst("sample_steps", [], "ODE solver step counts (default: config.sample.num_steps).")
    lst("samplers", [], "Solvers: euler, heun, dpmpp_2m (default: config.sample.solver).")
    lst("seeds", ["0"], "Noise seeds; prompt i uses (seed, i).")
    lst("num_frames", [], "Frame counts, 1+4k (default: as trained).")
    lst("resolutions", [], "HEIGHTxWIDTH sizes (default: as trained).")
    flags.DEFINE_float("shift", None, "Time-grid shift (default: config.sample.shift).",
                       flag_values=values)
    flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/eval_sweep).",
                        flag_values=values)
    flags.DEFINE_string("i3d_weights", None, "I3D Kinetics-400 state dict (.pt, .safetensors "
                        ".npz) for FVD; default: the fallback features.", flag_values=values)
    flags.DEFINE_string("real_data", None, "Dataset folder of the real clips (default: "
                        "config.data.path).", flag_values=values)
    flags.DEFINE_string("real_split", None, "Split of the real clips (default: "
                        "config.data.eval_split).", flag_values=values)
    flags.DEFINE_integer("num_real", 64, "Real clips for FVD.", flag_values=values)
    flags.DEFINE_float("fps", 8.0, "Frame rate of the written mp4s.", flag_values=values)
    flags.mark_flag_as_required("checkpoints", flag_values=values)


def parse_list(values: flags.FlagValues, name: str, cast, default: list) -> list:
    """The flag's comma-separated values through cast (default when empty); a bad value
    raises app.UsageError naming the flag."""
    raw = values[name].value or []
    try:
        return [cast(v.strip()) for v in raw] if raw else list(default)
    except ValueError as e:
        raise app.UsageError(f"--{name}={','.join(raw)}: {e}") from e


def parse_resolution(text: str) -> tuple[int, int]:
    """'144x256' -> (144, 256): height, width."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{text!r} is not HEIGHTxWIDTH")
    return int(parts[0]), int(parts[1])


def _real_clips(data_path: str, split: str, num_real: int, frame_stride: int):
    """(frames, height, width) -> up to num_real real clips; None (no FVD) without shards."""
    try:
        paths = shards.find_shards(data_path, split)
    except FileNotFoundError as e:
        log.warning("no FVD: %s", e)
        return None

    def load(num_frames: int, height: int, width: int):
        return pipeline.load_eval_clips(paths, num_frames=num_frames, height=height, width=width,
                                        num_clips=num_real, frame_stride=frame_stride,
                                        allow_fewer=True)["video"]

    return load


def _dit_sweep(values: flags.FlagValues, workdir: str, config, steps: list[int], out: str
               ) -> list[dict]:
    data, sample = config.data, config.sample
    prompts_path = values.prompts or os.path.join(data.path, "heldout.jsonl")
    if not os.path.exists(prompts_path):
        raise app.UsageError(f"--prompts={prompts_path}: no such file")
    prompts = sweep.load_prompts(prompts_path)
    sizes = [(f, h, w) for f in parse_list(values, "num_frames", int, [data.num_frames])
             for h, w in parse_list(values, "resolutions", parse_resolution,
                                    [(data.height, data.width)])]
    try:
        cells = sweep.cell_grid(
            steps, samplers_=parse_list(values, "samplers", str, [sample.solver]),
            sample_steps=parse_list(values, "sample_steps", int, [sample.num_steps]),
            cfg_scales=parse_list(values, "cfg_scales", float, [sample.cfg_scale]),
            seeds=parse_list(values, "seeds", int, [0]), sizes=sizes,
            shift=sample.shift if values.shift is None else values.shift)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    extractor = fvd.make_extractor(values.i3d_weights)
    real_data = values.real_data or data.path
    real_split = values.real_split or data.get("eval_split", "eval")
    real = _real_clips(real_data, real_split, values.num_real, data.get("frame_stride", 1))
    evaluate = sweep_eval.TextToVideoEval(
        out, prompts, lambda step: VideoGenerator.from_checkpoint(workdir, step)[0],
        real_clips=real, extractor=extractor, fps=values.fps)
    inputs = sweep.fingerprint(prompts, extractor[0], values.fps, real is not None and
                               [os.path.abspath(real_data), real_split, values.num_real])
    results = sweep.run_cells(out, cells, inputs, evaluate, {"fvd_features": extractor[0]})
    sweep.write_gallery(out, f"text-to-video sweep of {workdir} (FVD features: {extractor[0]})",
                        [p["caption"] for p in prompts], cells, results, sweep.DIT_METRICS)
    return results


def _vae_sweep(values: flags.FlagValues, workdir: str, config, steps: list[int], out: str
               ) -> list[dict]:
    d = config.data
    clips = pipeline.load_eval_clips(
        shards.find_shards(values.real_data or d.path, values.real_split or
                           d.get("eval_split", "eval")),
        num_frames=d.num_frames, height=d.height, width=d.width, num_clips=d.num_eval_clips,
        frame_stride=d.get("frame_stride", 1))
    cells = [sweep.VAECell(step) for step in steps]
    results = sweep.run_cells(out, cells, sweep.fingerprint(clips["id"]),
                              sweep_eval.VAEEval(out, workdir, clips))
    shown = max(len(r["videos"]) for r in results)
    sweep.write_gallery(out, f"VAE reconstructions of {workdir} (original | reconstruction)",
                        [str(i) for i in clips["id"][:shown]], cells, results, sweep.VAE_METRICS)
    return results


def run(values: flags.FlagValues) -> list[dict]:
    """The sweep the parsed flags describe; returns every cell's result."""
    workdir = values.checkpoints
    task, config, available = sweep.read_run(workdir)
    steps = parse_list(values, "steps_to_eval", int, [available[-1]])
    if missing := sorted(set(steps) - set(available)):
        raise app.UsageError(f"--steps_to_eval: no checkpoint at {missing} in {workdir} "
                             f"(steps: {available})")
    out = values.out or os.path.join(workdir, "eval_sweep")
    os.makedirs(out, exist_ok=True)
    if task == "vae":
        results = _vae_sweep(values, workdir, config, steps, out)
    elif task == "dit":
        results = _dit_sweep(values, workdir, config, steps, out)
    else:
        raise app.UsageError(f"{workdir}: task {task!r} has no sweep (expected dit or vae)")
    log.info("sweep of %d cells: %s/metrics.csv, %s/gallery.html", len(results), out, out)
    return results


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)   # orbax's per-restore chatter
    run(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    app.run(main)

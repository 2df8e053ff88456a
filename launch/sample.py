r"""Samples videos from a trained dit run: one mp4 per prompt and a PNG contact sheet.

    python -m launch.sample --checkpoint=runs/demo/dit_tiny --prompt="a red ball moves left" \
        --num_frames=5 --height=96 --width=96 --cfg=4 --steps=20 --sampler=euler --seed=0 \
        --out=runs/demo/samples

`--prompts_file` takes the prompt files launch/evaluate.py takes (vidgen/evaluation/sweep.py's
load_prompts): JSONL with a "caption" field per line, or one prompt per line. JSONL lines that
also hold a synthetic-world "scene" are graded by the world grader, and the per-attribute
prompt adherence goes to metrics.json. Sizes default to those the run trained on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from absl import app, flags

from vidgen import generate
from vidgen.diffusion import samplers
from vidgen.evaluation import sweep, visualize
from vidgen.io.video import write_video

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line flags (defined only when run as a program)."""
    flags.DEFINE_string("checkpoint", None, "Workdir of a dit training run.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_multi_string("prompt", [], "A prompt (repeat the flag for several).")
    flags.DEFINE_string("prompts_file", None, "Prompts: .jsonl (caption, optional scene) or "
                        "text lines.")
    flags.DEFINE_integer("num_frames", None, "Frames (1+4k); default: as trained.")
    flags.DEFINE_integer("height", None, "Height in pixels; default: as trained.")
    flags.DEFINE_integer("width", None, "Width in pixels; default: as trained.")
    flags.DEFINE_float("cfg", 4.0, "Classifier-free guidance scale (1 = no guidance).")
    flags.DEFINE_integer("steps", 20, "ODE solver steps.")
    flags.DEFINE_enum("sampler", "euler", sorted(samplers.SOLVERS), "ODE solver.")
    flags.DEFINE_float("shift", 1.0, "Time-grid shift (>1 spends more steps near noise).")
    flags.DEFINE_integer("seed", 0, "Noise seed; prompt i uses (seed, i).")
    flags.DEFINE_float("fps", 8.0, "Frame rate of the written mp4s.")
    flags.DEFINE_string("out", "samples", "Output folder.")
    flags.mark_flag_as_required("checkpoint")


def prompt_records(prompts: list[str], path: str | None) -> list[dict]:
    """The prompts as {"caption", "scene"}: the --prompt values (no scene), then those of
    --prompts_file (sweep.load_prompts, the format launch/evaluate.py reads too)."""
    records = [{"caption": p, "scene": None} for p in prompts]
    records += sweep.load_prompts(path) if path else []
    if not records:
        raise app.UsageError("no prompts: give --prompt or --prompts_file")
    return records


def grade(videos, records: list[dict]) -> dict | None:
    """World-grader prompt adherence of the videos whose prompt came with a scene."""
    from vidgen.evaluation import world_grader
    pairs = [(v, r["scene"]) for v, r in zip(videos, records) if r["scene"] is not None]
    if not pairs:
        return None
    grades = [world_grader.grade_clip(v, scene) for v, scene in pairs]
    return {"summary": world_grader.summarize(grades), "per_clip": grades}


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    records = prompt_records(FLAGS.prompt, FLAGS.prompts_file)
    prompts, out = [r["caption"] for r in records], FLAGS.out
    gen, data = generate.VideoGenerator.from_checkpoint(FLAGS.checkpoint, FLAGS.step)
    settings = samplers.SamplerConfig(solver=FLAGS.sampler, num_steps=FLAGS.steps,
                                      shift=FLAGS.shift, cfg_scale=FLAGS.cfg)
    size = dict(num_frames=FLAGS.num_frames or data.num_frames,
                height=FLAGS.height or data.height, width=FLAGS.width or data.width)
    logging.info("sampling %d prompt(s) at %s with %s", len(prompts), size, settings)
    videos = gen.generate(prompts, **size, settings=settings, seed=FLAGS.seed)
    os.makedirs(out, exist_ok=True)
    for i, video in enumerate(videos):
        write_video(os.path.join(out, f"{i:03d}.mp4"), video, FLAGS.fps)
    visualize.save_png(os.path.join(out, "contact_sheet.png"),
                       visualize.frame_strip(list(videos)))
    with open(os.path.join(out, "prompts.json"), "w", encoding="utf-8") as f:
        json.dump({"prompts": prompts, "size": size, "seed": FLAGS.seed,
                   "settings": dataclasses.asdict(settings)}, f, indent=2)
    logging.info("wrote %d videos and contact_sheet.png to %s", len(videos), out)
    if (graded := grade(videos, records)) is not None:
        with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(graded, f, indent=2)
        logging.info("world grader on %d prompts: %s", len(graded["per_clip"]),
                     json.dumps(graded["summary"]))


if __name__ == "__main__":
    define_flags()
    app.run(main)

r"""Samples videos from a trained dit run: one mp4 per prompt and a PNG contact sheet.

    python -m launch.sample --checkpoint=runs/demo/dit_tiny --prompt="a red ball moves left" \
        --num_frames=5 --height=64 --width=64 --cfg=4 --steps=20 --sampler=euler --seed=0 \
        --out=runs/demo/samples

`--prompts_file` takes one prompt per line, or JSONL with a "caption" field per line. JSONL
lines that also hold a synthetic-world "scene" are graded by the world grader, and the
per-attribute prompt adherence goes to metrics.json. Sizes default to those the run trained on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

from absl import app, flags

from vidgen import generate
from vidgen.diffusion import samplers
from vidgen.evaluation import visualize
from vidgen.io.video import write_video

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir of a dit training run.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeat the flag for several).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "Prompts: .txt lines or .jsonl.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", None, "Frames (1+4k); default: as trained.")
_HEIGHT = flags.DEFINE_integer("height", None, "Height in pixels; default: as trained.")
_WIDTH = flags.DEFINE_integer("width", None, "Width in pixels; default: as trained.")
_CFG = flags.DEFINE_float("cfg", 4.0, "Classifier-free guidance scale (1 = no guidance).")
_STEPS = flags.DEFINE_integer("steps", 20, "ODE solver steps.")
_SAMPLER = flags.DEFINE_enum("sampler", "euler", ["euler", "heun", "dpmpp_2m"], "ODE solver.")
_SHIFT = flags.DEFINE_float("shift", 1.0, "Time-grid shift (>1 spends more steps near noise).")
_SEED = flags.DEFINE_integer("seed", 0, "Noise seed; prompt i uses (seed, i).")
_FPS = flags.DEFINE_float("fps", 8.0, "Frame rate of the written mp4s.")
_OUT = flags.DEFINE_string("out", "samples", "Output folder.")
flags.mark_flag_as_required("checkpoint")


def read_prompts(path: str | None, prompts: list[str]) -> list[dict]:
    """The --prompt values, then the prompts of a .txt (one per line) or .jsonl file, as
    {"caption", "scene" (None unless the JSONL line has one)}."""
    found = [{"caption": p, "scene": None} for p in prompts]
    if path:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        for number, line in enumerate(lines, 1):
            if not path.endswith(".jsonl"):
                found.append({"caption": line, "scene": None})
                continue
            record = json.loads(line)
            if "caption" not in record:
                raise app.UsageError(f"{path}:{number}: no \"caption\" field")
            found.append({"caption": record["caption"], "scene": record.get("scene")})
    if not found:
        raise app.UsageError("no prompts: give --prompt or --prompts_file")
    return found


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
    records = read_prompts(_PROMPTS_FILE.value, _PROMPT.value)
    prompts = [r["caption"] for r in records]
    gen, data = generate.VideoGenerator.from_checkpoint(_CHECKPOINT.value, _STEP.value)
    settings = samplers.SamplerConfig(solver=_SAMPLER.value, num_steps=_STEPS.value,
                                      shift=_SHIFT.value, cfg_scale=_CFG.value)
    size = dict(num_frames=_NUM_FRAMES.value or data.num_frames,
                height=_HEIGHT.value or data.height, width=_WIDTH.value or data.width)
    logging.info("sampling %d prompt(s) at %s with %s", len(prompts), size, settings)
    videos = gen.generate(prompts, **size, settings=settings, seed=_SEED.value)
    os.makedirs(_OUT.value, exist_ok=True)
    for i, (prompt, video) in enumerate(zip(prompts, videos)):
        write_video(os.path.join(_OUT.value, f"{i:03d}.mp4"), video, _FPS.value)
    visualize.save_png(os.path.join(_OUT.value, "contact_sheet.png"),
                       visualize.frame_strip(list(videos)))
    with open(os.path.join(_OUT.value, "prompts.json"), "w", encoding="utf-8") as f:
        json.dump({"prompts": prompts, "size": size, "seed": _SEED.value,
                   "settings": dataclasses.asdict(settings)}, f, indent=2)
    logging.info("wrote %d videos and contact_sheet.png to %s", len(videos), _OUT.value)
    if (graded := grade(videos, records)) is not None:
        with open(os.path.join(_OUT.value, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(graded, f, indent=2)
        logging.info("world grader on %d prompts: %s", len(graded["per_clip"]),
                     json.dumps(graded["summary"]))


if __name__ == "__main__":
    app.run(main)

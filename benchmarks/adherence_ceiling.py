"""How much prompt adherence a VAE leaves for the DiT: the world grader on real held-out clips of
the synthetic world and on the VAE's reconstructions of the same clips.

A DiT trained on a VAE's latents generates through that VAE's decoder, so the grade of the
reconstructions (posterior mode) is, up to grading noise, the best adherence any DiT on those
latents can reach; the real clips' grade is the grader's own ceiling. Clips are cut like the
demo's DiT sees them: --num_frames frames with --frame_stride (0 spreads them over the whole
clip), centre crop at each --sizes entry (the VAE is convolutional, so one trained at 64x64 also
runs at 96x96). With --figure, a PNG shows the first clips whose reconstruction fails a check the
real clip passes: each clip's real frames over its reconstruction.

    python benchmarks/adherence_ceiling.py --vae_workdir=runs/demo/vae_tiny \
        --data=runs/demo/world [--split=heldout --sizes=64x64,96x96 --num_frames=5 \
        --frame_stride=0 --figure=runs/demo/ceiling.png]

Last line: `adherence_ceiling=X` (overall grade of the reconstructions at the first size).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from data_pipelines import pipeline, shards  # noqa: E402
from launch.evaluate import parse_resolution  # noqa: E402
from vidgen.evaluation import visualize, world_grader  # noqa: E402
from vidgen.train import checkpoint  # noqa: E402
from vidgen.train.tasks import vae as vae_task  # noqa: E402


def grade_size(vae, shard_paths: list[str], height: int, width: int, num_frames: int,
               frame_stride: int) -> dict:
    """Grades of the real clips and of their reconstructions at one size, with the clips."""
    clips = pipeline.load_eval_clips(shard_paths, num_frames=num_frames, height=height,
                                     width=width, num_clips=None, frame_stride=frame_stride)
    videos, scenes = clips["video"], [meta["scene"] for meta in clips["meta"]]
    recons, psnr, ssim = vae_task.reconstruct_clips(vae, videos)
    real = [world_grader.grade_clip(v, s) for v, s in zip(videos, scenes)]
    recon = [world_grader.grade_clip(v, s) for v, s in zip(recons, scenes)]
    return {"videos": videos, "recons": recons, "real": real, "recon": recon,
            "psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim))}


def lost_checks(real: dict, recon: dict) -> list[str]:
    """The checks the real clip passes and its reconstruction fails."""
    return [key for key, ok in real.items() if ok and recon.get(key) is False]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae_workdir", required=True, help="A finished vae training run.")
    parser.add_argument("--data", required=True, help="Synthetic world folder (its shards).")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--sizes", default="64x64", help="Comma-separated HEIGHTxWIDTH.")
    parser.add_argument("--num_frames", type=int, default=5)
    parser.add_argument("--frame_stride", type=int, default=0, help="0 spreads the frames.")
    parser.add_argument("--figure", default="", help="PNG of clips the VAE spoils (first size).")
    parser.add_argument("--figure_clips", type=int, default=6)
    args = parser.parse_args()

    model, _, _ = checkpoint.load_trained_model(os.path.join(args.vae_workdir, "checkpoints"),
                                                vae_task.build_model)
    shard_paths = shards.find_shards(args.data, args.split)
    sizes = [parse_resolution(s) for s in args.sizes.split(",")]
    ceilings = []
    for i, (height, width) in enumerate(sizes):
        graded = grade_size(model.vae, shard_paths, height, width, args.num_frames,
                            args.frame_stride)
        real, recon = (world_grader.summarize(graded[k]) for k in ("real", "recon"))
        ceilings.append(recon["overall"])
        print(json.dumps({"size": f"{height}x{width}", "clips": recon["clips"],
                          "psnr": round(graded["psnr"], 2), "ssim": round(graded["ssim"], 3),
                          "real_overall": round(real["overall"], 3),
                          "recon_overall": round(recon["overall"], 3),
                          "recon_accuracy": {k: round(v, 3)
                                             for k, v in recon["accuracy"].items()},
                          "checks": recon["checks"]}), flush=True)
        if i == 0 and args.figure:
            rows = []
            for video, rec, r, g in zip(graded["videos"], graded["recons"], graded["real"],
                                        graded["recon"]):
                if lost_checks(r, g) and len(rows) < 2 * args.figure_clips:
                    rows += [video, rec]
            if rows:
                visualize.save_png(args.figure, visualize.frame_strip(rows))
                print(f"wrote {args.figure}: {len(rows) // 2} clips, real over reconstruction")
    print(f"adherence_ceiling={ceilings[0]:.3f}")


if __name__ == "__main__":
    main()

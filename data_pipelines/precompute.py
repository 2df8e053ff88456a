r"""Encodes clip shards once with a trained VAE, so that DiT training reads latents, not video.

    python -m data_pipelines.precompute --vae_workdir=runs/demo/vae_tiny \
        --data=runs/demo/world --split=train --num_frames=9 --height=64 --width=64 \
        --frame_stride=0 --out=runs/demo/latents

Each clip is decoded the deterministic way (centre window, centre crop; data_pipelines.decode),
encoded to the posterior mode and normalised with the VAE run's per-channel statistics: exactly
the latents the dit task would compute on the fly. Written as ArrayRecord shards
OUT/shards/{split}-*.array_record whose records hold the clip's metadata (plus the VAE workdir and
the clip size) and the latents as a .npy array; `pipeline.make_latent_dataset` reads them and a
dit config points at them with `data.latents_path`. One fixed window per clip: the price of
encoding once is that training sees no temporal or spatial crop augmentation.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import tqdm
from absl import app, flags

from data_pipelines import pipeline, shards
from vidgen.train.tasks import dit as dit_task


def precompute(vae_workdir: str, data: str, split: str, out: str, *, num_frames: int,
               height: int, width: int, frame_stride: int = 1, batch_size: int = 8,
               num_shards: int = 4, show_progress: bool = True) -> dict:
    """Encodes every decodable clip of DATA's `split` shards; returns counts and timing."""
    start = time.perf_counter()
    encode = dit_task.latent_encoder(vae_workdir)
    paths = shards.find_shards(data, split)
    clips = pipeline.load_eval_clips(paths, num_frames=num_frames, height=height, width=width,
                                     num_clips=None, frame_stride=frame_stride)
    size = {"num_frames": num_frames, "height": height, "width": width,
            "frame_stride": frame_stride, "vae_workdir": vae_workdir}
    records = []
    for begin in tqdm.trange(0, len(clips["video"]), batch_size, unit="batch",
                             desc=f"encoding {split}", disable=not show_progress):
        z = np.asarray(encode(jnp.asarray(clips["video"][begin:begin + batch_size])))
        for meta, latents in zip(clips["meta"][begin:begin + batch_size], z):
            records.append(({**meta, "latents": size}, shards.array_to_bytes(latents)))
    shards.write_shards(records, f"{out}/shards", split, min(num_shards, len(records)))
    return {"clips": len(records), "skipped": clips["skipped"],
            "seconds": time.perf_counter() - start}


def define_flags() -> None:
    """The CLI's flags (defined only when run as a program)."""
    flags.DEFINE_string("vae_workdir", None, "Workdir of a finished vae run.", required=True)
    flags.DEFINE_string("data", None, "Folder holding shards/{split}-*.", required=True)
    flags.DEFINE_string("split", "train", "Which split's shards to encode.")
    flags.DEFINE_string("out", None, "Output folder (gets shards/{split}-*).", required=True)
    flags.DEFINE_integer("num_frames", 9, "Frames per clip (1 + 4k).")
    flags.DEFINE_integer("height", 64, "Clip height in pixels.")
    flags.DEFINE_integer("width", 64, "Clip width in pixels.")
    flags.DEFINE_integer("frame_stride", 1, "Every n-th frame; 0 spreads them over the clip.")
    flags.DEFINE_integer("batch_size", 8, "Clips per encoder call.")
    flags.DEFINE_integer("num_shards", 4, "Output shards (at most).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    stats = precompute(f.vae_workdir, f.data, f.split, f.out, num_frames=f.num_frames,
                       height=f.height, width=f.width, frame_stride=f.frame_stride,
                       batch_size=f.batch_size, num_shards=f.num_shards)
    print(f"encoded {stats['clips']} clips ({stats['skipped']} undecodable skipped) to "
          f"{f.out}/shards in {stats['seconds']:.1f} s")


if __name__ == "__main__":
    define_flags()
    app.run(main)

"""Trains the task a config names, on the clip shards under config.data.path.

    python -m launch.train --config=launch/configs/vae_tiny.py --workdir=runs/vae_tiny \\
        --config.data.path=runs/demo/world [--config.optim.lr=3e-4 ...]

`--config=FILE[:ARG]` calls FILE's get_config(ARG); `--config.a.b=v` overrides one key and an
unknown key fails naming it. Rerunning with the same --workdir resumes from its latest
checkpoint; SIGTERM makes the run save a checkpoint and exit cleanly.

Multi-host: run the same command on every host. On a TPU pod, Slurm or Open MPI the processes
find each other (--distributed=auto; --distributed=on forces JAX's detection, e.g. on a TPU pod
without TPU_WORKER_HOSTNAMES); elsewhere add --coordinator_address=HOST0:PORT
--num_processes=N --process_id=I. The workdir must be shared (e.g. gs://); only process 0 logs.
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from data_pipelines import bucketed, buckets, packing, pipeline, shards
from vidgen.parallel import distributed
from vidgen.train import loop
from vidgen.train.tasks import get_task

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (:arg).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard and eval outputs.")
flags.mark_flags_as_required(["config", "workdir"])
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", distributed.MODES,
                                 "Start jax.distributed: auto (flags below or a detected "
                                 "cluster), on (always), off.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of "
                                   "process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process, 0-based.")


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that exits with one line naming the bad flag or unknown config key."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"FATAL Flags parsing error: {e}")
    except (AttributeError, KeyError) as e:   # ml_collections: unknown key in --config.a.b=v
        while e.args and isinstance(e.args[0], Exception):
            e = e.args[0]
        lines = str(e.args[0] if e.args else e).splitlines()
        key = lines[0].strip("'\"")
        culprits = [a.split("=")[0] for a in argv
                    if a.startswith("--config.") and f".{key}" in a.split("=")[0]]
        sys.exit(f"FATAL Flags parsing error: unknown config key {key!r} in "
                 f"{', '.join(culprits) or '--config'}. {' '.join(lines[1:])}".strip())


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               mode=_DISTRIBUTED.value)
    except ValueError as e:
        sys.exit(f"FATAL Flags parsing error: {e}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)   # orbax/grain per-save chatter
    distributed.quiet_other_processes()
    config = _CONFIG.value
    try:
        task = get_task(config.task)
        task.validate_config(config)
        loop.validate_config(config)
    except ValueError as e:   # a bad config value: one line naming it, no traceback
        sys.exit(f"FATAL config error: {e}")
    d = config.data
    text_fn = task.example_fields(config) if task.example_fields is not None else None
    if d.get("latents_path") and d.get("packing"):   # latents of any shape, packed in rows
        train_ds = packing.make_packed_latent_dataset(
            shards.find_shards(d.latents_path, "train"), seq_len=d.packing.seq_len,
            max_clips=d.packing.max_clips, patch=config.model.patch_size,
            batch_size=d.batch_size, seed=config.seed, text_fn=text_fn)
    elif d.get("latents_path"):      # precomputed latents (python -m data_pipelines.precompute)
        train_ds = pipeline.make_latent_dataset(
            shards.find_shards(d.latents_path, "train"), batch_size=d.batch_size,
            seed=config.seed, text_fn=text_fn)
    elif d.get("buckets"):           # one bucket (clip shape) per global step
        train_ds = bucketed.make_bucketed_clip_dataset(
            shards.find_shards(d.path, "train"), table=buckets.BucketTable.from_config(d.buckets),
            seed=config.seed, num_workers=d.num_workers, text_fn=text_fn,
            manifest=os.path.join(d.path, "train.manifest.jsonl"))
    else:
        train_ds = pipeline.make_clip_dataset(
            shards.find_shards(d.path, "train"), num_frames=d.num_frames, height=d.height,
            width=d.width, batch_size=d.batch_size, seed=config.seed,
            num_workers=d.num_workers, text_fn=text_fn, frame_stride=d.get("frame_stride", 1))
    eval_clips = None
    if d.num_eval_clips > 0:
        eval_clips = pipeline.load_eval_clips(
            shards.find_shards(d.path, d.get("eval_split", "eval")), num_frames=d.num_frames,
            height=d.height, width=d.width, num_clips=d.num_eval_clips,
            frame_stride=d.get("frame_stride", 1))
    result = loop.train(task, config, _WORKDIR.value, iter(train_ds), eval_clips)
    logging.info("done: %s", result)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)

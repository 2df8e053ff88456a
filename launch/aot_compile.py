r"""Compiles a config's train step for a TPU slice on this (CPU) machine and reports whether it
fits: per-chip memory against HBM, model FLOPs, the estimated step time and the estimated MFU
(vidgen/parallel/aot.py says where each number comes from). No TPU needed, only libtpu
(pip install -e ".[tpu]").

    python -m launch.aot_compile --config=launch/configs/dit_14b.py:720p_5s --topology=v5p-256 \
        [--config.mesh.sequence=2 ...] [--all_buckets] [--hbm_gib=80] [--noestimate_time]

--topology takes a Cloud TPU accelerator type (v5p-256: 256 TensorCores = 128 chips; v6e-64:
64 chips) or a libtpu topology name (v5p:4x4x8). --all_buckets compiles every bucket of
config.data.buckets (data_pipelines/buckets.py; else the config's one shape). Exits 1, after
printing the numbers, when a bucket does not fit.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")     # the TPU is only a compile target

from absl import app, flags                # noqa: E402
from ml_collections import config_flags    # noqa: E402

from data_pipelines import buckets as buckets_lib   # noqa: E402
from vidgen.parallel import aot            # noqa: E402
from vidgen.parallel.topology import GIB   # noqa: E402
from vidgen.train.tasks import get_task   # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CLI's flags (defined only when run as a program)."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file (:arg).")
    flags.DEFINE_string("topology", None, "Slice: v5p-256, v6e-64, v5p:4x4x8, ...")
    flags.DEFINE_bool("all_buckets", False, "Compile every bucket of config.data.buckets.")
    flags.DEFINE_float("hbm_gib", None, "Per-chip memory budget in GiB (default: the chip's).")
    flags.DEFINE_bool("estimate_time", True, "Estimate step time and MFU (for scanned layers: "
                      "two more compiles with 1 and 2 unrolled layers).")
    flags.DEFINE_float("attention_efficiency", aot.ATTENTION_EFFICIENCY,
                       "Assumed share of peak that the splash attention kernels reach.")
    flags.mark_flags_as_required(["config", "topology"])


def bucket_shapes(config, all_buckets: bool) -> list[aot.Bucket]:
    """The config's clip shape, or with all_buckets every bucket of its bucket table
    (config.data.buckets, data_pipelines/buckets.py) when it has one."""
    if not (all_buckets and config.data.get("buckets")):
        return [aot.config_bucket(config)]
    table = buckets_lib.BucketTable.from_config(config.data.buckets)
    return [aot.Bucket(b.num_frames, b.height, b.width, b.batch_size) for b in table.buckets]


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    task = get_task(config.task)
    hbm = None if FLAGS.hbm_gib is None else int(FLAGS.hbm_gib * GIB)
    misfits = []
    for bucket in bucket_shapes(config, FLAGS.all_buckets):
        print(f"== {FLAGS['config'].config_filename} on {FLAGS.topology}: {bucket}", flush=True)
        report = aot.compile_train_step(task, config, FLAGS.topology, bucket, hbm_bytes=hbm,
                                        estimate_time=FLAGS.estimate_time,
                                        attention_efficiency=FLAGS.attention_efficiency)
        print(report.summary(), flush=True)
        if not report.fits:
            misfits.append(str(bucket))
    if misfits:
        sys.exit(f"does not fit on {FLAGS.topology}: {'; '.join(misfits)}")


if __name__ == "__main__":
    define_flags()
    app.run(main)

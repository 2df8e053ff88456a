"""Estimated MFU of a production DiT config on a TPU slice, compiled ahead of time on this CPU
machine (no TPU; libtpu from setup.py's `tpu` extra): the dit_14b 720p x 5 s row of
benchmarks/RESULTS.md by default.

    python benchmarks/aot_mfu.py [--config=dit_14b:720p_5s --topology=v5p-256
                                  --attention_efficiency=0.5]

Prints the report of vidgen/parallel/aot.py (per-chip memory, model FLOPs, the compiler's cost,
the attention kernels' assumed cost, estimated step time), the estimated MFU for other assumed
attention kernel efficiencies, and last the line `estimated_mfu=R`. Scanned
layers take three compiles (the step, then 1 and 2 unrolled layers for the cost model): about
5 minutes and 4-6 GiB of memory for dit_14b on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from vidgen.parallel import aot     # noqa: E402
from vidgen.train.tasks import get_task     # noqa: E402


def sensitivity(report: aot.AotReport, efficiencies=(0.3, 0.5, 0.7, 1.0)) -> str:
    """The estimated MFU had the attention kernels reached other shares of peak."""
    mfus = [dataclasses.replace(report, attention_efficiency=e).estimated_mfu
            for e in efficiencies]
    return ("estimated MFU by the attention kernels' assumed efficiency: "
            + ", ".join(f"{e:.1f} -> {m:.3f}" for e, m in zip(efficiencies, mfus)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="dit_14b:720p_5s",
                        help="launch/configs/NAME.py and its arg, NAME:ARG")
    parser.add_argument("--topology", default="v5p-256")
    parser.add_argument("--attention_efficiency", type=float, default=aot.ATTENTION_EFFICIENCY)
    args = parser.parse_args()
    name, _, arg = args.config.partition(":")
    config = importlib.import_module(f"launch.configs.{name}").get_config(arg or None)
    report = aot.compile_train_step(get_task(config.task), config, args.topology,
                                    aot.config_bucket(config),
                                    attention_efficiency=args.attention_efficiency)
    print(f"{args.config} on {args.topology}")
    if report.estimated_mfu is not None:
        print(sensitivity(report))
    print(report.summary())
    if not report.fits:
        sys.exit(1)


if __name__ == "__main__":
    main()

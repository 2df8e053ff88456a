"""Multi-host start-up: JAX's distributed runtime from explicit settings or the cluster
environment, and logging that only process 0 does at INFO.

    started = distributed.initialize(coordinator_address, num_processes, process_id, mode="auto")

Call it before anything touches a JAX device. Afterwards every process sees all devices of the
job in `jax.devices()`, the mesh spans them, each process feeds its slice of every global batch
(data_pipelines shard by `jax.process_index()`; vidgen/parallel/mesh.py's `to_global` assembles
the global arrays) and orbax writes and reads checkpoints with all processes together. On CPU the
processes talk through gloo (JAX's default CPU collectives).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import jax

MODES = ("auto", "on", "off")


def cluster_detected(env: Mapping[str, str] = os.environ) -> bool:
    """Whether `env` is one process of a multi-process job that jax.distributed.initialize()
    configures by itself: Slurm with > 1 tasks, Open MPI with > 1 ranks, or a multi-host Cloud
    TPU slice (several TPU_WORKER_HOSTNAMES, or a Megascale coordinator)."""
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    return len(hosts) > 1 or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, mode: str = "auto",
               env: Mapping[str, str] = os.environ) -> bool:
    """Starts jax.distributed: with the three explicit settings when given (all or none), else
    from the cluster environment. mode 'auto' starts only when settings are given or
    `cluster_detected(env)`; 'on' always (e.g. a TPU pod JAX detects through its metadata
    server); 'off' never. Returns whether it started."""
    if mode not in MODES:
        raise ValueError(f"distributed mode {mode!r}: expected one of {MODES}")
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("coordinator_address, num_processes and process_id go together "
                         f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})")
    if mode == "off" or (mode == "auto" and not any(given) and not cluster_detected(env)):
        return False
    if all(given):
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id={process_id}: must be in [0, num_processes="
                             f"{num_processes})")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()
    return True


def quiet_other_processes(level: int = logging.WARNING) -> None:
    """Logs at `level` and above only (root and absl loggers) on every process but 0, so one
    job prints one log."""
    if jax.process_index() != 0:
        logging.getLogger().setLevel(level)
        logging.getLogger("absl").setLevel(level)

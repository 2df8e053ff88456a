"""The processes of tests/parallel/test_multihost.py, and the config, data and task they share.

    python tests/parallel/multihost_worker.py host PORT PROCESS_ID WORKDIR   # one of two hosts
    python tests/parallel/multihost_worker.py single WORKDIR                 # the reference

A host process holds one CPU device and reads its half of every global batch. It trains 2 of
the 4 steps (ZeRO-3 FSDP over the two processes; checkpoint at step 2), stops as if killed, then
trains again from the same workdir: the second run restores the step-2 checkpoint that both
processes wrote and finishes. The reference is one process with two devices, uninterrupted.
Process 0 writes result.json with the final loss. To keep the test within CI's budget the
processes compile fast (LLVM -O0 and XLA:CPU's older fusion emitters: the test sets XLA_FLAGS)
and the resumed run reads its programs from a persistent compilation cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from launch.configs import dit_tiny
from vidgen.parallel import distributed
from vidgen.train import loop
from vidgen.train.tasks import dit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "train"))
from test_loop import KillAfter, Killed  # noqa: E402  (tests/train/test_loop.py)

BATCH, LATENT, TEXT_LEN = 4, (3, 4, 4, 4), 32


def config() -> ml_collections.ConfigDict:
    """dit_tiny:tiny (joint text encoder) on 4-channel latents, 4 steps, checkpoints every 2."""
    c = dit_tiny.get_config("tiny")
    c.model.update(in_channels=4, out_channels=4)
    c.update(total_steps=4, log_every=2, ema_decay=0.5)
    c.optim.update(lr=1e-3, warmup_steps=0)
    c.checkpoint.update(every_steps=2, keep=2)
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, sequence=1))
    return c


def _example(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {"latents": rng.normal(size=LATENT).astype(np.float32),
            "text_ids": rng.integers(3, 64, size=TEXT_LEN).astype(np.int32),
            "text_mask": np.arange(TEXT_LEN) < rng.integers(2, TEXT_LEN)}


def dataset(process: int, processes: int) -> grain.DatasetIterator:
    """This process's slice of every global batch of BATCH examples (global batch s holds
    examples s * BATCH ... in process order)."""
    local = (grain.MapDataset.range(10_000).map(_example).batch(BATCH // processes)
             [process::processes])
    return iter(local.to_iter_dataset())


def _final_loss(model: nnx.Module, batches, cfg: ml_collections.ConfigDict) -> dict:
    """The EMA model's loss on the next global batch (fixed noise): run on all processes."""
    graphdef, state = nnx.split(model)
    loss = jax.jit(lambda state, batch: dit.loss_fn(
        nnx.merge(graphdef, state), batch, jax.random.key(7), jnp.int32(0), cfg)[0])
    return {"loss": float(loss(state, next(iter(batches))))}


TASK = dataclasses.replace(dit.TASK, finalize=_final_loss)


def _cache(workdir: str) -> None:
    """A persistent compilation cache under workdir, for every program."""
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def host(port: str, process_id: str, workdir: str) -> None:
    """One of the two host processes (see the module docstring)."""
    distributed.initialize(f"localhost:{port}", 2, int(process_id))
    logging.basicConfig(level=logging.INFO, force=True)    # absl would drop INFO here
    distributed.quiet_other_processes()
    _cache(workdir)
    assert jax.process_count() == 2 and jax.device_count() == 2
    cfg, pid = config(), jax.process_index()
    with contextlib.suppress(Killed):     # dies after the step-2 checkpoint
        loop.train(TASK, cfg, workdir, KillAfter(dataset(pid, 2), 2))
    result = loop.train(TASK, cfg, workdir, dataset(pid, 2))
    logging.info("worker %d finished at step %d", pid, result["step"])


def single(workdir: str) -> None:
    """The reference: one process, two devices, 4 steps in one go."""
    _cache(workdir)
    assert jax.device_count() == 2
    loop.train(TASK, config(), workdir, dataset(0, 1))


if __name__ == "__main__":
    {"host": host, "single": single}[sys.argv[1]](*sys.argv[2:])

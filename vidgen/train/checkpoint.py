"""Checkpoints: an orbax CheckpointManager holding three items per step, plus preemption.

    {directory}/{step}/state   the TrainState (sharded arrays, restored into their shardings)
    {directory}/{step}/data    the grain iterator state, one JSON file per process
    {directory}/{step}/meta    JSON: config, task name, task extras (e.g. latent statistics)

Saves are asynchronous (the step loop goes on while arrays are written) and atomic: orbax
writes into `{step}.orbax-checkpoint-tmp-*` and renames only when every item is complete, so a
process killed mid-save leaves the previous checkpoint as the latest one; leftovers of such a
save are removed when the next manager opens the directory.

A run may resume on a different number of hosts: each process then restores the iterator state
that process 0 saved. That is exact for the bucketed pipeline (data_pipelines/bucketed.py: its
state is the next global step, the same on every host); a per-host pipeline restarts its shard
of the current epoch from process 0's position, and a warning says so.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx
from etils import epath
from ml_collections import ConfigDict

log = logging.getLogger(__name__)


class DataIteratorHandler(grain.checkpoint.CheckpointHandler):
    """grain's iterator handler, which also restores when the number of processes changed."""

    def restore(self, directory: epath.Path, item: Any = None, args: Any = None) -> Any:
        count = jax.process_count()
        if (directory / f"process_{jax.process_index()}-of-{count}.json").exists():
            return super().restore(directory, item, args)
        saved = sorted(directory.glob("process_0-of-*.json"))
        if not saved:
            raise ValueError(f"{directory}: no data iterator state to restore")
        item = item or args.item
        log.warning("checkpoint: saved by %s process(es), restoring on %d: every process takes "
                    "process 0's data iterator state (%s)", saved[0].stem.split("-of-")[-1],
                    count, saved[0].name)
        item.set_state(json.loads(saved[0].read_text()))
        item.start_prefetch()
        return item


@ocp.args.register_with_handler(DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
    """Saves a grain DatasetIterator's state (see DataIteratorHandler)."""
    item: Any


@ocp.args.register_with_handler(DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
    """Restores a grain DatasetIterator's state in place (see DataIteratorHandler)."""
    item: Any


class Checkpointer:
    """Saves every `every_steps` steps (or when forced), keeps the last `keep`; restores."""

    def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
        if every_steps < 1:
            raise ValueError(f"config.checkpoint.every_steps={every_steps}: must be >= 1")
        if keep < 1:
            raise ValueError(f"config.checkpoint.keep={keep}: must be >= 1")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self.every_steps = every_steps

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None when there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of all complete checkpoints kept on disk."""
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iter: grain.DatasetIterator, meta: dict,
             *, force: bool = False) -> bool:
        """Starts saving (state, iterator state, meta) if `step` is due or `force`; returns
        whether it did. Call right after the step, before the iterator moves on."""
        if not (force or step % self.every_steps == 0) or step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=DataSave(data_iter),
                                  meta=ocp.args.JsonSave(meta))
        if jax.process_index() == 0:
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return self._manager.save(step, args=args, force=True)

    def restore(self, step: int, abstract_state: Any,
                data_iter: grain.DatasetIterator) -> tuple[Any, dict]:
        """Restores step into `abstract_state`'s shapes and shardings; sets data_iter's state
        in place. Returns (state, meta)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  data=DataRestore(data_iter),
                                  meta=ocp.args.JsonRestore())
        restored = self._manager.restore(step, args=args)
        if jax.process_index() == 0:
            log.info("checkpoint: restored step %d from %s", step, self.directory)
        return restored.state, restored.meta

    def reached_preemption(self, step: int) -> bool:
        """Multi-host: whether JAX's preemption service asks every host to save at `step`."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until the pending asynchronous save (if any) is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's threads."""
        self._manager.wait_until_finished()
        self._manager.close()


class PreemptionGuard:
    """Context manager: while active, SIGTERM only sets `requested` (the loop then saves and
    exits cleanly) instead of killing the process. It stays out of the way outside the main
    thread and in multi-host runs, where JAX's preemption service owns SIGTERM and
    `Checkpointer.reached_preemption` gives every host the same stop step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        del frame
        log.warning("received signal %d: will checkpoint and stop after this step", signum)
        self.requested = True

    def __enter__(self) -> PreemptionGuard:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _read_meta(manager: ocp.CheckpointManager, directory: str, step: int | None
               ) -> tuple[dict, int]:
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(f"no checkpoint{'' if step is None else f' at step {step}'} "
                                f"in {directory} (steps: {list(manager.all_steps())})")
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta, step


def read_meta(directory: str, step: int | None = None) -> tuple[dict, int, list[int]]:
    """(meta, step, every step) of a checkpoint directory's `step` (default: the newest): the
    config and task saved with it, without reading any arrays."""
    manager = ocp.CheckpointManager(os.path.abspath(directory))
    try:
        meta, step = _read_meta(manager, directory, step)
        return meta, step, sorted(manager.all_steps())
    finally:
        manager.close()


def load_trained_model(directory: str, build_model: Callable[[ConfigDict, nnx.Rngs], nnx.Module],
                       step: int | None = None) -> tuple[nnx.Module, ConfigDict, dict]:
    """The model of a training checkpoint with its EMA parameters (what evaluation and
    sampling use), rebuilt from the config saved with it; returns (model, config, meta).

    Only the EMA parameters and the model's other variables are read, never the optimizer
    state; `step` defaults to the newest checkpoint in `directory`."""
    manager = ocp.CheckpointManager(os.path.abspath(directory))
    try:
        meta, step = _read_meta(manager, directory, step)
        config = ConfigDict(meta["config"])
        with nnx.use_eager_sharding(False):
            abstract_model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0)))
        graphdef, params, rest = nnx.split(abstract_model, nnx.Param, ...)
        abstract = {"ema": params, "rest": rest}
        state = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(abstract, partial_restore=True))).state
    finally:
        manager.close()
    return nnx.merge(graphdef, state["ema"], state["rest"]), config, {**meta, "step": step}

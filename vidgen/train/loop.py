"""The one training loop every task uses: mesh, input, sharded state, update, checkpoints, eval.

    result = train(task, config, workdir, train_iter, eval_clips)

`train_iter` is any grain iterator of host-local NumPy batches (dicts with a leading batch
axis) with get_state()/set_state(); the loop turns each into global arrays on the mesh. Running
again with the same workdir resumes from the latest checkpoint: the same params, optimizer
state, EMA, step, rng stream and data order as an uninterrupted run.

Config keys read here: seed, total_steps, log_every, eval_every, ema_decay,
max_nonfinite_steps, optim.* (vidgen/train/optim.py), mesh.* (vidgen/parallel/mesh.py, with an
optional mesh.rules table overriding its DEFAULT_RULES), checkpoint.every_steps / keep /
async_save, and the optional init_from (a folder of pretrained weights that task.init_from
loads into a fresh run's params and EMA; "" or absent: the task's own init).

Multi-host: every process runs this same loop on its own iterator of host-local batches (its
slice of each global batch); checkpoints are written and restored by all processes together
(orbax; the grain state per process) and only process 0 logs and writes TensorBoard events.

Workdir layout: checkpoints/{step}/ (orbax), tb/ (TensorBoard), result.json (final eval and
task extras), plus whatever task.evaluate writes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vidgen.parallel import mesh as mesh_lib
from vidgen.train import checkpoint as ckpt_lib
from vidgen.train import metrics as metrics_lib
from vidgen.train import optim
from vidgen.train import state as state_lib
from vidgen.train.tasks import Task

ConfigDict = ml_collections.ConfigDict
log = logging.getLogger(__name__)


def validate_config(config: ConfigDict, num_devices: int | None = None) -> None:
    """Rejects loop settings that cannot run (naming key and value), before anything heavy."""
    for key in ("total_steps", "log_every", "eval_every", "max_nonfinite_steps",
                "checkpoint.every_steps", "checkpoint.keep"):
        value = config
        for part in key.split("."):
            value = value[part]
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"config.{key}={value!r}: must be an integer >= 1")
    if not 0.0 <= config.ema_decay <= 1.0:
        raise ValueError(f"config.ema_decay={config.ema_decay}: must be in [0, 1]")
    optim.make_optimizer(config.optim, config.total_steps)
    mesh_lib.mesh_shape(config.mesh, jax.device_count() if num_devices is None else num_devices)
    mesh_lib.rules_from_config(config.mesh)
    init_from = config.get("init_from", "")
    if init_from and not os.path.isfile(os.path.join(init_from, "config.json")):
        raise ValueError(f"config.init_from={init_from!r}: not a folder of pretrained weights "
                         "(no config.json there)")


def _init_from(task: Task, plan: state_lib.StatePlan, state, config: ConfigDict):
    """The freshly born state with the weights of config.init_from (task.init_from places each
    into its sharding) as params and EMA; optimizer moments stay zero."""
    model = nnx.merge(plan.graphdef, state.params, state.rest)
    task.init_from(config, model)
    params = nnx.state(model, nnx.Param)
    ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=plan.shardings.ema)(params)
    log.info("initialised the %s task's parameters from %s", task.name, config.init_from)
    return state.replace(params=params, ema=ema)


def _global_batches(train_iter: Iterator[dict], mesh,
                    prepare: Callable[[dict], dict] | None = None) -> Iterator[dict]:
    """Host-local batches from train_iter as global arrays on the mesh (then through the task's
    prepare_batch, if any), until it ends."""
    for host_batch in train_iter:
        batch = mesh_lib.to_global(host_batch, mesh)
        yield batch if prepare is None else prepare(batch)


def _fetch(metrics: dict, step: int, limit: int) -> dict:
    """Host copy of a step's metrics; raises once `limit` steps in a row were non-finite."""
    metrics = jax.device_get(metrics)
    if int(metrics["nonfinite_run"]) >= limit:
        raise FloatingPointError(
            f"{int(metrics['nonfinite_run'])} consecutive non-finite steps up to step {step} "
            f"(config.max_nonfinite_steps={limit}; last loss {float(metrics['loss'])}, grad "
            f"norm {float(metrics['grad_norm'])}). Those updates were skipped, so params are "
            "those of the last finite step and the last saved checkpoint is intact.")
    return metrics


def _evaluate(task: Task, plan: state_lib.StatePlan, state, eval_clips, workdir: str, step: int,
              config: ConfigDict, mesh, rules, writer) -> dict[str, float]:
    """task.evaluate on the EMA model; logs and writes the scalars as eval/*."""
    with mesh_lib.mesh_context(mesh, rules):
        scalars = task.evaluate(nnx.merge(plan.graphdef, state.ema, state.rest), eval_clips,
                                workdir, step, config)
    writer.write(step, scalars, prefix="eval/")
    if metrics_lib.is_chief():
        log.info("eval at step %d: %s", step,
                 ", ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
    return scalars


def _finalize(task: Task, plan: state_lib.StatePlan, state, train_iter, config: ConfigDict,
              mesh, rules, prepare: Callable[[dict], dict] | None) -> dict | None:
    """task.finalize on the EMA model and training batches; the iterator is rewound after, so
    the final checkpoint's data state is the one training ended with."""
    if task.finalize is None:
        return None
    data_state = train_iter.get_state()
    with mesh_lib.mesh_context(mesh, rules):
        extras = task.finalize(nnx.merge(plan.graphdef, state.ema, state.rest),
                               _global_batches(train_iter, mesh, prepare), config)
    train_iter.set_state(data_state)
    return extras


def _write_result(workdir: str, result: dict) -> None:
    if metrics_lib.is_chief():
        with open(os.path.join(workdir, "result.json"), "w") as f:
            json.dump(result, f, indent=2)


def _log_window(step: int, total: int, window: list[dict], throughput, compiles, writer) -> None:
    """Writes the window's mean metrics, throughput and compile count; prints the progress."""
    scalars = {**metrics_lib.summarize(window), **throughput.report(step),
               "compiles": compiles.count}
    writer.write(step, scalars, prefix="train/")
    if metrics_lib.is_chief():
        log.info(metrics_lib.progress_line(step, total, scalars))


def train(task: Task, config: ConfigDict, workdir: str, train_iter, eval_clips: dict | None = None,
          *, devices: Sequence[jax.Device] | None = None) -> dict:
    """Trains `task` to config.total_steps (resuming from workdir if it has checkpoints).

    Returns the result dict (also in {workdir}/result.json and the final checkpoint): step,
    final eval metrics, task extras from finalize; or {"step", "preempted": True} when a SIGTERM
    stopped the run early (after saving a checkpoint to resume from).
    """
    validate_config(config, len(devices) if devices is not None else None)
    if config.get("init_from") and task.init_from is None:    # before building any state
        raise ValueError(f"config.init_from={config.init_from!r}: the {task.name} task cannot "
                         "start from imported weights")
    os.makedirs(workdir, exist_ok=True)
    total, limit = config.total_steps, config.max_nonfinite_steps
    # --- Mesh -----------------------------------------------------------------------------
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    rules = mesh_lib.rules_from_config(config.mesh)
    # --- Model ----------------------------------------------------------------------------
    tx = optim.make_optimizer(config.optim, total)
    # --- Shard: shapes from eval_shape, shardings from the rules, init jitted into them ---
    plan = state_lib.plan_train_state(
        lambda: task.build_model(config, nnx.Rngs(config.seed)), tx, mesh, rules)
    # --- Checkpoint: resume from the latest, else init on the mesh ------------------------
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 every_steps=config.checkpoint.every_steps,
                                 keep=config.checkpoint.keep,
                                 async_save=config.checkpoint.async_save)
    meta = {"task": task.name, "config": json.loads(config.to_json_best_effort())}
    latest = ckpt.latest_step()
    if latest is None:
        state = plan.init()
        if config.get("init_from"):             # imported weights: only a fresh run reads them
            state = _init_from(task, plan, state, config)
    else:
        state, saved_meta = ckpt.restore(latest, plan.abstract, train_iter)
        if latest >= total and "result" in saved_meta:
            ckpt.close()
            log.info("workdir %s already holds the finished run (step %d)", workdir, latest)
            return saved_meta["result"]
    # --- Input (host-local batches -> global arrays; pulled one step at a time) ----------
    with mesh_lib.mesh_context(mesh, rules):
        prepare = task.prepare_batch(config) if task.prepare_batch is not None else None
    batches = _global_batches(train_iter, mesh, prepare)
    # --- Update ---------------------------------------------------------------------------
    update = state_lib.make_train_step(plan, task, tx, optim.make_schedule(config.optim, total),
                                       config, mesh, rules)
    writer = metrics_lib.ScalarWriter(os.path.join(workdir, "tb"))
    step, window, pending, throughput = int(state.step), [], None, None
    try:
        with ckpt_lib.PreemptionGuard() as guard, metrics_lib.CompileCounter() as compiles:
            # --- Loop -----------------------------------------------------------------------
            while step < total:
                if (batch := next(batches, None)) is None:
                    raise RuntimeError(f"the training iterator ran out after step {step} of "
                                       f"{total}")
                state, step_metrics = update(state, batch)
                step += 1
                if pending is not None:       # one step behind, so the host never waits
                    window.append(_fetch(*pending, limit))
                pending = (step_metrics, step)
                if throughput is None:        # time from the end of the first (compiling) step
                    jax.block_until_ready(step_metrics)
                    throughput = metrics_lib.Throughput(total, jax.tree.leaves(batch)[0].shape[0])
                    throughput.start(step)
                stop = guard.requested or ckpt.reached_preemption(step)
                if step % config.log_every == 0 or step == total or stop:
                    window.append(_fetch(*pending, limit))
                    pending = None
                    _log_window(step, total, window, throughput, compiles, writer)
                    window = []
                if eval_clips is not None and step % config.eval_every == 0 and step < total:
                    _evaluate(task, plan, state, eval_clips, workdir, step, config, mesh, rules,
                              writer)
                if step < total:
                    ckpt.save(step, state, train_iter, meta, force=stop)
                if stop and step < total:
                    log.warning("preempted: saved step %d, stopping; rerun to resume", step)
                    return {"step": step, "preempted": True}
            # --- Final eval, finalize, last checkpoint ----------------------------------------
            result = {"task": task.name, "step": step, "compiles": compiles.count,
                      "nonfinite_total": int(state.nonfinite_total)}
            if eval_clips is not None:
                result["eval"] = _evaluate(task, plan, state, eval_clips, workdir, step, config,
                                           mesh, rules, writer)
            result["extras"] = _finalize(task, plan, state, train_iter, config, mesh, rules,
                                         prepare)
            _write_result(workdir, result)
            ckpt.save(step, state, train_iter, {**meta, "result": result}, force=True)
            return result
    finally:
        ckpt.close()
        writer.close()

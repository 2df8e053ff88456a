"""What a training task hands the shared loop (vidgen/train/loop.py): pure functions only.

The loop owns everything task-agnostic (mesh, sharded state, optimizer, EMA, checkpoints, metrics,
preemption); a task says how to build its model, what its loss is, how to evaluate, and which
configs it accepts. Each task module (e.g. vidgen/train/tasks/vae.py) exports one `TASK`.
`get_task` finds a task by config.task; `load_pretrained_into` is the shared half of the tasks'
init_from hooks.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

ConfigDict = ml_collections.ConfigDict


@dataclasses.dataclass(frozen=True)
class Task:
    """A training task.

    build_model(config, rngs) -> module holding everything trainable (e.g. VAE + discriminator).
    loss_fn(model, batch, rng, step, config) -> (scalar loss, dict of scalar metrics); traced
        inside the jitted step, batch is a dict of global jax.Arrays (leading axis = batch).
    evaluate(ema_model, eval_clips, workdir, step, config) -> dict of float metrics; may write
        files (videos, PNG strips) under workdir.
    finalize(ema_model, batches, config) -> JSON-able dict stored with the last checkpoint and
        in {workdir}/result.json (e.g. latent statistics), or None for no such step.
    validate_config(config) raises ValueError naming the bad key and value; the launcher calls
        it before anything heavy.
    prepare_batch(config) -> fn(global batch) -> batch, or None: built once when training starts,
        applied to every global batch before the step, outside the differentiated function
        (e.g. a frozen VAE encoding video to latents, so its weights are neither trained nor
        checkpointed with the task's state).
    example_fields(config) -> fn(record metadata) -> dict of arrays, or None: per-clip fields
        the input pipeline adds to each example (e.g. caption token ids).
    init_from(config, model) or None: overwrites, in place, the parameters of the freshly
        initialised sharded model that config.init_from (a folder of pretrained weights) holds;
        the loop calls it when a run starts (set config.init_from), never when it resumes.
    """

    name: str
    build_model: Callable[[ConfigDict, nnx.Rngs], nnx.Module]
    loss_fn: Callable[[nnx.Module, dict[str, jax.Array], jax.Array, jax.Array, ConfigDict],
                      tuple[jax.Array, dict[str, jax.Array]]]
    evaluate: Callable[[nnx.Module, dict, str, int, ConfigDict], dict[str, float]]
    finalize: Callable[[nnx.Module, Iterable[dict], ConfigDict], dict] | None
    validate_config: Callable[[ConfigDict], None]
    prepare_batch: Callable[[ConfigDict], Callable[[dict], dict]] | None = None
    example_fields: Callable[[ConfigDict], Callable[[dict], dict]] | None = None
    init_from: Callable[[ConfigDict, nnx.Module], None] | None = None


def _host_device() -> jax.Device | None:
    """This process's CPU device, where imported weights wait (not on an accelerator's first
    device); None where JAX runs without a CPU backend."""
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:
        return None


def load_pretrained_into(target: nnx.Module, load: Callable[..., nnx.Module], path: str,
                         keep: Sequence[str] = ("dtype", "param_dtype")) -> None:
    """Overwrites target's parameters, in place and in their shardings, with those of the
    pretrained model load(path, **kept) (e.g. wan_dit.load_pretrained) read on the host; each
    device receives only its shard. `keep` names the fields of target.config (a dataclass, from
    config.model) that a weights folder does not fix and that are passed through (dtypes, remat);
    any other field in which the folder's model differs raises a ValueError naming it."""
    ours = target.config
    with jax.default_device(_host_device()):
        source = load(path, **{name: getattr(ours, name) for name in keep})
    for field in dataclasses.fields(ours):
        theirs, want = getattr(source.config, field.name), getattr(ours, field.name)
        if theirs != want:
            raise ValueError(f"config.init_from={path!r} holds a model with {field.name}="
                             f"{theirs!r}, but config.model.{field.name}={want!r}")
    imported = dict(nnx.to_flat_state(nnx.state(source, nnx.Param)))
    params = nnx.state(target, nnx.Param)
    for key, var in nnx.to_flat_state(params):
        host = np.asarray(imported[key].get_value())
        var.set_value(jax.make_array_from_callback(host.shape, var.get_value().sharding,
                                                   lambda index, host=host: host[index]))
    nnx.update(target, params)


TASK_NAMES = ("dit", "vae")


def get_task(name: str) -> Task:
    """The TASK of vidgen/train/tasks/{name}.py (imported only when asked for: each pulls in its
    models); raises naming the known tasks."""
    if name not in TASK_NAMES:
        raise ValueError(f"config.task={name!r}: unknown task, expected one of "
                         f"{sorted(TASK_NAMES)}")
    return importlib.import_module(f"vidgen.train.tasks.{name}").TASK

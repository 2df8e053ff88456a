"""What a training task hands the shared loop (vidgen/train/loop.py): pure functions only.

The loop owns everything task-agnostic (mesh, sharded state, optimizer, EMA, checkpoints, metrics,
preemption); a task says how to build its model, what its loss is, how to evaluate, and which
configs it accepts. Each task module (e.g. vidgen/train/tasks/vae.py) exports one `TASK`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import jax
import ml_collections
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

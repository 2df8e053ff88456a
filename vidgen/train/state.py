"""The train state, born sharded on the mesh, and the pure update step over it.

`plan_train_state` traces the task's model once abstractly (`jax.eval_shape`), derives every
array's sharding from the logical-axis rules (vidgen/parallel/mesh.py), then jits the init with
`out_shardings`, so no full-size array ever lands on one device or the host.

`make_train_step` returns the jitted step: merge the model from (graphdef, state) inside, take
`jax.value_and_grad` of the task loss, and apply AdamW + EMA only when loss and gradients are
finite; a non-finite step leaves params, optimizer state and EMA untouched and is counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding

from vidgen.parallel import mesh as mesh_lib
from vidgen.train import optim
from vidgen.train.tasks import Task

ConfigDict = ml_collections.ConfigDict


@struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; checkpointed as a whole)."""

    step: jax.Array             # int32 [], number of steps taken (skipped ones included)
    params: nnx.State           # the trainable nnx.Param variables
    rest: nnx.State             # the model's other variables (rng counters, running stats)
    opt_state: optax.OptState
    ema: nnx.State              # EMA of params: what evaluation uses
    nonfinite_run: jax.Array    # int32 [], consecutive skipped (non-finite) steps
    nonfinite_total: jax.Array  # int32 [], all skipped steps


def abstract_model(build: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, abstract params, abstract rest) of the model `build` makes; allocates nothing."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(build)
    return nnx.split(model, nnx.Param, ...)


@dataclasses.dataclass(frozen=True)
class StatePlan:
    """How the train state is laid out on the mesh, before any of it exists.

    graphdef: the model's static structure (nnx.merge(graphdef, params, rest) rebuilds it).
    shardings: TrainState-shaped tree of NamedShardings.
    abstract: TrainState-shaped tree of ShapeDtypeStructs carrying those shardings (what a
        checkpoint restores into).
    init: () -> TrainState, jitted with out_shardings=shardings (state is born sharded).
    """

    graphdef: nnx.GraphDef
    shardings: Any
    abstract: Any
    init: Callable[[], TrainState]


def plan_train_state(build: Callable[[], nnx.Module], tx: optax.GradientTransformation,
                     mesh: Mesh, rules: mesh_lib.LogicalRules = mesh_lib.DEFAULT_RULES
                     ) -> StatePlan:
    """Traces the model and optimizer init abstractly and shards every array by the rules."""

    def init() -> TrainState:
        with nnx.use_eager_sharding(False):
            model = build()
        _, params, rest = nnx.split(model, nnx.Param, ...)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(step=zero, params=params, rest=rest, opt_state=tx.init(params),
                          ema=jax.tree.map(jnp.copy, params), nonfinite_run=zero,
                          nonfinite_total=zero)

    graphdef, _, _ = abstract_model(build)
    shapes = jax.eval_shape(init)
    shardings = mesh_lib.tree_shardings(shapes, mesh, rules)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            shapes, shardings)
    jitted = jax.jit(init, out_shardings=shardings)

    def init_on_mesh() -> TrainState:
        with mesh_lib.mesh_context(mesh, rules):
            return jitted()

    return StatePlan(graphdef, shardings, abstract, init_on_mesh)


def apply_gradients(state: TrainState, grads: nnx.State, rest: nnx.State,
                    tx: optax.GradientTransformation, ema_decay: float,
                    finite: jax.Array) -> TrainState:
    """The optimizer + EMA update, kept only where `finite` (params etc. untouched otherwise)."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optim.ema_update(state.ema, params, ema_decay)

    def keep(new, old):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

    skipped = 1 - finite.astype(jnp.int32)
    return state.replace(
        step=state.step + 1, params=keep(params, state.params), rest=keep(rest, state.rest),
        opt_state=keep(opt_state, state.opt_state), ema=keep(ema, state.ema),
        nonfinite_run=(state.nonfinite_run + 1) * skipped,
        nonfinite_total=state.nonfinite_total + skipped)


StepFn = Callable[[TrainState, dict], tuple[TrainState, dict]]


def make_train_step(plan: StatePlan, task: Task, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, config: ConfigDict, mesh: Mesh,
                    rules: mesh_lib.LogicalRules = mesh_lib.DEFAULT_RULES) -> StepFn:
    """The jitted step (state, global batch) -> (new state, scalar metrics); donates state.

    The step's rng depends on (config.seed, step) only, so a resumed run draws the same noise.
    Metrics: the task's, plus loss, grad_norm (before clipping), lr, finite, nonfinite_run and
    nonfinite_total.
    """
    base_key = jax.random.fold_in(jax.random.key(config.seed), 1)
    graphdef, shardings = plan.graphdef, plan.shardings

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(base_key, state.step)

        def loss(params, rest):
            rest = jax.tree.map(lambda x: x, rest)   # fresh Variables: mutable in this trace
            model = nnx.merge(graphdef, params, rest)
            value, metrics = task.loss_fn(model, batch, rng, state.step, config)
            return value, (metrics, nnx.state(model, nnx.Not(nnx.Param)))

        (value, (metrics, rest)), grads = jax.value_and_grad(loss, has_aux=True)(
            state.params, state.rest)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(value) & jnp.isfinite(grad_norm)
        new = apply_gradients(state, grads, rest, tx, config.ema_decay, finite)
        out = {**metrics, "loss": value, "grad_norm": grad_norm, "lr": schedule(state.step),
               "finite": finite, "nonfinite_run": new.nonfinite_run,
               "nonfinite_total": new.nonfinite_total}
        return new, out

    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
    jitted = jax.jit(step_fn, in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                     out_shardings=(shardings, replicated), donate_argnums=0)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        with mesh_lib.mesh_context(mesh, rules):
            return jitted(state, batch)

    def lower(state: TrainState, batch: dict) -> jax.stages.Lowered:
        """The step lowered for (abstract) state and batch: ahead-of-time compiles (aot.py)."""
        with mesh_lib.mesh_context(mesh, rules):
            return jitted.lower(state, batch)

    train_step.lower = lower
    return train_step

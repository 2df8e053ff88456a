"""The sampling program of vidgen/generate.py: CFG scale and time shift are traced, so a sweep
over them compiles once, and its samples equal those of a program with both baked in as
constants (what a static-argument jit compiles per value)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen import generate
from vidgen.models.dit import DiT, DiTConfig
from vidgen.train.metrics import CompileCounter

TINY = DiTConfig(in_channels=4, out_channels=4, hidden_dim=32, num_layers=1, num_heads=2,
                 mlp_dim=48, text_dim=16, freq_dim=32)
SOLVER, STEPS = "euler", 3


@pytest.fixture(scope="module")
def inputs():
    """(graphdef, params of a random DiT, context [2B, L, D], mask [2B, L], noise [B, ...]);
    the DiT's output layer is random too, so the velocity, and with it the CFG scale, matter."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: DiT(TINY, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var.set_value(jnp.asarray(0.2 * rng.normal(size=var.shape) + (path[-1] == "scale"),
                                  jnp.float32))
    graphdef, state = nnx.split(model)
    context = jnp.asarray(rng.normal(size=(4, 5, TINY.text_dim)), jnp.float32)
    mask = jnp.asarray(np.arange(5)[None] < np.array([[5], [3], [1], [1]]))
    noise = jnp.asarray(rng.normal(size=(2, 2, 4, 4, 4)), jnp.float32)
    return graphdef, state, context, mask, noise


def _baked(graphdef, cfg_scale: float, shift: float):
    """The sampling program with cfg_scale and shift as compile-time constants."""
    run = generate.sample_latents.__wrapped__
    return jax.jit(lambda state, context, mask, noise: run(
        graphdef, state, context, mask, noise, cfg_scale, shift, solver=SOLVER, num_steps=STEPS))


def test_cfg_scale_and_shift_sweep_compiles_once_and_matches_baked_constants(inputs):
    graphdef, state, context, mask, noise = inputs
    settings = [(4.0, 1.0), (1.5, 1.0), (1.5, 3.0)]          # (cfg_scale, shift)
    outputs = []
    with CompileCounter() as compiles:
        for i, (scale, shift) in enumerate(settings):
            outputs.append(np.asarray(generate.sample_latents(
                graphdef, state, context, mask, noise, scale, shift, solver=SOLVER,
                num_steps=STEPS)))
            if i == 0:
                first = compiles.count
    print(f"compiles: first call {first}, the other {len(settings) - 1} settings "
          f"{compiles.count - first}")
    assert first >= 1 and compiles.count == first
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-3      # the scale reaches the solver
    assert np.abs(outputs[1] - outputs[2]).max() > 1e-3      # and so does the shift
    want = np.asarray(_baked(graphdef, *settings[-1])(state, context, mask, noise))
    err = float(np.abs(outputs[-1] - want).max())
    print(f"cfg {settings[-1][0]}, shift {settings[-1][1]}: max |traced - baked| {err:.1e}")
    assert err <= 1e-6

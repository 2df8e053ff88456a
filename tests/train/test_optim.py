"""The optimizer from config (vidgen/train/optim.py) against closed forms and a float64 NumPy
AdamW with global-norm clipping."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vidgen.train import optim

TOTAL = 100


def optim_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=10, end_lr_factor=0.1, b1=0.9,
                                       b2=0.99, weight_decay=0.05, grad_clip=1.0))
    c.update(overrides)
    return c


def expected_lr(step: int, lr=1e-3, warmup=10, total=TOTAL, end_factor=0.1) -> float:
    """Linear warmup from 0, then cosine from lr down to end_factor * lr at `total`."""
    if step < warmup:
        return lr * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    end = lr * end_factor
    return end + (lr - end) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("step", [0, 1, 5, 10, 11, 40, 55, 99, 100, 150])
def test_schedule_matches_formula(step):
    schedule = optim.make_schedule(optim_config(), TOTAL)
    np.testing.assert_allclose(float(schedule(step)), expected_lr(step), rtol=1e-5, atol=1e-12)


def test_schedule_rejects_warmup_longer_than_training():
    with pytest.raises(ValueError, match="config.optim.warmup_steps=100"):
        optim.make_schedule(optim_config(warmup_steps=100), TOTAL)


def reference_adamw(params, grads_per_step, c, total):
    """float64 AdamW: clip to global norm c.grad_clip, Adam moments with bias correction, lr
    from the schedule formula, decoupled weight decay on >= 2-dim arrays."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in params.items()}
    nu = {k: np.zeros_like(v) for k, v in params.items()}
    for t, grads in enumerate(grads_per_step):
        grads = {k: g.astype(np.float64) for k, g in grads.items()}
        norm = math.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
        if c.grad_clip > 0 and norm > c.grad_clip:
            grads = {k: g * c.grad_clip / norm for k, g in grads.items()}
        lr = expected_lr(t, c.lr, c.warmup_steps, total, c.end_lr_factor)
        for k in params:
            mu[k] = c.b1 * mu[k] + (1 - c.b1) * grads[k]
            nu[k] = c.b2 * nu[k] + (1 - c.b2) * grads[k] ** 2
            m_hat, v_hat = mu[k] / (1 - c.b1 ** (t + 1)), nu[k] / (1 - c.b2 ** (t + 1))
            update = m_hat / (np.sqrt(v_hat) + 1e-8)
            if params[k].ndim >= 2:
                update = update + c.weight_decay * params[k]
            params[k] = params[k] - lr * update
    return params


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_adamw_with_clipping_matches_float64_reference(grad_clip):
    c = optim_config(warmup_steps=2, grad_clip=grad_clip)
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
              "bias": rng.normal(size=(4,)).astype(np.float32)}
    # a huge first gradient then small ones: clipping changes Adam's second moment a lot
    scales = [100.0, 0.3, 0.5, 0.2, 0.1]
    grads = [{k: (s * rng.normal(size=v.shape)).astype(np.float32) for k, v in params.items()}
             for s in scales]
    tx = optim.make_optimizer(c, total_steps=10)
    state, p = tx.init(params), jax.tree.map(jnp.asarray, params)
    for g in grads:
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
    want = reference_adamw(params, grads, c, total=10)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=1e-5, atol=1e-6)


def test_clipping_bounds_the_first_update_direction():
    """With clipping, a 1e3-norm gradient enters Adam as a unit-norm one."""
    c = optim_config(grad_clip=1.0)
    tx = optim.make_optimizer(c, TOTAL)
    g = {"w": jnp.full((4,), 500.0)}                      # norm 1000
    state = tx.init({"w": jnp.zeros(4)})
    _, state = tx.update(g, state, {"w": jnp.zeros(4)})
    mu = state[1][0].mu["w"]                              # (clip, adamw(adam, ...))
    np.testing.assert_allclose(np.asarray(mu), 0.1 * np.full(4, 0.5), rtol=1e-6)


def test_ema_update():
    ema = {"a": jnp.array([1.0, 2.0])}
    params = {"a": jnp.array([3.0, -2.0])}
    out = optim.ema_update(ema, params, 0.75)
    np.testing.assert_allclose(np.asarray(out["a"]), [1.5, 1.0])
    with pytest.raises(ValueError, match="ema_decay"):
        optim.ema_update(ema, params, 1.5)

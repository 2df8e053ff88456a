"""Rectified flow on an analytic case: data x0 ~ N(mu, diag(s^2)), noise eps ~ N(0, I).

With x_t = (1 - t) x0 + t eps and v = eps - x0 (per dimension, everything jointly Gaussian):
    E[x_t] = (1 - t) mu,   Var x_t = S(t) = (1 - t)^2 s^2 + t^2,
    E[v] = -mu,            Cov(v, x_t) = t - (1 - t) s^2,
so the exact (marginal) velocity field is the linear regression
    v*(x, t) = E[v | x_t = x] = -mu + (t - (1 - t) s^2) / S(t) * (x - (1 - t) mu),
and the flow loss at v* is the irreducible variance E Var(v | x_t) = (1 + s^2) - Cov^2 / S
= s^2 / S(t). Any other field costs E|v - v*|^2 more.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen.diffusion import flow

MU = np.array([0.5, -1.0, 2.0, 0.0])
SD = np.array([0.3, 1.0, 2.0, 0.7])


def exact_velocity(x, t):
    """v*(x, t) for x [N, D], t [N, 1] (NumPy float64)."""
    var = (1 - t) ** 2 * SD ** 2 + t ** 2
    return -MU + (t - (1 - t) * SD ** 2) / var * (x - (1 - t) * MU)


def gaussian_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    x0 = MU + SD * rng.standard_normal((n, MU.size))
    return x0, rng.standard_normal((n, MU.size)), rng.uniform(0.02, 0.98, (n, 1))


def test_interpolate_endpoints_and_velocity_is_its_time_derivative():
    key0, key1 = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(key0, (3, 2, 4, 4, 5))
    noise = jax.random.normal(key1, x0.shape)
    np.testing.assert_array_equal(flow.interpolate(x0, noise, jnp.zeros(3)), x0)
    np.testing.assert_array_equal(flow.interpolate(x0, noise, jnp.ones(3)), noise)
    t = jnp.array([0.1, 0.5, 0.9])                     # one time per example
    xt = flow.interpolate(x0, noise, t)
    np.testing.assert_allclose(xt[1], 0.5 * (x0[1] + noise[1]), atol=1e-6)
    dxdt = (flow.interpolate(x0, noise, t + 1e-2) - flow.interpolate(x0, noise, t - 1e-2)) / 2e-2
    np.testing.assert_allclose(dxdt, flow.velocity_target(x0, noise), atol=2e-4)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_exact_velocity_is_the_regression_of_the_target_on_x_t(t):
    """The derivation above, checked by Monte Carlo: least squares of eps - x0 on x_t."""
    x0, eps, _ = gaussian_batch(200_000, seed=1)
    xt, v = (1 - t) * x0 + t * eps, eps - x0
    for d in range(MU.size):
        slope, intercept = np.polyfit(xt[:, d], v[:, d], 1)
        want = exact_velocity(np.array([[0.0] * MU.size, [1.0] * MU.size]), np.array([[t], [t]]))
        np.testing.assert_allclose([intercept, slope], [want[0, d], want[1, d] - want[0, d]],
                                   atol=0.02)


def test_flow_loss_at_the_exact_field_is_the_irreducible_variance():
    x0, eps, t = gaussian_batch(32_768)
    xt = np.asarray(flow.interpolate(jnp.asarray(x0, jnp.float32), jnp.asarray(eps, jnp.float32),
                                    jnp.asarray(t[:, 0], jnp.float32)), np.float64)
    v_star = exact_velocity(xt, t)
    minimum = np.mean(SD ** 2 / ((1 - t) ** 2 * SD ** 2 + t ** 2))       # E_t mean_d s^2 / S(t)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    loss = float(flow.flow_loss(f32(v_star), f32(x0), f32(eps)))
    print(f"loss at v* {loss:.4f}, analytic minimum {minimum:.4f}")
    assert loss == pytest.approx(minimum, rel=0.03)                     # MC std ~0.6%
    delta = 0.2
    shifted = float(flow.flow_loss(f32(v_star + delta), f32(x0), f32(eps)))
    scaled = float(flow.flow_loss(f32(1.1 * v_star), f32(x0), f32(eps)))
    assert shifted == pytest.approx(loss + delta ** 2, abs=0.01)       # E|v - v*|^2 = delta^2
    assert scaled > loss and shifted > loss


def test_flow_loss_weights_and_masks():
    rng = np.random.default_rng(2)
    v, x0, eps = (rng.standard_normal((2, 3, 2, 2, 4)).astype(np.float32) for _ in range(3))
    err = (v - (eps - x0)) ** 2
    assert float(flow.flow_loss(v, x0, eps)) == pytest.approx(err.mean(), rel=1e-6)
    frames = np.array([[True, False, True], [False, False, True]])        # [B, t] mask
    want = err[frames].mean()
    assert float(flow.flow_loss(v, x0, eps, frames)) == pytest.approx(want, rel=1e-6)
    w = rng.uniform(size=(2,)).astype(np.float32)                          # per-example weights
    want = (w[:, None] * err.reshape(2, -1)).sum() / (w.sum() * err[0].size)
    assert float(flow.flow_loss(v, x0, eps, w)) == pytest.approx(want, rel=1e-5)
    full = rng.uniform(size=err.shape) > 0.5
    assert float(flow.flow_loss(v, x0, eps, full)) == pytest.approx(err[full].mean(), rel=1e-6)
    assert float(flow.flow_loss(v, x0, eps, np.zeros((2,), bool))) == 0.0


def test_sample_timesteps_is_logit_normal_without_shift():
    config = flow.FlowConfig(logit_normal_mean=-0.5, logit_normal_std=0.8)
    t = flow.sample_timesteps(jax.random.key(0), 40_000, 1024, config)
    assert t.dtype == jnp.float32 and t.shape == (40_000,)
    t = np.asarray(t, np.float64)
    assert np.all((t > 0) & (t < 1))
    u = np.log(t / (1 - t))
    assert u.mean() == pytest.approx(-0.5, abs=0.02) and u.std() == pytest.approx(0.8, rel=0.02)
    qs = np.quantile(u, [0.1, 0.5, 0.9])
    np.testing.assert_allclose(qs, -0.5 + 0.8 * np.array([-1.2816, 0.0, 1.2816]), atol=0.03)


def test_shift_is_the_flux_time_shift_identity_at_one_and_monotone_in_seq_len():
    t = np.linspace(0.01, 0.99, 50)
    np.testing.assert_allclose(flow.shift_time(t, 1.0), t, rtol=1e-12)
    mu = 0.9                                            # Flux: e^mu / (e^mu + (1/t - 1))
    np.testing.assert_allclose(flow.shift_time(t, math.exp(mu)),
                               math.exp(mu) / (math.exp(mu) + (1 / t - 1)), rtol=1e-12)
    assert np.all(np.asarray(flow.shift_time(t, 3.0)) > t)                 # s > 1: noisier

    config = flow.FlowConfig(dynamic_shift=True)
    s = np.array([float(flow.shift_for_seq_len(n, config)) for n in (64, 256, 1024, 4096, 8192)])
    assert np.all(np.diff(s) > 0)
    np.testing.assert_allclose(s[[1, 3]], np.exp([config.base_shift, config.max_shift]), rtol=1e-6)
    fixed = flow.FlowConfig(shift=2.5)
    assert float(flow.shift_for_seq_len(64, fixed)) == float(flow.shift_for_seq_len(8192, fixed))

    key = jax.random.key(3)                     # the same draws, shifted more for longer clips
    base = flow.sample_timesteps(key, 1000, 256, flow.FlowConfig())
    short, long = (flow.sample_timesteps(key, 1000, n, config) for n in (256, 4096))
    np.testing.assert_allclose(short, flow.shift_time(base, math.exp(0.5)), rtol=1e-6)
    assert np.all(long > short) and float(jnp.mean(long)) > float(jnp.mean(short)) + 0.05


def test_jit_with_traced_seq_len_and_determinism_by_seed():
    config = flow.FlowConfig(dynamic_shift=True)
    draw = jax.jit(flow.sample_timesteps, static_argnums=(1, 3))
    a = draw(jax.random.key(7), 8, jnp.int32(1024), config)
    np.testing.assert_array_equal(a, draw(jax.random.key(7), 8, jnp.int32(1024), config))
    np.testing.assert_allclose(a, flow.sample_timesteps(jax.random.key(7), 8, 1024, config),
                               rtol=1e-6)
    assert not np.array_equal(a, draw(jax.random.key(8), 8, jnp.int32(1024), config))
    loss = jax.jit(flow.flow_loss)
    x = jax.random.normal(jax.random.key(0), (2, 3, 4))
    assert float(loss(x, x, x, jnp.ones((2,)))) == pytest.approx(float(jnp.mean(x * x)), rel=1e-6)


def test_drop_text():
    mask = jnp.ones((10_000, 6), bool).at[:, 4:].set(False)
    keep, dropped = flow.drop_text(jax.random.key(0), mask, 0.3)
    assert keep.shape == (10_000,) and keep.dtype == jnp.bool_
    assert float(jnp.mean(keep)) == pytest.approx(0.7, abs=0.015)
    np.testing.assert_array_equal(dropped, mask & keep[:, None])
    k2, _ = flow.drop_text(jax.random.key(0), mask, 0.3)
    np.testing.assert_array_equal(keep, k2)
    assert bool(jnp.all(flow.drop_text(jax.random.key(1), mask, 0.0)[0]))
    assert not bool(jnp.any(flow.drop_text(jax.random.key(1), mask, 1.0)[1]))


def test_config_from_dict_and_validation():
    config = flow.FlowConfig.from_dict(dict(logit_normal_mean=0.0, logit_normal_std=1.0,
                                            text_dropout=0.1, dynamic_shift=True))
    assert config.dynamic_shift
    with pytest.raises(ValueError, match="shfit"):
        flow.FlowConfig.from_dict(dict(shfit=3.0))
    for bad in (dict(shift=0.0), dict(logit_normal_std=-1.0), dict(text_dropout=1.5),
                dict(base_seq_len=4096, max_seq_len=256)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            flow.FlowConfig(**bad)

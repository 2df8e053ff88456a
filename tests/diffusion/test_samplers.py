"""Samplers on the analytic Gaussian case: data x0 ~ N(mu, diag(s^2)), noise ~ N(0, I).

The exact velocity field (derived in test_flow.py) is
    v*(x, t) = -mu + (t - (1 - t) s^2) / S(t) * (x - (1 - t) mu),   S(t) = (1 - t)^2 s^2 + t^2.
It is linear in x, so its flow map is affine in the starting noise z = x_1: the solution keeps z's
standardised position, x(t) = (1 - t) mu + sqrt(S(t)) z (d/dt of it is -mu + S'/(2S) (x - (1-t) mu),
and S'/2 = t - (1 - t) s^2), hence x(0) = mu + s z: noise lands on the data marginal. Every solver
given v* must reach mu + s z, with an error shrinking like num_steps^-order.
"""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from vidgen.diffusion import flow, samplers

MU = np.array([0.8, -1.5, 0.3, 2.0, -0.4, 1.0])
SD = np.array([0.5, 0.7, 0.9, 1.3, 1.7, 2.0])
STEPS = (4, 8, 16, 32)


def exact_velocity(x, t, mu=MU, sd=SD):
    """v*(x, t); works on NumPy, JAX and torch arrays (mu, sd of the same kind as x)."""
    var = (1 - t) ** 2 * sd ** 2 + t ** 2
    return -mu + (t - (1 - t) * sd ** 2) / var * (x - (1 - t) * mu)


def exact_flow(z, t):
    """The exact ODE solution at time t started from z at t = 1."""
    return (1 - t) * MU + np.sqrt((1 - t) ** 2 * SD ** 2 + t ** 2) * z


def unit_noise(n=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, MU.size))


def test_exact_flow_map_solves_the_ode_and_reaches_the_data_marginal():
    z = unit_noise(4096)
    for t in (0.05, 0.3, 0.7, 0.95):
        dxdt = (exact_flow(z, t + 1e-5) - exact_flow(z, t - 1e-5)) / 2e-5
        np.testing.assert_allclose(dxdt, exact_velocity(exact_flow(z, t), t), atol=1e-7)
    x = z.copy()                                  # RK4 in float64, independent of samplers.py
    ts = np.linspace(1.0, 0.0, 401)
    for t, t_next in zip(ts[:-1], ts[1:]):
        h = t_next - t
        k1 = exact_velocity(x, t)
        k2 = exact_velocity(x + h / 2 * k1, t + h / 2)
        k3 = exact_velocity(x + h / 2 * k2, t + h / 2)
        k4 = exact_velocity(x + h * k3, t_next)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    np.testing.assert_allclose(x, MU + SD * z, atol=1e-9)
    assert np.all(np.abs(x.mean(0) - MU) < 4 * SD / np.sqrt(len(z)))
    np.testing.assert_allclose(x.std(0), SD, rtol=0.05)
    xt = exact_flow(z, 0.4)                    # and the interpolation's marginal on the way
    np.testing.assert_allclose(xt.var(0), 0.6 ** 2 * SD ** 2 + 0.4 ** 2, rtol=0.06)


def test_time_grid():
    np.testing.assert_allclose(samplers.time_grid(4), [1.0, 0.75, 0.5, 0.25, 0.0])
    ts = np.asarray(samplers.time_grid(10, 3.0))
    assert ts[0] == 1.0 and ts[-1] == 0.0 and np.all(np.diff(ts) < 0)
    np.testing.assert_allclose(ts, flow.shift_time(np.linspace(1, 0, 11), 3.0), rtol=1e-6)
    assert np.all(ts[1:-1] > np.linspace(1, 0, 11)[1:-1])        # shift > 1: more steps near 1


def solver_errors(solver, shift):
    z = unit_noise()
    with jax.enable_x64(True):
        return [float(np.max(np.abs(np.asarray(samplers.sample(
            exact_velocity, jnp.asarray(z), solver=solver, num_steps=n, shift=shift))
            - (MU + SD * z)))) for n in STEPS]


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2)])
def test_solver_reaches_the_exact_solution_at_its_order(solver, order, shift):
    errors = solver_errors(solver, shift)
    slope = -np.polyfit(np.log(STEPS), np.log(errors), 1)[0]
    print(f"{solver} shift={shift}: max errors {['%.1e' % e for e in errors]}, "
          f"fitted order {slope:.2f}")
    assert np.all(np.diff(errors) < 0)                            # it converges to mu + s z
    # DPM++(2M)'s steps next to t = 1 and t = 0 stay O(1) long in lambda = log((1 - t) / t),
    # which costs it a log factor at these step counts (fitted ~1.8); first order would give ~1.
    assert abs(slope - order) < (0.2 if order == 1 else 0.35)


def test_dpmpp_2m_matches_diffusers():
    """Parity with diffusers' DPMSolverMultistepScheduler (flow sigmas, flow_prediction, 2M),
    run on diffusers' own grid (it starts at shift(0.999), not 1)."""
    torch = pytest.importorskip("torch")
    from diffusers import DPMSolverMultistepScheduler
    sched = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                        flow_shift=3.0, solver_order=2,
                                        algorithm_type="dpmsolver++", final_sigmas_type="zero")
    sched.set_timesteps(10)
    z = unit_noise(8).astype(np.float32)
    mu, sd = torch.tensor(MU, dtype=torch.float32), torch.tensor(SD, dtype=torch.float32)
    x = torch.from_numpy(z)
    for i, timestep in enumerate(sched.timesteps):
        v = exact_velocity(x, sched.sigmas[i], mu, sd)
        x = sched.step(v, timestep, x).prev_sample
    ours = samplers.dpmpp_2m(exact_velocity, jnp.asarray(z), jnp.asarray(sched.sigmas.numpy()))
    err = np.max(np.abs(np.asarray(ours) - x.numpy()))
    print(f"dpmpp_2m vs diffusers: max abs error {err:.2e}")
    assert err < 1e-5


def test_cfg_scales_and_batched_form():
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (3, 4))
    cond, null = jax.random.normal(keys[1], (3, 4)), jax.random.normal(keys[2], (3, 4))
    v_cond = lambda x, t: jnp.sin(x) * t + cond
    v_uncond = lambda x, t: jnp.cos(x) * t + null
    t = jnp.float32(0.6)
    np.testing.assert_allclose(samplers.cfg_velocity(v_cond, v_uncond, 1.0)(x, t), v_cond(x, t),
                               atol=1e-6)
    np.testing.assert_allclose(samplers.cfg_velocity(v_cond, v_uncond, 0.0)(x, t),
                               v_uncond(x, t), atol=1e-6)
    both = jnp.concatenate([cond, null])               # the model's context: cond rows, then null

    def v_batched(x2, t):
        assert x2.shape == (6, 4)
        return jnp.concatenate([jnp.sin(x2[:3]), jnp.cos(x2[3:])]) * t + both

    for scale in (0.0, 1.0, 4.5):
        np.testing.assert_allclose(samplers.guided(v_batched, scale)(x, t),
                                   samplers.cfg_velocity(v_cond, v_uncond, scale)(x, t), atol=1e-5)
    a = samplers.sample(samplers.guided(v_batched, 4.5), x, solver="heun", num_steps=3)
    b = samplers.sample(samplers.cfg_velocity(v_cond, v_uncond, 4.5), x, solver="heun",
                        num_steps=3)
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("solver", sorted(samplers.SOLVERS))
def test_jit_determinism_and_independent_examples(solver):
    v_fn = lambda x, t: exact_velocity(x, t, jnp.asarray(MU, jnp.float32),
                                       jnp.asarray(SD, jnp.float32))
    run = jax.jit(lambda noise, shift: samplers.sample(v_fn, noise, solver=solver, num_steps=5,
                                                       shift=shift))
    noise = jax.random.normal(jax.random.key(42), (4, MU.size))
    a = run(noise, 2.0)
    assert a.dtype == jnp.float32 and a.shape == noise.shape
    np.testing.assert_array_equal(a, run(jax.random.normal(jax.random.key(42), noise.shape), 2.0))
    assert not np.allclose(a, run(jax.random.normal(jax.random.key(43), noise.shape), 2.0))
    np.testing.assert_allclose(a, samplers.sample(v_fn, noise, solver=solver, num_steps=5,
                                                  shift=2.0), atol=1e-5)
    np.testing.assert_allclose(a[:1], run(noise[:1], 2.0), atol=1e-6)   # batch-independent


def test_validation():
    with pytest.raises(ValueError, match="rk4"):
        samplers.sample(exact_velocity, jnp.zeros((1, 6)), solver="rk4")
    with pytest.raises(ValueError, match="num_steps"):
        samplers.SamplerConfig(num_steps=0)
    with pytest.raises(ValueError, match="shift"):
        samplers.SamplerConfig(shift=0.0)
    with pytest.raises(ValueError, match="cfg"):
        samplers.SamplerConfig.from_dict(dict(solver="heun", cfg=3.0))
    config = samplers.SamplerConfig.from_dict(dict(solver="dpmpp_2m", num_steps=8, shift=3.0,
                                                   cfg_scale=4.0))
    assert config.solver == "dpmpp_2m" and config.cfg_scale == 4.0

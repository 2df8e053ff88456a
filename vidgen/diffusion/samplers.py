"""ODE samplers for the rectified flow, and classifier-free guidance.

A sampler integrates dx/dt = v(x, t) from t = 1 (noise) to t = 0 (data) on a time grid (see
flow.py for the convention). It only sees a velocity function

    v_fn(x [B, ...], t scalar array) -> v [B, ...],

so it is model-agnostic; classifier-free guidance is a wrapper that builds such a function from
conditional and unconditional predictions (`cfg_velocity`, or `guided` for one doubled-batch model
call). The grid is uniform in u, warped by flow.shift_time: t_k = shift_time(1 - k/N, shift), so a
shift > 1 spends more steps at high noise, exactly as training's shifted times do.

Solvers (SOLVERS maps the names `sample` accepts to them; each runs one jax.lax.fori_loop):
- euler:    x += h v(x, t). 1 velocity call per step, order 1.
- heun:     Euler predictor, trapezoidal corrector. 2 calls per step, order 2.
- dpmpp_2m: DPM-Solver++(2M) in data prediction: with alpha_t = 1 - t, sigma_t = t the data
            estimate is D = x - t v and lambda = log((1 - t) / t). One step is
                x' = (t'/t) x + (1 - t'/t) (D + c (D - D_prev)),   c = h / (2 h_prev),
            h = lambda(t') - lambda(t). 1 call per step, order 2. c = 0 (a first-order DDIM step,
            which equals an Euler step for this flow) on the first two steps, where h_prev is
            infinite because lambda(1) = -inf, and on the last step into t = 0 (lambda = +inf).
Sampling is deterministic: the same noise (e.g. jax.random.normal(jax.random.key(seed), shape))
gives the same sample, and every example of a batch is integrated independently of the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from vidgen.config_dataclass import FromDict
from vidgen.diffusion import flow

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


def time_grid(num_steps: int, shift: jax.Array | float = 1.0, dtype: Any = jnp.float32
              ) -> jax.Array:
    """The [num_steps + 1] times from 1 down to 0: uniform, warped by flow.shift_time."""
    return flow.shift_time(jnp.linspace(1.0, 0.0, num_steps + 1, dtype=dtype), shift)


def euler(v_fn: VelocityFn, x: jax.Array, ts: jax.Array) -> jax.Array:
    """Integrates dx/dt = v_fn(x, t) over the grid ts with explicit Euler steps."""
    def step(i, x):
        return (x + (ts[i + 1] - ts[i]) * v_fn(x, ts[i])).astype(x.dtype)

    return jax.lax.fori_loop(0, ts.shape[0] - 1, step, x)


def heun(v_fn: VelocityFn, x: jax.Array, ts: jax.Array) -> jax.Array:
    """Integrates dx/dt = v_fn(x, t) over ts with Heun's method (explicit trapezoidal rule)."""
    def step(i, x):
        h = ts[i + 1] - ts[i]
        v = v_fn(x, ts[i])
        v_next = v_fn(x + h * v, ts[i + 1])
        return (x + 0.5 * h * (v + v_next)).astype(x.dtype)

    return jax.lax.fori_loop(0, ts.shape[0] - 1, step, x)


def _dpmpp_2m_coefficients(ts: jax.Array) -> jax.Array:
    """c_i = h_i / (2 h_{i-1}) per step (lambda steps h), 0 where either lambda step is infinite."""
    lam = jnp.log1p(-ts) - jnp.log(ts)               # -inf at t = 1, +inf at t = 0
    h = lam[1:] - lam[:-1]                            # [N]
    ok = jnp.isfinite(h[1:]) & jnp.isfinite(h[:-1])
    c = jnp.where(ok, h[1:] / jnp.where(ok, 2 * h[:-1], 1.0), 0.0)
    return jnp.concatenate([jnp.zeros((1,), ts.dtype), c])


def dpmpp_2m(v_fn: VelocityFn, x: jax.Array, ts: jax.Array) -> jax.Array:
    """Integrates the flow ODE over ts with DPM-Solver++(2M) on the data estimate x - t v."""
    c = _dpmpp_2m_coefficients(ts)

    def step(i, carry):
        x, d_prev = carry
        t, t_next = ts[i], ts[i + 1]
        d = x - t * v_fn(x, t)                        # x0 estimate
        d_hat = d + c[i] * (d - d_prev)
        ratio = t_next / t
        return (ratio * x + (1 - ratio) * d_hat).astype(x.dtype), d.astype(x.dtype)

    x, _ = jax.lax.fori_loop(0, ts.shape[0] - 1, step, (x, jnp.zeros_like(x)))
    return x


SOLVERS: dict[str, Callable[[VelocityFn, jax.Array, jax.Array], jax.Array]] = {
    "euler": euler, "heun": heun, "dpmpp_2m": dpmpp_2m}


def _check(solver: str, num_steps: int) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r}: expected one of {sorted(SOLVERS)}")
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps}: must be >= 1")


@dataclasses.dataclass(frozen=True)
class SamplerConfig(FromDict):
    """How to sample: the solver, its number of steps, the time shift and the CFG scale."""
    solver: str = "euler"
    num_steps: int = 20
    shift: float = 1.0
    cfg_scale: float = 1.0            # 1 = conditional field only, 0 = unconditional only

    def __post_init__(self):
        _check(self.solver, self.num_steps)
        if not self.shift > 0:
            raise ValueError(f"SamplerConfig.shift={self.shift}: must be > 0")


def sample(v_fn: VelocityFn, noise: jax.Array, *, solver: str = "euler", num_steps: int = 20,
           shift: jax.Array | float = 1.0) -> jax.Array:
    """x0 [B, ...] from noise [B, ...] (the state at t = 1): the ODE integrated by `solver` over
    time_grid(num_steps, shift). solver and num_steps are static under jit; shift may be traced.
    v_fn receives t as a scalar in float32 (float64 when noise is float64)."""
    _check(solver, num_steps)
    ts = time_grid(num_steps, shift, jnp.promote_types(noise.dtype, jnp.float32))
    return SOLVERS[solver](v_fn, noise, ts)


def _guide(v_cond: jax.Array, v_uncond: jax.Array, scale: jax.Array | float) -> jax.Array:
    return v_uncond + scale * (v_cond - v_uncond)


def cfg_velocity(v_cond_fn: VelocityFn, v_uncond_fn: VelocityFn, scale: jax.Array | float
                 ) -> VelocityFn:
    """Classifier-free guidance from two calls: v_u + scale (v_c - v_u). scale 1 is the
    conditional field, 0 the unconditional one, > 1 extrapolates away from the unconditional."""
    def v_fn(x, t):
        return _guide(v_cond_fn(x, t), v_uncond_fn(x, t), scale)

    return v_fn


def guided(v_fn_batched: VelocityFn, scale: jax.Array | float) -> VelocityFn:
    """Classifier-free guidance with one model call on a doubled batch: v_fn_batched gets
    concat([x, x]) [2B, ...] and must return the conditional velocities for the first B rows and
    the unconditional ones for the last B (i.e. its context is concat([cond, null]))."""
    def v_fn(x, t):
        v_cond, v_uncond = jnp.split(v_fn_batched(jnp.concatenate([x, x]), t), 2)
        return _guide(v_cond, v_uncond, scale)

    return v_fn

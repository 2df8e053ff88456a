"""Rectified flow: the interpolation, its velocity target, timestep sampling with a time shift,
the loss, and caption dropout for classifier-free guidance.

Time convention (shared by the whole codebase): t in [0, 1], t = 0 is data, t = 1 is noise.

    x_t = (1 - t) x0 + t eps,        v = dx_t/dt = eps - x0,

and sampling integrates dx/dt = v from t = 1 down to t = 0 (samplers.py).

The time shift. A shift s > 0 warps a time t in [0, 1] to

    t' = s t / (1 + (s - 1) t)  =  e^mu t / (e^mu t + (1 - t))   with s = e^mu,

which fixes 0 and 1, is the identity for s = 1, and moves every t towards noise for s > 1 (SD3's
shift; Flux's time_shift with sigma = 1). Longer and larger clips carry more redundant tokens, so
the same t destroys less of their signal; they need noisier times, i.e. a larger s. FlowConfig
picks s in one of two ways:
- fixed: s = `shift` (dynamic_shift=False, the default; shift = 1 is plain logit-normal), or
- resolution-dependent (dynamic_shift=True): s = e^mu with mu linear in the token count L,
      mu(L) = base_shift + (max_shift - base_shift) (L - L0) / (L1 - L0),
  L0 = base_seq_len, L1 = max_seq_len (extrapolated outside [L0, L1]), as in Flux / SD3.5's
  resolution-dependent shifting. `shift` is then unused.
The samplers warp their time grid with the same `shift_time`, so training and sampling can share s.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vidgen.config_dataclass import FromDict


@dataclasses.dataclass(frozen=True)
class FlowConfig(FromDict):
    """How training draws flow times and drops captions (see the module docstring for the shift)."""
    logit_normal_mean: float = 0.0    # t = sigmoid(mean + std * N(0, 1)) before the shift
    logit_normal_std: float = 1.0
    shift: float = 1.0                # the fixed shift s (used when dynamic_shift is False)
    dynamic_shift: bool = False       # s = exp(mu(seq_len)) with mu linear in the token count
    base_seq_len: int = 256           # mu(base_seq_len) = base_shift   (Flux's defaults)
    max_seq_len: int = 4096           # mu(max_seq_len) = max_shift
    base_shift: float = 0.5
    max_shift: float = 1.15
    text_dropout: float = 0.1         # probability that an example's caption is dropped (CFG)

    def __post_init__(self):
        if not self.logit_normal_std > 0:
            raise ValueError(f"FlowConfig.logit_normal_std={self.logit_normal_std}: must be > 0")
        if not self.shift > 0:
            raise ValueError(f"FlowConfig.shift={self.shift}: must be > 0")
        if not self.max_seq_len > self.base_seq_len:
            raise ValueError(f"FlowConfig.max_seq_len={self.max_seq_len}: must be > "
                             f"base_seq_len={self.base_seq_len}")
        if not 0.0 <= self.text_dropout <= 1.0:
            raise ValueError(f"FlowConfig.text_dropout={self.text_dropout}: must be in [0, 1]")


def _per_example(t: jax.Array, like: jax.Array) -> jax.Array:
    """t [B] (or a scalar) -> [B, 1, ..., 1] in like's dtype, to broadcast against like [B, ...]."""
    t = jnp.asarray(t, like.dtype)
    return t.reshape(t.shape + (1,) * (like.ndim - t.ndim))


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t = (1 - t) x0 + t noise; x0, noise [B, ...], t [B] (per example) or a scalar."""
    t = _per_example(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    """The regression target v = d x_t / dt = noise - x0 (the same for every t)."""
    return noise - x0


def shift_time(t: jax.Array, shift: jax.Array | float) -> jax.Array:
    """Warps t in [0, 1] to s t / (1 + (s - 1) t): 0 and 1 stay, s > 1 moves t towards noise."""
    return shift * t / (1 + (shift - 1) * t)


def shift_for_seq_len(seq_len: jax.Array | int, config: FlowConfig) -> jax.Array:
    """The shift s for clips of seq_len tokens: config.shift, or exp(mu(seq_len)) when
    config.dynamic_shift (mu linear in seq_len, so s grows monotonically with the clip's size).
    seq_len may be traced; returns a float32 scalar."""
    if not config.dynamic_shift:
        return jnp.asarray(config.shift, jnp.float32)
    slope = (config.max_shift - config.base_shift) / (config.max_seq_len - config.base_seq_len)
    mu = config.base_shift + slope * (jnp.asarray(seq_len, jnp.float32) - config.base_seq_len)
    return jnp.exp(mu)


def sample_timesteps(rng: jax.Array, batch_size: int, seq_len: jax.Array | int,
                     config: FlowConfig) -> jax.Array:
    """Training times t [batch_size] float32: logit-normal, then shifted for seq_len tokens."""
    u = config.logit_normal_mean + config.logit_normal_std * jax.random.normal(
        rng, (batch_size,), jnp.float32)
    return shift_time(jax.nn.sigmoid(u), shift_for_seq_len(seq_len, config))


def flow_loss(v_pred: jax.Array, x0: jax.Array, noise: jax.Array,
              weights: jax.Array | None = None) -> jax.Array:
    """Mean squared error between v_pred and noise - x0 (all [B, ...]), in float32.

    weights (optional, bool mask or float, shape a prefix of v_pred's: [B] per example, [B, t] per
    latent frame, ..., or v_pred's full shape) weight each element; the loss is then
    sum(w * err^2) / sum(w) over the broadcast weights, so masked-out elements (e.g. the given
    frames of image-to-video, padding) neither count nor dilute the mean. All-zero weights give 0.
    """
    err = jnp.square(v_pred.astype(jnp.float32) - velocity_target(x0, noise).astype(jnp.float32))
    if weights is None:
        return jnp.mean(err)
    w = jnp.broadcast_to(_per_example(weights, err), err.shape)
    return jnp.sum(w * err) / jnp.maximum(jnp.sum(w), jnp.finfo(jnp.float32).tiny)


def drop_text(rng: jax.Array, mask: jax.Array, p: float | jax.Array
              ) -> tuple[jax.Array, jax.Array]:
    """Caption dropout for classifier-free guidance: each example's caption is dropped with
    probability p. Returns (keep [B] bool, mask [B, L] with every token of dropped examples
    False). An all-False row is the unconditional input: attention.dot_product_attention gives
    zeros for a query with no key to attend to, so the cross-attention adds nothing. (A caller
    that prefers the empty prompt's tokens as the null caption selects them with `keep`.)"""
    keep = jax.random.uniform(rng, (mask.shape[0],)) >= p
    return keep, jnp.logical_and(mask, keep[:, None])

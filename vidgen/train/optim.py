"""The optimizer from `config.optim`: AdamW on a linear-warmup + cosine schedule, with global-norm
clipping, and the exponential moving average (EMA) of the parameters that evaluation uses.

Config keys: optim.lr (peak), optim.warmup_steps, optim.end_lr_factor (final lr = factor * lr),
optim.b1, optim.b2, optim.weight_decay (decoupled; only on arrays with >= 2 dims, i.e. kernels,
not biases or norm scales), optim.grad_clip (global norm; <= 0 disables it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

ConfigDict = ml_collections.ConfigDict


def make_schedule(optim: ConfigDict, total_steps: int) -> optax.Schedule:
    """lr(step): 0 -> optim.lr linearly over warmup_steps, then cosine to lr * end_lr_factor at
    total_steps. Step t is the update that turns t finished steps into t + 1."""
    if not 0 <= optim.warmup_steps < total_steps:
        raise ValueError(f"config.optim.warmup_steps={optim.warmup_steps}: must be in "
                         f"[0, total_steps={total_steps})")
    if optim.lr <= 0:
        raise ValueError(f"config.optim.lr={optim.lr}: must be > 0")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=optim.lr, warmup_steps=optim.warmup_steps,
        decay_steps=total_steps, end_value=optim.lr * optim.end_lr_factor)


def _decay_mask(params):
    """Weight decay on matrices and conv kernels only."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(optim: ConfigDict, total_steps: int) -> optax.GradientTransformation:
    """Global-norm clipping (if optim.grad_clip > 0), then AdamW on make_schedule."""
    adamw = optax.adamw(make_schedule(optim, total_steps), b1=optim.b1, b2=optim.b2,
                        weight_decay=optim.weight_decay, mask=_decay_mask)
    if optim.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip), adamw)
    return adamw


def ema_update(ema, params, decay: float):
    """One EMA step: decay * ema + (1 - decay) * params, leaf by leaf (same tree structure)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"config.ema_decay={decay}: must be in [0, 1]")
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)

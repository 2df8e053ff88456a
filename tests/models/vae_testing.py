"""Shared by the VAE tests: a tiny config and a VAE filled with random weights without compiling."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.models.vae import CausalVAE, VAEConfig

TINY = VAEConfig(base_channels=8, channel_mults=(1, 2, 2, 2), num_res_blocks=1, z_channels=4)


def random_vae(cfg: VAEConfig, seed: int = 0) -> CausalVAE:
    """A VAE with random weights (norm scales and biases too), filled from numpy: no compile."""
    vae = nnx.eval_shape(lambda: CausalVAE(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    params = nnx.state(vae, nnx.Param)
    for path, var in nnx.to_flat_state(params):
        if path[-1] == "kernel":
            value = rng.normal(size=var.shape) / np.sqrt(np.prod(var.shape[:-1]))
        else:
            value = (path[-1] == "scale") + 0.1 * rng.normal(size=var.shape)
        var.set_value(jnp.asarray(value, jnp.float32))
    nnx.update(vae, params)
    return vae

"""A 3D patch discriminator for adversarial VAE training, and its hinge losses.

The discriminator is the PatchGAN recipe (Isola et al. 2017; VQGAN) lifted to video: a stack of
3D convolutions that halve space at every block (and time at every block after the first), with
GroupNorm and leaky ReLU, ending in one logit per spacetime patch. GroupNorm rather than BatchNorm
keeps the model free of batch statistics, so it lives in the same functional train step as the VAE.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

LEAK = 0.2
KERNEL = (3, 4, 4)          # (time, height, width)


def _group_norm(features: int, rngs: nnx.Rngs) -> nnx.GroupNorm:
    return nnx.GroupNorm(features, num_groups=math.gcd(32, features), rngs=rngs)


class PatchDiscriminator3D(nnx.Module):
    """Maps video [B, T, H, W, 3] in [-1, 1] to patch logits [B, t, H / 2^L, W / 2^L, 1].

    With L = num_layers, t = ceil(T / 2^(L-1)) (SAME padding, so a 1-frame image also works).
    Widths double per block from `channels`, capped at 8x.
    """

    def __init__(self, channels: int = 64, num_layers: int = 3, *, rngs: nnx.Rngs,
                 dtype: jnp.dtype = jnp.float32):
        if channels < 1 or num_layers < 1:
            raise ValueError(f"discriminator channels={channels}, num_layers={num_layers}: "
                             "both must be >= 1")
        self.num_layers = num_layers
        self.stem = nnx.Conv(3, channels, KERNEL, strides=(1, 2, 2), dtype=dtype, rngs=rngs)
        convs, norms = [], []
        width = channels
        for i in range(1, num_layers + 1):
            last = i == num_layers                  # the last block keeps resolution
            out = channels * min(2 ** i, 8)
            strides = (1, 1, 1) if last else (2, 2, 2)
            convs.append(nnx.Conv(width, out, KERNEL, strides=strides, use_bias=False,
                                  dtype=dtype, rngs=rngs))
            norms.append(_group_norm(out, rngs))
            width = out
        self.convs = nnx.List(convs)
        self.norms = nnx.List(norms)
        self.head = nnx.Conv(width, 1, KERNEL, dtype=dtype, rngs=rngs)

    def __call__(self, video: jax.Array) -> jax.Array:
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(f"discriminator input must be [B, T, H, W, 3]; got {video.shape}")
        x = nnx.leaky_relu(self.stem(video), LEAK)
        for conv, norm in zip(self.convs, self.norms):
            x = nnx.leaky_relu(norm(conv(x)), LEAK)
        return self.head(x).astype(jnp.float32)


def hinge_d_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """Discriminator hinge loss: pushes real logits above +1 and fake logits below -1.

    Halved as in VQGAN, so a discriminator that outputs 0 everywhere scores exactly 1.
    """
    real = jnp.mean(jax.nn.relu(1.0 - real_logits))
    fake = jnp.mean(jax.nn.relu(1.0 + fake_logits))
    return 0.5 * (real + fake)


def hinge_g_loss(fake_logits: jax.Array) -> jax.Array:
    """Generator loss for the hinge GAN: raise the discriminator's logits on reconstructions."""
    return -jnp.mean(fake_logits)

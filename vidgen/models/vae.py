"""The causal video VAE: Wan 2.1's architecture (diffusers' AutoencoderKLWan), channels-last.

Video [B, T, H, W, 3] in [-1, 1] with T = 1 + 4k maps to latents [B, 1 + k, H/8, W/8, z] (with the
default config); a still image is a 1-frame video. `encode`/`decode` run the whole clip at once
(training: differentiable, jit-friendly) and equal diffusers' frame-chunked computation;
`encode_streaming`/`decode_streaming` (driven by vae_stream.py) walk a long host clip in temporal
chunks that carry every causal layer's past, optionally in blended spatial tiles.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.config_dataclass import FromDict, check_dtypes
from vidgen.models import vae_stream
from vidgen.models.layers import (AttentionBlock, CausalConv3d, CausalStream, RMSNorm, Resample,
                                  ResidualBlock)
from vidgen.parallel import mesh as mesh_lib

LOGVAR_RANGE = (-30.0, 20.0)     # diffusers' DiagonalGaussianDistribution clamp
# Logical axes of the activations [B, T, H, W, C] between blocks: under a mesh the batch splits
# over act_batch's axes. (Rows split over a mesh axis too gave wrong encodings with FSDP-split
# kernels or single-row shards, under both XLA partitioners of jax 0.10.2, so frames stay whole.)
VIDEO_AXES = ("act_batch", None, None, None, None)


def pin(x: jax.Array) -> jax.Array:
    """x [B, T, H, W, C] constrained to VIDEO_AXES (the identity outside a mesh)."""
    return mesh_lib.constrain(x, VIDEO_AXES)


@dataclasses.dataclass(frozen=True)
class VAEConfig(FromDict):
    """Architecture of the VAE; defaults are Wan 2.1's (diffusers AutoencoderKLWan defaults)."""
    base_channels: int = 96
    channel_mults: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    attn_scales: tuple[float, ...] = ()
    dropout: float = 0.0
    in_channels: int = 3
    patch_size: int = 1              # pixel-unshuffle p x p before the encoder (Wan 2.2 style)
    dtype: str = "float32"           # compute dtype
    param_dtype: str = "float32"

    def __post_init__(self):
        for name in ("channel_mults", "temporal_downsample", "attn_scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.temporal_downsample) != len(self.channel_mults) - 1:
            raise ValueError(f"VAEConfig.temporal_downsample={self.temporal_downsample}: needs one "
                             f"entry per downsampling stage ({len(self.channel_mults) - 1})")
        for name in ("base_channels", "num_res_blocks", "z_channels", "in_channels", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"VAEConfig.{name}={getattr(self, name)}: must be >= 1")
        check_dtypes(self, "dtype", "param_dtype")

    @property
    def spatial_factor(self) -> int:
        return self.patch_size * 2 ** (len(self.channel_mults) - 1)

    @property
    def pixel_channels(self) -> int:
        """Channels the encoder sees and the decoder emits: in_channels per pixel of a patch."""
        return self.in_channels * self.patch_size ** 2

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(t, h, w, z_channels) of the latents of a num_frames x height x width clip (sizes
        CausalVAE.check_video accepts)."""
        return (1 + (num_frames - 1) // self.temporal_factor, height // self.spatial_factor,
                width // self.spatial_factor, self.z_channels)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DiagonalGaussian:
    """The posterior q(z | x): independent Gaussians with `mean` and `logvar` [B, t, h, w, z]."""
    mean: jax.Array
    logvar: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        """A reparameterised draw mean + std * eps (differentiable in mean and logvar)."""
        eps = jax.random.normal(key, self.mean.shape, self.mean.dtype)
        return self.mean + jnp.exp(0.5 * self.logvar) * eps

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """KL(q || N(0, I)) per example [B], summed over all latent elements, in float32."""
        m, lv = self.mean.astype(jnp.float32), self.logvar.astype(jnp.float32)
        return 0.5 * jnp.sum(m * m + jnp.exp(lv) - 1.0 - lv, axis=tuple(range(1, m.ndim)))


class MidBlock(nnx.Module):
    """Residual block, attention, residual block at the lowest resolution (WanMidBlock)."""

    def __init__(self, dim: int, *, dropout: float, rngs: nnx.Rngs, **kw):
        self.attentions = nnx.List([AttentionBlock(dim, rngs=rngs, **kw)])
        self.resnets = nnx.List([ResidualBlock(dim, dim, dropout=dropout, rngs=rngs, **kw)
                                 for _ in range(2)])

    def __call__(self, x: jax.Array, stream: CausalStream) -> jax.Array:
        x = self.resnets[0](x, stream)
        return self.resnets[1](self.attentions[0](x), stream)


def patchify(video: jax.Array, p: int) -> jax.Array:
    """[B, T, H, W, C] -> [B, T, H/p, W/p, C*p*p]: each p x p pixel block becomes one position
    (channel order c, dy, dx), so full-resolution convs run on 1/p^2 of the positions."""
    if p == 1:
        return video
    b, t, h, w, c = video.shape
    x = video.reshape(b, t, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 2, 4, 6, 3, 5).reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """The inverse of patchify."""
    if p == 1:
        return x
    b, t, h, w, cpp = x.shape
    x = x.reshape(b, t, h, w, cpp // (p * p), p, p)
    return x.transpose(0, 1, 2, 5, 3, 6, 4).reshape(b, t, h * p, w * p, cpp // (p * p))


def _dtypes(cfg: VAEConfig) -> dict[str, Any]:
    return dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))


class Encoder3d(nnx.Module):
    """Video [B, T, H, W, C_in] -> [B, t, h, w, 2z] (WanEncoder3d: down_blocks is one flat list of
    residual blocks, optional attention and resamplers, in diffusers' order)."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        kw, drop = dict(_dtypes(cfg), rngs=rngs), cfg.dropout
        dims = [cfg.base_channels * m for m in (1,) + cfg.channel_mults]
        self.conv_in = CausalConv3d(cfg.pixel_channels, dims[0], **kw)
        blocks, scale = [], 1.0
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout=drop, **kw))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(out_dim, **kw))
                in_dim = out_dim
            if i < len(cfg.temporal_downsample):
                mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
                blocks.append(Resample(out_dim, mode, **kw))
                scale /= 2.0
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], dropout=drop, **kw)
        self.norm_out = RMSNorm(dims[-1], param_dtype=kw["param_dtype"])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_channels, **kw)

    def __call__(self, x: jax.Array, stream: CausalStream) -> jax.Array:
        x = pin(self.conv_in(pin(x), stream))
        for block in self.down_blocks:
            x = pin(block(x, stream))
        x = self.mid_block(x, stream)
        return self.conv_out(jax.nn.silu(self.norm_out(x)), stream)


class UpBlock(nnx.Module):
    """num_res_blocks + 1 residual blocks, then an optional upsampler (WanUpBlock)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, mode: str | None, *,
                 dropout: float, rngs: nnx.Rngs, **kw):
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nnx.List([ResidualBlock(a, b, dropout=dropout, rngs=rngs, **kw)
                                 for a, b in zip(dims[:-1], dims[1:])])
        self.upsamplers = nnx.List([Resample(out_dim, mode, rngs=rngs, **kw)] if mode else [])

    def __call__(self, x: jax.Array, stream: CausalStream) -> jax.Array:
        for block in list(self.resnets) + list(self.upsamplers):
            x = block(x, stream)
        return x


class Decoder3d(nnx.Module):
    """Latents [B, t, h, w, z] -> video [B, T, H, W, 3] (WanDecoder3d, Wan 2.1: every upsampler
    halves the channels, so each up block after the first starts at half the previous width)."""

    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        kw, drop = dict(_dtypes(cfg), rngs=rngs), cfg.dropout
        mults = cfg.channel_mults
        dims = [cfg.base_channels * m for m in (mults[-1],) + mults[::-1]]
        up_time = cfg.temporal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_channels, dims[0], **kw)
        self.mid_block = MidBlock(dims[0], dropout=drop, **kw)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            mode = None
            if i < len(up_time):
                mode = "upsample3d" if up_time[i] else "upsample2d"
            blocks.append(UpBlock(in_dim // 2 if i > 0 else in_dim, out_dim, cfg.num_res_blocks,
                                  mode, dropout=drop, **kw))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1], param_dtype=kw["param_dtype"])
        self.conv_out = CausalConv3d(dims[-1], cfg.pixel_channels, **kw)

    def __call__(self, x: jax.Array, stream: CausalStream) -> jax.Array:
        x = pin(self.mid_block(self.conv_in(x, stream), stream))
        for block in self.up_blocks:
            x = pin(block(x, stream))
        return self.conv_out(jax.nn.silu(self.norm_out(x)), stream)


class CausalVAE(nnx.Module):
    """Wan 2.1's causal 3D VAE: encoder, quant_conv, post_quant_conv, decoder (diffusers names)."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        kw = dict(_dtypes(config), rngs=rngs)
        z = config.z_channels
        self.config = config
        self.encoder = Encoder3d(config, rngs=rngs)
        self.quant_conv = CausalConv3d(2 * z, 2 * z, (1, 1, 1), **kw)
        self.post_quant_conv = CausalConv3d(z, z, (1, 1, 1), **kw)
        self.decoder = Decoder3d(config, rngs=rngs)

    def check_video(self, shape: tuple[int, ...]) -> None:
        """Raises naming the problem unless shape is [B, 1 + tf*k, H, W, C_in], H, W % sf == 0."""
        cfg, tf, sf = self.config, self.config.temporal_factor, self.config.spatial_factor
        if (len(shape) != 5 or shape[-1] != cfg.in_channels or (shape[1] - 1) % tf
                or shape[2] % sf or shape[3] % sf):
            raise ValueError(f"video shape {tuple(shape)}: expected [B, 1 + {tf}k, H, W, "
                             f"{cfg.in_channels}] with H and W multiples of {sf}")

    def check_latents(self, shape: tuple[int, ...]) -> None:
        """Raises naming the problem unless shape is [B, t >= 1, h, w, z]."""
        if len(shape) != 5 or shape[1] < 1 or shape[-1] != self.config.z_channels:
            raise ValueError(f"latent shape {tuple(shape)}: expected [B, t, h, w, "
                             f"{self.config.z_channels}]")

    def encode(self, video: jax.Array) -> DiagonalGaussian:
        """Posterior of a whole clip [B, 1 + 4k, H, W, 3] in [-1, 1]: latents [B, 1 + k, ...]."""
        self.check_video(video.shape)
        return self.encode_chunk(video, CausalStream(record=False))

    def decode(self, z: jax.Array) -> jax.Array:
        """Video [B, 1 + 4(t - 1), H, W, 3] (unclamped) from latents [B, t, h, w, z]."""
        self.check_latents(z.shape)
        return self.decode_chunk(z, CausalStream(record=False))

    def __call__(self, video: jax.Array, *, key: jax.Array | None = None
                 ) -> tuple[jax.Array, DiagonalGaussian]:
        """Reconstruction and posterior; decodes a posterior sample given a key, else the mode."""
        posterior = self.encode(video)
        z = posterior.mode() if key is None else posterior.sample(key)
        return self.decode(z), posterior

    def encode_chunk(self, video: jax.Array, stream: CausalStream) -> DiagonalGaussian:
        """Encodes the part of a clip that `stream` is positioned at (see layers.CausalStream)."""
        video = patchify(video, self.config.patch_size)
        h = self.quant_conv(self.encoder(video, stream), stream)
        mean, logvar = jnp.split(h, 2, axis=-1)
        return DiagonalGaussian(mean, jnp.clip(logvar, *LOGVAR_RANGE))

    def decode_chunk(self, z: jax.Array, stream: CausalStream) -> jax.Array:
        """Decodes the part of a latent clip that `stream` is positioned at."""
        return unpatchify(self.decoder(self.post_quant_conv(z, stream), stream),
                          self.config.patch_size)

    def decoder_last_layer(self) -> nnx.Param:
        """The decoder's output conv kernel (the adaptive GAN weight differentiates through it)."""
        return self.decoder.conv_out.kernel

    def encode_streaming(self, video: np.ndarray, *, chunk_latents: int = 2,
                         tile: tuple[int, int] | None = None) -> DiagonalGaussian:
        """encode() of a host clip (uint8 or float [B, T, H, W, 3]) in temporal chunks (frame 0,
        then 4 * chunk_latents frames) and optional (size, overlap) pixel tiles; numpy posterior."""
        self.check_video(video.shape)
        mean, logvar = vae_stream.encode(self, video, chunk_latents, tile)
        return DiagonalGaussian(mean, logvar)

    def decode_streaming(self, z: np.ndarray, *, chunk_latents: int = 2,
                         tile: tuple[int, int] | None = None) -> np.ndarray:
        """decode() of host latents in chunks (latent 0, then chunk_latents at a time) and
        optional (size, overlap) pixel tiles; numpy float32 video, unclamped."""
        self.check_latents(z.shape)
        return vae_stream.decode(self, z, chunk_latents, tile)

"""Building blocks of the causal video VAE (Wan 2.1 layout) on channels-last video [B, T, H, W, C].

Attribute names mirror diffusers' `AutoencoderKLWan` modules (norm1, conv1, to_qkv, resample,
time_conv, ...) so a weight map is a rename plus a transpose (see vidgen/interop/wan_vae.py).

Temporal state: every layer that looks at past frames takes a `CausalStream`. A pass over the start
of a clip uses a fresh stream (zeros before frame 0, first-frame rules in the resamplers); a pass
over a later chunk of the same clip uses the carry the previous pass recorded, so chunked passes
reproduce one pass over the whole clip exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

_INIT = nnx.initializers.lecun_normal()


class CausalStream:
    """The per-layer temporal carry of one encoder or decoder pass, handed out in call order.

    `CausalStream()` starts a clip; `CausalStream(carry)` continues one with the tuple a previous
    pass left in `.carry`. Each stateful layer calls `past()` once and then `keep()` once.
    `record=False` (only at the start of a clip) keeps nothing: the whole-clip training pass.
    """

    def __init__(self, carry: Sequence[jax.Array] | None = None, *, record: bool = True):
        if carry is not None and not record:
            raise ValueError("a stream continuing a clip must record its carry")
        self.starting = carry is None
        self.record = record
        self._past = tuple(carry) if carry is not None else ()
        self._index = 0
        self.carry: list[jax.Array] = []

    def past(self) -> jax.Array | None:
        """The frames this layer kept at the end of the previous chunk (None at clip start)."""
        if self.starting:
            return None
        if self._index >= len(self._past):
            raise ValueError(f"stream carry has {len(self._past)} entries; layer {self._index} "
                             "asked for one more (carry from a different model?)")
        return self._past[self._index]

    def keep(self, frames: jax.Array) -> None:
        """Stores what this layer must see of the past when the next chunk comes."""
        self._index += 1
        if self.record:
            self.carry.append(frames)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int,
           padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Channels-last 2D convolution: x [N, H, W, I], kernel [kh, kw, I, O] -> [N, H', W', O]."""
    return jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (stride, stride), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class RMSNorm(nnx.Module):
    """Wan's channel norm: x / max(||x||_2, 1e-12) * sqrt(C) * scale (diffusers' WanRMS_norm)."""

    def __init__(self, dim: int, *, param_dtype: jnp.dtype = jnp.float32):
        self.dim = dim
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        inv = jax.lax.rsqrt(jnp.maximum(jnp.sum(xf * xf, axis=-1, keepdims=True), 1e-24))
        y = (xf * inv).astype(x.dtype) * (self.dim ** 0.5)
        return y * self.scale[...].astype(x.dtype)


class FrameConv(nnx.Module):
    """A 2D convolution applied to every frame of [B, T, H, W, C] (diffusers' nn.Conv2d)."""

    def __init__(self, in_dim: int, out_dim: int, *, stride: int = 1,
                 padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1)),
                 dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.stride, self.padding, self.dtype = stride, padding, dtype
        self.kernel = nnx.Param(_INIT(rngs.params(), (3, 3, in_dim, out_dim), param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_dim,), param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t = x.shape[:2]
        y = conv2d(x.reshape((b * t,) + x.shape[2:]).astype(self.dtype), self.kernel[...],
                   self.stride, self.padding)
        y = y + self.bias[...].astype(self.dtype)
        return y.reshape((b, t) + y.shape[1:])


class CausalConv3d(nnx.Module):
    """A 3D convolution that sees only the current and the kt - 1 previous frames (zeros before
    the clip), 'same' in space (diffusers' WanCausalConv3d). Kernel [kt, kh, kw, I, O].

    Computed as a sum over the kt time taps of per-frame 2D convolutions (per-pixel matmuls for
    1x1 kernels) on shifted frame windows: on CPU this beats XLA's 3D convolution about twofold,
    and taps that would only meet the zero padding before the clip are skipped, not multiplied.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: tuple[int, int, int] = (3, 3, 3),
                 *, dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.kernel_size, self.out_dim, self.dtype = kernel_size, out_dim, dtype
        self.kernel = nnx.Param(_INIT(rngs.params(), (*kernel_size, in_dim, out_dim), param_dtype))
        self.bias = nnx.Param(jnp.zeros((out_dim,), param_dtype))

    def _tap(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        """One time tap: [B, T, H, W, I] x kernel [kh, kw, I, O] -> [B, T, H, W, O]."""
        kh, kw = kernel.shape[:2]
        if kh == kw == 1:
            return jnp.einsum("bthwi,io->bthwo", x, kernel[0, 0])
        b, t = x.shape[:2]
        y = conv2d(x.reshape((b * t,) + x.shape[2:]), kernel, 1,
                   ((kh // 2, kh // 2), (kw // 2, kw // 2)))
        return y.reshape((b, t) + y.shape[1:])

    def valid(self, x: jax.Array, *, stride_t: int = 1, lead_zeros: int = 0) -> jax.Array:
        """The convolution of [lead_zeros zero frames, x] without time padding:
        T_out = (lead_zeros + T - kt) // stride_t + 1. The zero frames are never materialised."""
        kt = self.kernel_size[0]
        x = x.astype(self.dtype)
        kernel = self.kernel[...].astype(self.dtype)
        t_out = (lead_zeros + x.shape[1] - kt) // stride_t + 1
        if t_out <= 0:
            return jnp.zeros(x.shape[:1] + (0,) + x.shape[2:4] + (self.out_dim,), self.dtype)
        y = None
        for k in range(kt):     # output t reads input frame t * stride_t + k - lead_zeros
            first = max(0, -(-(lead_zeros - k) // stride_t))
            if first >= t_out:
                continue
            lo = first * stride_t + k - lead_zeros
            tap = self._tap(x[:, lo:lo + (t_out - first - 1) * stride_t + 1:stride_t], kernel[k])
            tap = jnp.pad(tap, ((0, 0), (first, 0), (0, 0), (0, 0), (0, 0)))
            y = tap if y is None else y + tap
        return y + self.bias[...].astype(self.dtype)

    def __call__(self, x: jax.Array, stream: CausalStream) -> jax.Array:
        lead = self.kernel_size[0] - 1
        if lead == 0:
            return self.valid(x)
        past = stream.past()
        if past is None:
            zeros = jnp.zeros(x.shape[:1] + (lead,) + x.shape[2:], x.dtype)
            recent = jnp.concatenate([zeros, x[:, -lead:]], axis=1)
            stream.keep(recent[:, -lead:])
            return self.valid(x, lead_zeros=lead)
        x = jnp.concatenate([past.astype(x.dtype), x], axis=1)
        stream.keep(x[:, -lead:])
        return self.valid(x)


class ResidualBlock(nnx.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1 conv) shortcut (WanResidualBlock)."""

    def __init__(self, in_dim: int, out_dim: int, *, dropout: float = 0.0,
                 dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = RMSNorm(in_dim, param_dtype=param_dtype)
        self.conv1 = CausalConv3d(in_dim, out_dim, **kw)
        self.norm2 = RMSNorm(out_dim, param_dtype=param_dtype)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
        self.conv2 = CausalConv3d(out_dim, out_dim, **kw)
        self.conv_shortcut = (CausalConv3d(in_dim, out_dim, (1, 1, 1), **kw)
                              if in_dim != out_dim else None)

    def __call__(self, x: jax.Array, stream: CausalStream) -> jax.Array:
        h = x if self.conv_shortcut is None else self.conv_shortcut(x, stream)
        x = self.conv1(jax.nn.silu(self.norm1(x)), stream)
        x = jax.nn.silu(self.norm2(x))
        x = self.conv2(x if self.dropout is None else self.dropout(x), stream)
        return x + h


class AttentionBlock(nnx.Module):
    """Single-head self-attention within each frame, plus the input (WanAttentionBlock)."""

    def __init__(self, dim: int, *, dtype: jnp.dtype = jnp.float32,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = RMSNorm(dim, param_dtype=param_dtype)
        self.to_qkv = nnx.Linear(dim, 3 * dim, **kw)
        self.proj = nnx.Linear(dim, dim, **kw)

    def __call__(self, x: jax.Array, stream: CausalStream | None = None) -> jax.Array:
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 3 * c)     # [N, L, 3C]
        q, k, v = jnp.split(qkv, 3, axis=-1)
        logits = jnp.einsum("nqc,nkc->nqk", q, k).astype(jnp.float32) / (c ** 0.5)
        attn = jnp.einsum("nqk,nkc->nqc", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
        return self.proj(attn).reshape(b, t, h, w, c) + x


def upsample_nearest(x: jax.Array) -> jax.Array:
    """Doubles H and W of [B, T, H, W, C] by repeating pixels (torch 'nearest-exact' at 2x)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)


class Resample(nnx.Module):
    """Wan's resampler. mode: 'downsample2d' | 'downsample3d' (also halves time) | 'upsample2d' |
    'upsample3d' (also doubles time). Frame 0 of a clip is never mixed in time: 1 + 2k frames
    map to 1 + k and back, so a clip's first frame is coded like an image."""

    def __init__(self, dim: int, mode: str, out_dim: int | None = None, *,
                 dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
                 rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mode = mode
        if mode.startswith("down"):
            self.resample = FrameConv(dim, dim, stride=2, padding=((0, 1), (0, 1)), **kw)
            time = (dim, dim) if mode == "downsample3d" else None
        elif mode.startswith("up"):
            self.resample = FrameConv(dim, out_dim or dim // 2, **kw)
            time = (dim, 2 * dim) if mode == "upsample3d" else None
        else:
            raise ValueError(f"Resample mode {mode!r}: expected down/upsample2d/3d")
        self.time_conv = CausalConv3d(*time, (3, 1, 1), **kw) if time else None

    def __call__(self, x: jax.Array, stream: CausalStream) -> jax.Array:
        if self.mode == "upsample3d":
            x = self._double_time(x, stream)
        if self.mode.startswith("up"):
            x = upsample_nearest(x)
        x = self.resample(x)
        if self.mode == "downsample3d":
            x = self._halve_time(x, stream)
        return x

    def _double_time(self, x: jax.Array, stream: CausalStream) -> jax.Array:
        """Frame 0 of a clip stays one frame; every later frame becomes two: a causal conv to 2C
        channels over the frames after frame 0, channels [:C] -> first, [C:] -> second frame."""
        head = x[:, :1] if stream.starting else x[:, :0]
        y = self.time_conv(x[:, head.shape[1]:], stream)
        b, t, h, w, c2 = y.shape
        y = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5)
        return jnp.concatenate([head, y.reshape(b, 2 * t, h, w, c2 // 2)], axis=1)

    def _halve_time(self, x: jax.Array, stream: CausalStream) -> jax.Array:
        """Frame 0 of a clip passes through; then a stride-2 conv over frames (0,1,2), (2,3,4)...
        A chunk after the first must bring an even number of frames."""
        past = stream.past()
        stream.keep(x[:, -1:])
        if past is None:
            head, x = x[:, :1], x
        else:
            head, x = x[:, :0], jnp.concatenate([past.astype(x.dtype), x], axis=1)
        if x.shape[1] < 3:
            return head
        return jnp.concatenate([head, self.time_conv.valid(x, stride_t=2)], axis=1)

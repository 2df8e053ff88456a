"""Streaming and tiled inference for CausalVAE (its encode_streaming / decode_streaming).

A long host clip goes through the model in temporal chunks: frame 0 alone (latent 0 alone when
decoding), then fixed-size chunks (no longer than the clip needs), the last one zero-padded to
full size (the model is causal, so padding after the clip changes nothing before it). Each chunk
runs one jitted function that takes and returns the carry of every causal layer (fixed shapes, so
it compiles once; the first chunk is its own trace). Results go back to preallocated host arrays
chunk by chunk, so device memory does not grow with the clip length. Optionally every chunk is
cut into spatial tiles of equal size, each with its own carry, and the tile outputs are blended
with linear ramps across their overlaps.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.models.layers import CausalStream


def _to_float(x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """uint8 [0, 255] -> [-1, 1]; float input is only cast."""
    if x.dtype == jnp.uint8:
        return (x.astype(jnp.float32) / 127.5 - 1.0).astype(dtype)
    return x.astype(dtype)


@functools.partial(jax.jit, static_argnums=0)
def _encode_step(graphdef: nnx.GraphDef, state: nnx.State, video: jax.Array, carry):
    vae = nnx.merge(graphdef, state)
    stream = CausalStream(carry)
    post = vae.encode_chunk(_to_float(video, jnp.dtype(vae.config.dtype)), stream)
    return (post.mean.astype(jnp.float32), post.logvar.astype(jnp.float32)), tuple(stream.carry)


@functools.partial(jax.jit, static_argnums=0)
def _decode_step(graphdef: nnx.GraphDef, state: nnx.State, z: jax.Array, carry):
    vae = nnx.merge(graphdef, state)
    stream = CausalStream(carry)
    video = vae.decode_chunk(z.astype(jnp.dtype(vae.config.dtype)), stream)
    return (video.astype(jnp.float32),), tuple(stream.carry)


@dataclasses.dataclass(frozen=True)
class Tiles:
    """Spatial tiles: starts and size in latent pixels; in_scale / out_scale turn latent pixels
    into input / output pixels (encode: 8 / 1, decode: 1 / 8)."""
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    size: tuple[int, int]
    in_scale: int
    out_scale: int

    def ramp(self, axis: int, i: int) -> np.ndarray:
        """Tile i's blend weight along axis (0: y, 1: x) in output pixels: 1 inside, a linear ramp
        across each overlap with a neighbour, so overlapping ramps sum to one."""
        starts, size, s = (self.ys, self.xs)[axis], self.size[axis], self.out_scale
        w = np.ones(size * s, np.float32)
        if i > 0 and (ov := (starts[i - 1] + size - starts[i]) * s) > 0:
            w[:ov] = np.minimum(w[:ov], (np.arange(ov) + 0.5) / ov)
        if i + 1 < len(starts) and (ov := (starts[i] + size - starts[i + 1]) * s) > 0:
            w[-ov:] = np.minimum(w[-ov:], (ov - np.arange(ov) - 0.5) / ov)
        return w


def _starts(length: int, size: int, overlap: int) -> tuple[int, ...]:
    """Tile starts covering [0, length) with tiles of `size`, the last one flush with the end."""
    if length <= size:
        return (0,)
    return tuple(range(0, length - size, size - overlap)) + (length - size,)


def make_tiles(latent_hw: tuple[int, int], factor: int, tile: tuple[int, int] | None,
               in_scale: int, out_scale: int) -> Tiles:
    """The tile layout for a (size, overlap) pixel tiling (None: one tile) of latent_hw."""
    if tile is None:
        return Tiles((0,), (0,), tuple(latent_hw), in_scale, out_scale)
    size, overlap = tile
    if size % factor or overlap % factor or not 0 <= overlap < size:
        raise ValueError(f"tile={tile}: (size, overlap) must be multiples of {factor} "
                         "with 0 <= overlap < size")
    s, o = size // factor, overlap // factor
    ys, xs = (_starts(n, s, o) for n in latent_hw)
    return Tiles(ys, xs, (min(s, latent_hw[0]), min(s, latent_hw[1])), in_scale, out_scale)


def _tiled_chunk(step: Callable, piece: np.ndarray, carries: dict, tiles: Tiles,
                 n_out: int) -> list[np.ndarray]:
    """Runs step on every tile of one temporal chunk and blends the outputs on the host."""
    (hy, hx), si, so = tiles.size, tiles.in_scale, tiles.out_scale
    outs, total = None, None
    for (i, y), (j, x) in itertools.product(enumerate(tiles.ys), enumerate(tiles.xs)):
        crop = piece[:, :, y * si:(y + hy) * si, x * si:(x + hx) * si]
        res, carries[i, j] = step(jnp.asarray(crop), carries.get((i, j)))
        res = [np.asarray(r[:, :n_out]) for r in res]
        if len(tiles.ys) * len(tiles.xs) == 1:
            return res
        if outs is None:
            h, w = (tiles.ys[-1] + hy) * so, (tiles.xs[-1] + hx) * so
            outs = [np.zeros(r.shape[:2] + (h, w) + r.shape[4:], np.float32) for r in res]
            total = np.zeros((h, w, 1), np.float32)
        weight = np.outer(tiles.ramp(0, i), tiles.ramp(1, j))[:, :, None]
        region = np.s_[y * so:(y + hy) * so, x * so:(x + hx) * so]
        for out, r in zip(outs, res):
            out[:, :, region[0], region[1]] += r * weight
        total[region] += weight
    return [out / total for out in outs]


def run_chunks(step: Callable, x: np.ndarray, chunk: int, out_per_in: tuple[int, int],
               tiles: Tiles) -> list[np.ndarray]:
    """Runs step(x_chunk, carry) -> (outputs, carry) over x's frame 0, then chunks of `chunk`
    frames; a chunk of n real inputs yields n * num // den output frames (out_per_in = num, den),
    written into preallocated host arrays."""
    num, den = out_per_in
    carries: dict = {}
    outs: list[np.ndarray] = []
    spans = [(0, 1)] + [(t, min(t + chunk, x.shape[1])) for t in range(1, x.shape[1], chunk)]
    for k, (t0, t1) in enumerate(spans):
        piece = np.asarray(x[:, t0:t1])
        if k > 0 and t1 - t0 < chunk:
            pad = [(0, 0), (0, chunk - (t1 - t0))] + [(0, 0)] * (piece.ndim - 2)
            piece = np.pad(piece, pad)
        n_out = 1 if k == 0 else (t1 - t0) * num // den
        results = _tiled_chunk(step, piece, carries, tiles, n_out)
        if k == 0:
            length = 1 + (x.shape[1] - 1) * num // den
            outs = [np.empty(r.shape[:1] + (length,) + r.shape[2:], np.float32) for r in results]
        at = 0 if k == 0 else 1 + (t0 - 1) * num // den
        for out, r in zip(outs, results):
            out[:, at:at + n_out] = r
    return outs


def encode(vae: nnx.Module, video: np.ndarray, chunk_latents: int,
           tile: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, logvar) of CausalVAE.encode(video), computed chunk by chunk; see the module doc."""
    if chunk_latents < 1:
        raise ValueError(f"chunk_latents={chunk_latents}: must be >= 1")
    tf, sf = vae.config.temporal_factor, vae.config.spatial_factor
    graphdef, state = nnx.split(vae)
    tiles = make_tiles((video.shape[2] // sf, video.shape[3] // sf), sf, tile, sf, 1)
    step = functools.partial(_encode_step, graphdef, state)
    chunk_latents = max(1, min(chunk_latents, (video.shape[1] - 1) // tf))   # no needless padding
    mean, logvar = run_chunks(step, video, tf * chunk_latents, (1, tf), tiles)
    return mean, logvar


def decode(vae: nnx.Module, z: np.ndarray, chunk_latents: int,
           tile: tuple[int, int] | None) -> np.ndarray:
    """CausalVAE.decode(z) computed chunk by chunk, as a float32 host array."""
    if chunk_latents < 1:
        raise ValueError(f"chunk_latents={chunk_latents}: must be >= 1")
    tf, sf = vae.config.temporal_factor, vae.config.spatial_factor
    graphdef, state = nnx.split(vae)
    tiles = make_tiles(z.shape[2:4], sf, tile, 1, sf)
    chunk_latents = max(1, min(chunk_latents, z.shape[1] - 1))
    (video,) = run_chunks(functools.partial(_decode_step, graphdef, state), z, chunk_latents,
                          (tf, 1), tiles)
    return video

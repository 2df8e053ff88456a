"""Streaming (temporal chunks with causal carries) and spatially tiled VAE inference."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen.models import vae_stream

from vae_testing import TINY, random_vae  # tests/models is on sys.path (pytest rootdir-less layout)


@pytest.fixture(scope="module")
def vae():
    return random_vae(TINY)


@pytest.fixture(scope="module")
def clip():
    """uint8 [1, 13, 16, 24, 3]: frame 0, then 12 frames = 3 latent frames."""
    return np.random.default_rng(0).integers(0, 256, (1, 13, 16, 24, 3), dtype=np.uint8)


def test_streaming_encode_equals_whole_clip(vae, clip):
    whole = nnx.jit(lambda m, x: m.encode(x))(vae, jnp.asarray(clip, jnp.float32) / 127.5 - 1)
    post = vae.encode_streaming(clip, chunk_latents=2)    # frame 0, 8 frames, 4 (+4 padding)
    assert isinstance(post.mean, np.ndarray) and post.mean.shape == (1, 4, 2, 3, 4)
    err = max(np.abs(post.mean - np.asarray(whole.mean)).max(),
              np.abs(post.logvar - np.asarray(whole.logvar)).max())
    print(f"streaming encode: max abs err {err:.2e}")
    assert err <= 1e-5


def test_streaming_decode_equals_whole_clip(vae):
    z = np.random.default_rng(1).normal(size=(1, 4, 4, 4, 4)).astype(np.float32)
    whole = np.asarray(nnx.jit(lambda m, z: m.decode(z))(vae, jnp.asarray(z)))
    video = vae.decode_streaming(z, chunk_latents=2)      # latent 0, 2 latents, 1 (+1 padding)
    assert video.shape == whole.shape == (1, 13, 32, 32, 3)
    err = np.abs(video - whole).max()
    print(f"streaming decode: max abs err {err:.2e}")
    assert err <= 1e-5


def test_tile_covering_the_frame_is_the_untiled_pass(vae, clip):
    plain = vae.encode_streaming(clip[:, :9])
    tiled = vae.encode_streaming(clip[:, :9], tile=(32, 8))
    np.testing.assert_array_equal(tiled.mean, plain.mean)


def _local_step(scale_in: int, scale_out: int, channels: int):
    """A stand-in for the VAE whose output pixel depends only on its own latent pixel (and the
    carry): spatial tiling must reproduce it exactly, so this checks cropping and blending."""
    def step(x, carry):
        x = jnp.asarray(x, jnp.float32)
        b, t, h, w, c = x.shape
        lat = x.reshape(b, t, h // scale_in, scale_in, w // scale_in, scale_in, c).mean((3, 5))
        lat = lat[..., :1] * jnp.arange(1, channels + 1) + (0 if carry is None else carry)
        out = jnp.repeat(jnp.repeat(lat, scale_out, 2), scale_out, 3)
        return (out,), lat[:, -1:]
    return step


@pytest.mark.parametrize("scales", [(8, 1), (1, 8)])
def test_tiled_blending_reproduces_a_local_model_exactly(scales):
    x = np.random.default_rng(2).normal(size=(1, 9, 11 * scales[0], 14 * scales[0], 3))
    tiles = vae_stream.make_tiles((11, 14), 8, (48, 16), *scales)
    assert (tiles.ys, tiles.xs) == ((0, 4, 5), (0, 4, 8))   # the last tiles are flush with the end
    step = _local_step(*scales, channels=2)
    untiled = vae_stream.make_tiles((11, 14), 8, None, *scales)
    (a,) = vae_stream.run_chunks(step, x, 4, (1, 1), untiled)
    (b,) = vae_stream.run_chunks(step, x, 4, (1, 1), tiles)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_tiled_vae_decode(vae):
    """Random-weight VAE decode in 2x2 tiles of 32 px (4 latents) overlapping by 16 px on a 48 px
    frame. Tiles differ from the whole frame (zero padding instead of neighbours near their inner
    edges, per-tile mid-block attention; with random weights the receptive field spans the whole
    frame, so the rms difference is ~0.5 of the output std here, where a trained VAE is far more
    local). What must hold exactly: where one tile alone has weight (the corners) the result is
    that tile decoded alone, and everywhere the blend is a convex combination of the tiles, so its
    error is at most the worst error of the tiles covering the pixel.
    """
    z = np.random.default_rng(3).normal(size=(1, 3, 6, 6, 4)).astype(np.float32)
    whole = vae.decode_streaming(z)
    tiled = vae.decode_streaming(z, tile=(32, 16))
    assert tiled.shape == whole.shape == (1, 9, 48, 48, 3)
    worst = np.zeros_like(whole)
    for y, x in [(0, 0), (0, 2), (2, 0), (2, 2)]:         # the layout's latent tile starts
        alone = vae.decode_streaming(np.ascontiguousarray(z[:, :, y:y + 4, x:x + 4]))
        region = np.s_[:, :, 8 * y:8 * y + 32, 8 * x:8 * x + 32]
        worst[region] = np.maximum(worst[region], np.abs(alone - whole[region]))
        if (y, x) == (0, 0):
            np.testing.assert_allclose(tiled[:, :, :16, :16], alone[:, :, :16, :16], atol=1e-5)
    assert np.all(np.abs(tiled - whole) <= worst + 1e-5)
    rel = np.sqrt(np.mean((tiled - whole) ** 2)) / whole.std()
    print(f"tiled vs untiled decode: rms difference / output std = {rel:.3f}")
    assert 0 < rel < 1


def test_tile_options_are_checked():
    with pytest.raises(ValueError, match="tile="):
        vae_stream.make_tiles((8, 8), 8, (36, 8), 8, 1)
    with pytest.raises(ValueError, match="tile="):
        vae_stream.make_tiles((8, 8), 8, (32, 32), 8, 1)

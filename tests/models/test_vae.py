"""CausalVAE: config, shapes, causality, the posterior maths (numerical parity with diffusers is
in tests/interop/test_wan_vae.py, streaming and tiling in test_vae_stream.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen.models import vae as vae_lib
from vidgen.models.vae import CausalVAE, DiagonalGaussian, VAEConfig

from vae_testing import TINY, random_vae  # tests/models is on sys.path (pytest rootdir-less layout)


def test_config_defaults_are_wan21_and_from_dict_names_unknown_keys():
    cfg = VAEConfig()
    assert (cfg.base_channels, cfg.channel_mults, cfg.num_res_blocks, cfg.z_channels,
            cfg.temporal_downsample, cfg.attn_scales) == (96, (1, 2, 4, 4), 2, 16,
                                                          (False, True, True), ())
    assert (cfg.temporal_factor, cfg.spatial_factor) == (4, 8)
    assert VAEConfig.from_dict({"channel_mults": [1, 2], "temporal_downsample": [True]}) == \
        VAEConfig(channel_mults=(1, 2), temporal_downsample=(True,))
    with pytest.raises(ValueError, match="base_channel"):
        VAEConfig.from_dict({"base_channel": 8})
    with pytest.raises(ValueError, match="temporal_downsample"):
        VAEConfig(temporal_downsample=(True,))


@pytest.mark.parametrize("frames", [1, 5, 9, 13])
def test_shapes_with_default_widths(frames):
    vae = nnx.eval_shape(lambda: CausalVAE(VAEConfig(), rngs=nnx.Rngs(0)))
    video = jax.ShapeDtypeStruct((2, frames, 32, 48, 3), jnp.float32)
    recon, post = nnx.eval_shape(lambda m, x: m(x, key=jax.random.key(0)), vae, video)
    latents = (2, 1 + (frames - 1) // 4, 4, 6, 16)
    assert post.mean.shape == post.logvar.shape == latents
    assert recon.shape == video.shape


def test_bad_shapes_raise_naming_the_shape():
    vae = nnx.eval_shape(lambda: CausalVAE(TINY, rngs=nnx.Rngs(0)))
    for shape in [(1, 4, 16, 16, 3), (1, 5, 12, 16, 3), (1, 5, 16, 16, 1), (5, 16, 16, 3)]:
        with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
            vae.encode(jnp.zeros(shape))
    with pytest.raises(ValueError, match="latent shape"):
        vae.decode(jnp.zeros((1, 2, 2, 2, 3)))


def test_image_round_trip_and_decoder_last_layer():
    vae = random_vae(TINY)
    image = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 1, 16, 24, 3)), jnp.float32)
    recon, post = nnx.jit(lambda m, x: m(x))(vae, image)
    assert post.mean.shape == (2, 1, 2, 3, 4) and recon.shape == image.shape
    assert np.isfinite(np.asarray(recon)).all()
    last = vae.decoder_last_layer()
    assert isinstance(last, nnx.Param) and last.shape == (3, 3, 3, 8, 3)


def test_encode_is_causal():
    """Changing frame j leaves every latent frame before j's (latent ceil(j / 4)) bit-identical."""
    vae = random_vae(TINY, seed=1)
    encode = nnx.jit(lambda m, x: m.encode(x).mean)
    video = np.random.default_rng(1).uniform(-1, 1, (1, 9, 16, 16, 3)).astype(np.float32)
    base = np.asarray(encode(vae, jnp.asarray(video)))
    for j in (1, 4, 5, 8):
        changed = video.copy()
        changed[:, j] = -changed[:, j]
        out = np.asarray(encode(vae, jnp.asarray(changed)))
        first = -(-j // 4)
        np.testing.assert_array_equal(out[:, :first], base[:, :first])
        assert np.abs(out[:, first] - base[:, first]).max() > 1e-4, j


def test_decode_is_causal():
    """Changing latent i leaves every frame before 1 + 4(i - 1) bit-identical."""
    vae = random_vae(TINY, seed=2)
    decode = nnx.jit(lambda m, z: m.decode(z))
    z = np.random.default_rng(2).normal(size=(1, 3, 2, 2, 4)).astype(np.float32)
    base = np.asarray(decode(vae, jnp.asarray(z)))
    for i in (1, 2):
        changed = z.copy()
        changed[:, i] += 1.0
        out = np.asarray(decode(vae, jnp.asarray(changed)))
        first = 1 + 4 * (i - 1)
        np.testing.assert_array_equal(out[:, :first], base[:, :first])
        assert np.abs(out[:, first] - base[:, first]).max() > 1e-4, i


def test_diagonal_gaussian_against_float64_numpy():
    rng = np.random.default_rng(3)
    mean, logvar = rng.normal(size=(3, 2, 4, 4, 5)), rng.normal(size=(3, 2, 4, 4, 5))
    post = DiagonalGaussian(jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32))
    kl = 0.5 * np.sum(mean ** 2 + np.exp(logvar) - 1 - logvar, axis=(1, 2, 3, 4))
    np.testing.assert_allclose(np.asarray(post.kl()), kl, rtol=1e-5)
    assert post.kl().shape == (3,)
    np.testing.assert_array_equal(np.asarray(post.mode()), np.asarray(post.mean))
    draws = np.asarray(jax.vmap(post.sample)(jax.random.split(jax.random.key(0), 2000)))
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.25 * np.exp(0.5 * logvar).max())
    np.testing.assert_allclose(np.log(draws.var(0)), logvar, atol=0.3)
    assert jax.tree.leaves(jax.jit(lambda p: p)(post))[0].shape == mean.shape   # a pytree


def test_gradients_flow_with_bfloat16_compute_and_other_factors():
    """A 2x time, 2x space variant (1 + 2k frames) in bfloat16: the same code, other factors.
    The gradient runs on a 1-frame clip (fewest ops, so the compile stays short)."""
    cfg = VAEConfig(base_channels=4, channel_mults=(1, 2), temporal_downsample=(True,),
                    num_res_blocks=1, z_channels=4, dtype="bfloat16")
    vae = random_vae(cfg)
    clip = jax.ShapeDtypeStruct((1, 5, 8, 8, 3), jnp.float32)
    assert nnx.eval_shape(lambda m, x: m.encode(x), vae, clip).mean.shape == (1, 3, 4, 4, 4)
    image = jnp.asarray(np.random.default_rng(4).uniform(-1, 1, (2, 1, 8, 8, 3)), jnp.float32)

    def loss(model):
        recon, post = model(image, key=jax.random.key(0))
        return jnp.mean(jnp.abs(recon.astype(jnp.float32) - image)) + 1e-3 * post.kl().mean()

    grads = nnx.jit(nnx.grad(loss))(vae)
    kernel = grads.decoder.conv_out.kernel[...]
    assert kernel.dtype == jnp.float32 and np.isfinite(np.asarray(kernel)).all()
    assert np.abs(np.asarray(grads.encoder.conv_in.kernel[...])).max() > 0


def test_patchify_is_a_pixel_unshuffle_and_unpatchify_inverts_it():
    x = np.arange(2 * 1 * 4 * 6 * 3, dtype=np.float32).reshape(2, 1, 4, 6, 3)
    p = vae_lib.patchify(jnp.asarray(x), 2)
    assert p.shape == (2, 1, 2, 3, 12)
    # position (i, j), channel c * 4 + dy * 2 + dx holds pixel (2i + dy, 2j + dx), channel c
    for i, j, c, dy, dx in [(0, 0, 0, 0, 0), (1, 2, 2, 1, 0), (0, 1, 1, 1, 1), (1, 0, 0, 0, 1)]:
        assert p[1, 0, i, j, c * 4 + dy * 2 + dx] == x[1, 0, 2 * i + dy, 2 * j + dx, c]
    np.testing.assert_array_equal(vae_lib.unpatchify(p, 2), x)


def test_patched_vae_compresses_by_patch_times_levels_and_stays_causal():
    cfg = VAEConfig(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1, z_channels=4,
                    temporal_downsample=(True, True), patch_size=2)
    assert (cfg.temporal_factor, cfg.spatial_factor) == (4, 8)
    vae = random_vae(cfg)
    video = jax.random.uniform(jax.random.key(0), (1, 9, 16, 24, 3), minval=-1, maxval=1)
    z = vae.encode(video).mean
    assert z.shape == (1, 3, 2, 3, 4)
    assert vae.decode(z).shape == video.shape
    changed = vae.encode(video.at[:, 5:].set(0.0)).mean       # frames 5.. feed latent 2 only
    np.testing.assert_array_equal(np.asarray(changed[:, :2]), np.asarray(z[:, :2]))

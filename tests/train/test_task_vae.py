"""The VAE task: loss terms vs references, GAN gradient wiring, evaluate/finalize, config checks,
starting from a diffusers AutoencoderKLWan folder (config.init_from)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from launch.configs import vae_tiny
from vidgen.evaluation import metrics
from vidgen.interop import wan_vae
from vidgen.models.discriminator import PatchDiscriminator3D, hinge_d_loss, hinge_g_loss
from vidgen.models.vae import CausalVAE, VAEConfig
from vidgen.train.tasks import vae as task

SHAPE = (2, 5, 16, 16, 3)


def _config(disc: float = 0.0):
    """A small model (2x temporal, 2x spatial compression) keeps compile times short: eager
    parameter init compiles one initializer per distinct shape, so the widths are all equal."""
    c = vae_tiny.get_config("tiny")
    c.model.update(base_channels=4, channel_mults=(1, 1), temporal_downsample=(True,),
                   z_channels=4, patch_size=1)
    c.data.update(num_frames=SHAPE[1], height=SHAPE[2], width=SHAPE[3], batch_size=SHAPE[0])
    c.loss.update(disc=disc, adaptive_disc_weight=True, disc_start=3, kl=0.01, l1=1.0, l2=0.5,
                  ssim=0.2)
    c.disc.update(channels=8, num_layers=2)
    return c


def _video(seed: int = 0) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), SHAPE, 0, 256).astype(jnp.uint8)


@pytest.fixture(scope="module")
def gan_model():
    return task.build_model(_config(disc=0.5), nnx.Rngs(0))


def _unit(video) -> jax.Array:
    return jnp.asarray(video, jnp.float32) / 127.5 - 1


def _sq_norm(tree) -> float:
    return float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _assert_trees_close(a, b):
    """Leafwise equality up to float32 noise relative to each leaf's largest entry."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_allclose(x, y, atol=1e-3 * np.abs(y).max() + 1e-8, rtol=0)


def test_build_model_holds_disc_only_with_gan_loss(gan_model):
    assert isinstance(gan_model.disc, PatchDiscriminator3D)
    c = _config()
    bias = np.asarray(gan_model.vae.quant_conv.bias[...])     # [mean | logvar] channels
    assert (bias[c.model.z_channels:] == c.loss.init_logvar).all()
    assert (bias[:c.model.z_channels] == 0).all()
    abstract = nnx.eval_shape(lambda: task.build_model(_config(), nnx.Rngs(0)))
    assert abstract.disc is None and isinstance(abstract.vae, CausalVAE)


def test_terms_match_references(gan_model):
    c = _config()
    model = task.VAETrainModel(gan_model.vae, None)
    video, key = _video(), jax.random.key(1)
    loss, m = nnx.jit(lambda mod: task.loss_fn(mod, {"video": video}, key, jnp.asarray(0), c))(model)
    recon, post = nnx.jit(lambda vae: vae(_unit(video), key=key))(model.vae)
    target = np.asarray(video, np.float64) / 127.5 - 1
    recon, mean, logvar = (np.asarray(a, np.float64) for a in (recon, post.mean, post.logvar))
    kl = np.mean(0.5 * (mean ** 2 + np.exp(logvar) - 1 - logvar))   # per latent element
    l1, l2 = np.mean(np.abs(recon - target)), np.mean((recon - target) ** 2)
    frames = (-1,) + SHAPE[2:]
    ssim = float(jnp.mean(metrics.ssim_frames(jnp.asarray((recon.reshape(frames) + 1) / 2),
                                              jnp.asarray((target.reshape(frames) + 1) / 2))))
    assert float(m["l1"]) == pytest.approx(l1, rel=1e-5)
    assert float(m["l2"]) == pytest.approx(l2, rel=1e-5)
    assert float(m["kl"]) == pytest.approx(kl, rel=1e-4)
    assert float(m["ssim"]) == pytest.approx(ssim, abs=1e-5)
    want = c.loss.l1 * l1 + c.loss.l2 * l2 + c.loss.ssim * (1 - ssim) + c.loss.kl * kl
    assert float(loss) == pytest.approx(want, rel=1e-5)
    mse = np.mean((np.clip(recon, -1, 1) / 2 - target / 2) ** 2, axis=(1, 2, 3, 4))
    assert float(m["psnr"]) == pytest.approx(np.mean(-10 * np.log10(mse)), rel=1e-5)


def test_gan_wiring_and_adaptive_weight(gan_model):
    """One loss, one gradient: the VAE gets rec + KL + w * G terms, the discriminator only the
    D term; nothing adversarial before disc_start; w is VQGAN's grad-norm ratio at the last layer."""
    c, model = _config(disc=0.5), gan_model
    video, key = _video(), jax.random.key(1)
    target = _unit(video)

    @nnx.jit
    def full(mod, step):
        fn = lambda m: task.loss_fn(m, {"video": video}, key, step, c)  # noqa: E731
        return nnx.grad(fn, has_aux=True)(mod)

    @nnx.jit
    def vae_side(vae, disc, a_rec, a_gan):     # reference objective of the VAE parameters
        def fn(v):
            recon, post = v(target, key=key)
            kl = jnp.mean(post.kl()) / np.prod(post.mean.shape[1:])
            return (a_rec * task.reconstruction_loss(recon, target, c.loss)[0] + c.loss.kl * kl
                    + a_gan * hinge_g_loss(disc(recon)))
        return nnx.grad(fn)(vae)

    @nnx.jit
    def disc_side(disc, vae):                  # reference objective of the discriminator
        recon = vae(target, key=key)[0]
        return nnx.grad(lambda d: hinge_d_loss(d(target), d(recon)))(disc)

    grads, m = full(model, jnp.asarray(3))
    weight = float(m["disc_weight"])
    _assert_trees_close(grads["vae"], vae_side(model.vae, model.disc, 1.0, weight))
    _assert_trees_close(grads["disc"], disc_side(model.disc, model.vae))
    assert _sq_norm(grads["disc"]) > 0 and float(m["disc_on"]) == 1.0

    before, m_before = full(model, jnp.asarray(2))
    assert _sq_norm(before["disc"]) == 0.0 and float(m_before["disc_on"]) == 0.0
    _assert_trees_close(before["vae"], vae_side(model.vae, model.disc, 1.0, 0.0))

    last = model.vae.decoder_last_layer()
    path = next(p for p, node in nnx.iter_graph(model.vae) if node is last)

    def at_last(g):
        return np.asarray(dict(nnx.to_flat_state(g))[path][...], np.float64)

    rec = at_last(vae_side(model.vae, model.disc, 1.0, 0.0))   # KL does not reach the decoder
    gan = at_last(vae_side(model.vae, model.disc, 0.0, 1.0))
    want = 0.5 * np.linalg.norm(rec) / (np.linalg.norm(gan) + 1e-4)
    assert weight == pytest.approx(want, rel=1e-3)
    assert all(np.isfinite(float(v)) for v in m.values())


def test_evaluate_writes_files_and_scores(tmp_path, gan_model):
    c, model = _config(disc=0.5), gan_model
    c.eval.update(batch_size=2, num_videos=2)
    clips = {"video": np.asarray(jnp.concatenate([_video(0), _video(1)[:1]])), "id": ["a", "b", "c"]}
    out = task.evaluate(model, clips, str(tmp_path), 7, c)
    recon = jnp.clip(nnx.jit(lambda v: v(_unit(clips["video"]))[0])(model.vae), -1, 1)
    want = float(jnp.mean(metrics.psnr(jnp.asarray(clips["video"]), recon)))
    assert out["psnr"] == pytest.approx(want, rel=1e-4) and 0 < out["ssim"] <= 1
    files = sorted(os.listdir(tmp_path / "eval" / "step_0000007"))
    assert files == ["00_a.mp4", "01_b.mp4", "strip.png"]


def test_finalize_latent_stats(gan_model):
    c, model = _config(), gan_model
    batches = [{"video": np.asarray(_video(i))} for i in range(3)]
    c.eval.latent_stats_batches = 2
    stats = task.finalize(model, iter(batches), c)
    encode = nnx.jit(lambda v, x: v.encode(_unit(x)).mode())
    z = np.concatenate([encode(model.vae, b["video"]) for b in batches[:2]]).reshape(-1, c.model.z_channels)
    np.testing.assert_allclose(stats["latent_mean"], z.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["latent_std"], z.std(0), atol=1e-5)
    assert stats["num_batches"] == 2 and stats["num_latent_positions"] == len(z)


@pytest.mark.parametrize("key,value,match", [
    ("data.num_frames", 8, r"config.data.num_frames=8: must be 1\+4k"),
    ("data.height", 60, r"config.data.height=60: must be a positive multiple of 8"),
    ("loss.kl", -1.0, r"config.loss.kl=-1.0: loss weights must be >= 0"),
    ("loss.disc_start", -5, r"config.loss.disc_start=-5"),
    ("model.temporal_downsample", (True,), r"config.model.temporal_downsample=\(True,\)"),
])
def test_validate_config_names_the_key(key, value, match):
    c = vae_tiny.get_config()
    task.validate_config(c)
    section, field = key.split(".")
    c[section][field] = value
    with pytest.raises(ValueError, match=match):
        task.validate_config(c)


def _filled(build, value):
    """The module build() makes, without an init compile: every parameter set by value(shape)."""
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(build)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var.set_value(jnp.asarray(value(var.shape), var.dtype))
    return model


def test_init_from_loads_a_diffusers_vae_and_keeps_the_discriminator(tmp_path):
    config = _config(disc=0.5)
    rng, sources = np.random.default_rng(0), {}
    for name, z in (("wan", 4), ("wider", 8)):            # "wider": a mismatched folder
        vae_config = VAEConfig.from_dict({**config.model.to_dict(), "z_channels": z})
        sources[name] = _filled(lambda: CausalVAE(vae_config, rngs=nnx.Rngs(0)),
                                lambda shape: rng.normal(size=shape))
        wan_vae.save_pretrained(sources[name], tmp_path / name)
    config.init_from = str(tmp_path / "wan")
    model = _filled(lambda: task.build_model(config, nnx.Rngs(0)), np.zeros)
    task.init_from(config, model)
    got = dict(nnx.to_flat_state(nnx.state(model.vae, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(sources["wan"], nnx.Param)):
        np.testing.assert_array_equal(np.asarray(got[path].get_value()),
                                      np.asarray(var.get_value()), err_msg=str(path))
    assert _sq_norm(nnx.state(model.disc, nnx.Param)) == 0.0
    config.init_from = str(tmp_path / "wider")
    with pytest.raises(ValueError, match=r"z_channels=8, but config\.model\.z_channels=4"):
        task.init_from(config, model)

"""The VAE task: train the causal video VAE with L1 + SSIM + KL (+ a hinge GAN), and evaluate it.

One NNX module holds everything trainable (`VAETrainModel`: the VAE and, when `config.loss.disc`
> 0, a 3D patch discriminator), so a single optimizer updates both. The GAN is folded into one
scalar loss with stop_gradient wiring: the generator term sees the discriminator through
stop-gradient parameters, and the discriminator term sees stop-gradient reconstructions, so the
VAE never learns from the discriminator loss and the discriminator never from the generator loss.

Config keys read here: `config.model` (VAEConfig fields), `config.loss` (l1, l2, ssim, kl, disc,
disc_start, adaptive_disc_weight, init_logvar), `config.disc` (channels, num_layers; only when
loss.disc > 0), `config.data` (num_frames, height, width, batch_size), and optionally
`config.eval` (batch_size, num_videos, fps, latent_stats_batches) and `config.init_from` (a
diffusers AutoencoderKLWan folder to start the VAE from, or "" for a fresh init).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import partial

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vidgen.evaluation import metrics, visualize
from vidgen.interop import wan_vae
from vidgen.io.video import write_video
from vidgen.models.discriminator import PatchDiscriminator3D, hinge_d_loss, hinge_g_loss
from vidgen.models.vae import CausalVAE, VAEConfig
from vidgen.train.tasks import Task, load_pretrained_into

ConfigDict = ml_collections.ConfigDict
MAX_DISC_WEIGHT = 1e4       # VQGAN's clip on the adaptive weight


class VAETrainModel(nnx.Module):
    """The trainable pair: `vae` (CausalVAE) and `disc` (PatchDiscriminator3D, or None)."""

    def __init__(self, vae: CausalVAE, disc: PatchDiscriminator3D | None):
        self.vae = vae
        self.disc = disc


def _set_initial_logvar(vae: CausalVAE, logvar: float) -> None:
    """Starts the posterior log-variance near `logvar` (the bias of quant_conv's logvar half).

    The default 0 means unit-variance sampling noise around encoder means of size ~0.5: the
    decoder first learns to blur through that noise, which costs thousands of steps before the
    KL-weighted balance is found. A negative start (e.g. -6, std 0.05) skips that phase."""
    bias = vae.quant_conv.bias
    bias[...] = bias[...].at[vae.config.z_channels:].set(logvar)


def build_model(config: ConfigDict, rngs: nnx.Rngs) -> VAETrainModel:
    """Builds the VAE from config.model (posterior logvar starting at config.loss.init_logvar),
    plus the discriminator when the GAN loss is on."""
    vae = CausalVAE(VAEConfig.from_dict(config.model.to_dict()), rngs=rngs)
    _set_initial_logvar(vae, config.loss.get("init_logvar", 0.0))
    disc = None
    if config.loss.disc > 0:
        disc = PatchDiscriminator3D(config.disc.channels, config.disc.num_layers, rngs=rngs)
    return VAETrainModel(vae, disc)


def init_from(config: ConfigDict, model: VAETrainModel) -> None:
    """Overwrites the VAE with config.init_from, a diffusers AutoencoderKLWan folder (e.g. Wan
    2.1's vae/); a discriminator keeps its fresh init."""
    load_pretrained_into(model.vae, wan_vae.load_pretrained, config.init_from)


def _to_float(video: jax.Array) -> jax.Array:
    """uint8 video to float32 in [-1, 1]; float video is only cast."""
    if video.dtype == jnp.uint8:
        return video.astype(jnp.float32) / 127.5 - 1.0
    return video.astype(jnp.float32)


def reconstruction_loss(recon: jax.Array, target: jax.Array,
                        loss: ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """l1 * mean|recon - target| + l2 * mean (recon - target)^2 + ssim * (1 - SSIM), on [-1, 1]
    float videos [B, T, H, W, 3]. The squared term is what PSNR measures: it weighs a missed
    object's large errors above many small background ones, where L1 weighs every pixel alike."""
    err = recon - target
    l1, l2 = jnp.mean(jnp.abs(err)), jnp.mean(jnp.square(err))
    total, terms = loss.l1 * l1 + loss.l2 * l2, {"l1": l1, "l2": l2}
    if loss.ssim > 0:
        frames = (-1,) + target.shape[2:]
        score = jnp.mean(metrics.ssim_frames((recon.reshape(frames) + 1) / 2,
                                             (target.reshape(frames) + 1) / 2))
        total, terms["ssim"] = total + loss.ssim * (1.0 - score), score
    return total, terms


def _frozen(module: nnx.Module) -> nnx.Module:
    """A copy of module whose parameters carry no gradient."""
    graphdef, state = nnx.split(module)
    return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))


def _run_vae(vae: CausalVAE, video: jax.Array, key: jax.Array | None, with_pullback: bool):
    """Reconstructs video; with_pullback also returns the vector-Jacobian product of the
    reconstruction w.r.t. the decoder's last-layer kernel (for the adaptive GAN weight)."""
    if not with_pullback:
        recon, posterior = vae(video, key=key)
        return recon.astype(jnp.float32), posterior, None
    last = vae.decoder_last_layer()
    graphdef, kernel, rest = nnx.split(vae, lambda _, v: v is last, ...)

    def run(kernel_state):
        recon, posterior = nnx.merge(graphdef, kernel_state, rest)(video, key=key)
        return recon.astype(jnp.float32), posterior

    recon, pullback, posterior = jax.vjp(run, kernel, has_aux=True)
    return recon, posterior, pullback


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _adaptive_weight(frozen_disc: nnx.Module, target: jax.Array, recon: jax.Array, pullback,
                     loss: ConfigDict) -> jax.Array:
    """VQGAN's balance |grad_W rec| / |grad_W gan| at the decoder's last-layer kernel W, clipped
    and held constant. `pullback` maps d(loss)/d(recon) to d(loss)/dW through the last layer only."""
    sg = jax.lax.stop_gradient(recon)
    rec_cot = jax.grad(lambda r: reconstruction_loss(r, target, loss)[0])(sg)
    gan_cot = jax.grad(lambda r: hinge_g_loss(frozen_disc(r)))(sg)
    ratio = _global_norm(pullback(rec_cot)) / (_global_norm(pullback(gan_cot)) + 1e-4)
    return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, MAX_DISC_WEIGHT))


def _adversarial_loss(model: VAETrainModel, target: jax.Array, recon: jax.Array, pullback,
                      step: jax.Array, config: ConfigDict) -> tuple[jax.Array, dict]:
    """Generator + discriminator hinge terms, both gated on step >= config.loss.disc_start."""
    frozen_disc = _frozen(model.disc)
    g_loss = hinge_g_loss(frozen_disc(recon))               # gradient reaches the VAE only
    both = jnp.concatenate([target, jax.lax.stop_gradient(recon)])
    real_logits, fake_logits = jnp.split(model.disc(both), 2)     # reaches the disc only
    d_loss = hinge_d_loss(real_logits, fake_logits)
    weight = jnp.asarray(config.loss.disc, jnp.float32)
    if config.loss.adaptive_disc_weight:
        weight = weight * _adaptive_weight(frozen_disc, target, recon, pullback, config.loss)
    on = (step >= config.loss.disc_start).astype(jnp.float32)
    terms = {"g_loss": g_loss, "d_loss": d_loss, "disc_weight": weight, "disc_on": on,
             "logits_real": jnp.mean(real_logits), "logits_fake": jnp.mean(fake_logits)}
    return on * (weight * g_loss + d_loss), terms


def loss_fn(model: VAETrainModel, batch: dict[str, jax.Array], rng: jax.Array | None,
            step: jax.Array, config: ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The VAE objective on batch["video"] [B, T, H, W, 3] (uint8 or [-1, 1]), decoding a
    posterior sample drawn with rng (the mode if rng is None). Returns (loss, metrics with every
    term); the KL is per latent element, averaged over the batch."""
    target = _to_float(batch["video"])
    adversarial = model.disc is not None
    with_pullback = adversarial and bool(config.loss.adaptive_disc_weight)
    recon, posterior, pullback = _run_vae(model.vae, target, rng, with_pullback)
    rec_loss, terms = reconstruction_loss(recon, target, config.loss)
    kl = jnp.mean(posterior.kl()) / np.prod(posterior.mean.shape[1:])
    loss = rec_loss + config.loss.kl * kl
    terms.update(rec_loss=rec_loss, kl=kl,
                 psnr=jnp.mean(metrics.psnr(target, jax.lax.stop_gradient(recon))))
    if adversarial:
        gan, gan_terms = _adversarial_loss(model, target, recon, pullback, step, config)
        loss, terms = loss + gan, {**terms, **gan_terms}
    return loss, {"loss": loss, **terms}


@partial(jax.jit, static_argnums=0)
def _reconstruct(graphdef, state, video: jax.Array):
    """Posterior-mode reconstruction clipped to [-1, 1], with per-clip PSNR and SSIM."""
    vae = nnx.merge(graphdef, state)
    recon = jnp.clip(vae(_to_float(video))[0].astype(jnp.float32), -1.0, 1.0)
    return recon, metrics.psnr(video, recon), metrics.ssim(video, recon)


@partial(jax.jit, static_argnums=0)
def _encode_mode(graphdef, state, video: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state).encode(_to_float(video)).mode().astype(jnp.float32)


def _batches(videos: np.ndarray, size: int):
    """Yields (start, chunk) with every chunk padded (by repeating its last clip) to `size`."""
    for start in range(0, len(videos), size):
        chunk = videos[start:start + size]
        pad = size - len(chunk)
        yield start, np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk


def _write_samples(out_dir: str, originals: np.ndarray, recons: np.ndarray, ids, fps: float):
    """One side-by-side mp4 per clip (original | reconstruction) and a PNG strip of them all."""
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for i, (orig, recon) in enumerate(zip(originals, recons)):
        name = f"{i:02d}_{ids[i]}" if ids is not None else f"{i:02d}"
        write_video(os.path.join(out_dir, f"{name}.mp4"), visualize.side_by_side(orig, recon), fps)
        rows += [orig, recon]
    visualize.save_png(os.path.join(out_dir, "strip.png"), visualize.frame_strip(rows))


def evaluate(model: VAETrainModel, eval_clips: dict, workdir: str, step: int,
             config: ConfigDict) -> dict[str, float]:
    """Reconstructs the held-out clips (posterior mode) and scores them; process 0 writes
    comparison mp4s and strip.png to {workdir}/eval/step_{step:07d}/. Returns mean PSNR/SSIM."""
    videos = np.asarray(eval_clips["video"])
    ev = config.get("eval", ConfigDict())
    recons, psnrs, ssims = reconstruct_clips(model.vae, videos, ev.get("batch_size", 4))
    if jax.process_index() == 0:
        num = ev.get("num_videos", 4)
        out_dir = os.path.join(workdir, "eval", f"step_{step:07d}")
        ids = eval_clips.get("id")
        _write_samples(out_dir, videos[:num], recons[:num],
                       None if ids is None else list(ids)[:num], ev.get("fps", 8.0))
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}


def reconstruct_clips(vae: nnx.Module, videos: np.ndarray, batch_size: int = 4
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a VAE keeps of uint8 clips [N, T, H, W, 3]: their posterior-mode reconstructions
    (uint8, same shape) and the per-clip PSNR and SSIM [N]."""
    graphdef, state = nnx.split(vae)
    recons, psnrs, ssims = [], [], []
    for start, chunk in _batches(videos, min(batch_size, len(videos))):
        recon, psnr, ssim = _reconstruct(graphdef, state, chunk)
        keep = min(len(chunk), len(videos) - start)
        recons.append(visualize.to_uint8(np.asarray(recon)[:keep]))
        psnrs.append(np.asarray(psnr)[:keep])
        ssims.append(np.asarray(ssim)[:keep])
    return np.concatenate(recons), np.concatenate(psnrs), np.concatenate(ssims)


def finalize(model: VAETrainModel, batches: Iterable[dict], config: ConfigDict) -> dict:
    """Per-channel mean and std of the posterior-mode latents over a few training batches
    (config.eval.latent_stats_batches, default 8): the DiT trains on (z - mean) / std."""
    num_batches = config.get("eval", ConfigDict()).get("latent_stats_batches", 8)
    graphdef, state = nnx.split(model.vae)
    total, total_sq, count, seen = 0.0, 0.0, 0, 0
    for batch in batches:
        if seen == num_batches:
            break
        z = np.asarray(_encode_mode(graphdef, state, batch["video"]), np.float64)
        z = z.reshape(-1, z.shape[-1])
        total, total_sq = total + z.sum(0), total_sq + np.square(z).sum(0)
        count, seen = count + len(z), seen + 1
    if seen == 0:
        raise ValueError("finalize got no batches to compute latent statistics from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return {"latent_mean": mean.tolist(), "latent_std": std.tolist(),
            "num_latent_positions": int(count), "num_batches": seen}


def _require(ok: bool, key: str, value, why: str) -> None:
    if not ok:
        raise ValueError(f"config.{key}={value!r}: {why}")


def validate_config(config: ConfigDict) -> None:
    """Rejects configs the VAE task cannot train, naming the key and its value."""
    m, d, loss = config.model, config.data, config.loss
    levels = len(m.channel_mults)
    _require(levels >= 1, "model.channel_mults", m.channel_mults, "needs at least one level")
    _require(len(m.temporal_downsample) == levels - 1, "model.temporal_downsample",
             m.temporal_downsample, f"needs one flag per downsampling ({levels - 1})")
    try:
        vae_config = VAEConfig.from_dict(m.to_dict())
    except ValueError as e:
        raise ValueError(f"config.model: {e}") from e
    t_comp, s_comp = vae_config.temporal_factor, vae_config.spatial_factor
    _require(d.num_frames >= 1 and (d.num_frames - 1) % t_comp == 0, "data.num_frames",
             d.num_frames, f"must be 1+{t_comp}k (temporal compression {t_comp})")
    for key in ("height", "width"):
        value = d[key]
        _require(value > 0 and value % s_comp == 0, f"data.{key}", value,
                 f"must be a positive multiple of {s_comp} (spatial compression)")
        if loss.ssim > 0:
            _require(value >= metrics.SSIM_WINDOW, f"data.{key}", value,
                     f"SSIM loss needs frames of at least {metrics.SSIM_WINDOW} pixels")
    _require(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
    for key in ("l1", "l2", "ssim", "kl", "disc"):
        _require(loss[key] >= 0, f"loss.{key}", loss[key], "loss weights must be >= 0")
    _require(loss.l1 + loss.l2 + loss.ssim > 0, "loss.l1", loss.l1,
             "l1, l2 and ssim are all 0: nothing asks for a reconstruction")
    _require(loss.disc_start >= 0, "loss.disc_start", loss.disc_start, "must be >= 0")
    if loss.disc > 0:
        for key in ("channels", "num_layers"):
            _require(config.disc[key] >= 1, f"disc.{key}", config.disc[key], "must be >= 1")


TASK = Task(name="vae", build_model=build_model, loss_fn=loss_fn, evaluate=evaluate,
            finalize=finalize, validate_config=validate_config, init_from=init_from)

r"""Exports a training run (its EMA weights) for serving, sampling or the PyTorch world.

    python -m launch.export --checkpoint=runs/demo/dit_tiny --format=inference \
        --out=exports/dit_tiny
    python -m launch.export --checkpoint=runs/demo/dit_tiny --format=diffusers \
        --out=exports/dit_tiny_diffusers [--dtype=bfloat16] [--max_shard_gb=5]
    python -m launch.export --checkpoint=runs/demo/dit_tiny --format=stablehlo \
        --out=exports/dit_tiny_hlo --batch_size=2 --num_frames=5 --height=64 --width=64

inference: bfloat16 EMA parameters as an orbax checkpoint with the config, no optimizer state
  (vidgen/interop/inference.py); a dit run's export also holds its VAE and tokenizer, and
  `python -m launch.sample --checkpoint=OUT` samples from it.
diffusers: OUT/transformer (WanTransformer3DModel, dit runs) and OUT/vae (AutoencoderKLWan: a vae
  run, or a dit run's config.vae.workdir, with its latent statistics), config.json + safetensors,
  sharded with an index above --max_shard_gb; `from_pretrained(OUT/transformer)` loads them.
stablehlo: jax.export of the VAE decoder and, for dit runs, the denoiser (and a jointly trained
  text encoder) for fixed shapes (sizes default to those the run trained on); reload with
  vidgen.interop.stablehlo.load(OUT, "denoiser").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from absl import app, flags

from vidgen.interop import inference, stablehlo, wan_dit, wan_vae

FLAGS = flags.FLAGS
FORMATS = ("inference", "diffusers", "stablehlo")


def define_flags() -> None:
    """The command line flags (defined only when run as a program)."""
    flags.DEFINE_string("checkpoint", None, "Workdir of a training run (vae or dit).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
    flags.DEFINE_enum("format", None, FORMATS, "What to write.")
    flags.DEFINE_string("out", None, "Output folder.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "diffusers weights dtype.")
    flags.DEFINE_float("max_shard_gb", 5.0, "diffusers: largest safetensors file (GiB).")
    flags.DEFINE_integer("batch_size", 1, "stablehlo: batch size of the exported functions.")
    flags.DEFINE_integer("num_frames", None, "stablehlo: frames (1+4k); default as trained.")
    flags.DEFINE_integer("height", None, "stablehlo: height in pixels; default as trained.")
    flags.DEFINE_integer("width", None, "stablehlo: width in pixels; default as trained.")
    flags.DEFINE_integer("text_length", None, "stablehlo: text tokens; default as trained.")
    flags.DEFINE_list("platforms", [], "stablehlo: cpu, cuda, tpu (default: this backend).")
    flags.mark_flags_as_required(["checkpoint", "format", "out"])


def _save_vae(vae, meta: dict, out: str, **kw) -> str:
    """A vae run's VAE as a diffusers folder with its latent statistics (0 and 1 if none)."""
    stats = inference.latent_stats(meta)
    if stats is None:
        logging.warning("the vae run holds no latent statistics: writing mean 0, std 1")
    wan_vae.save_pretrained(vae, out, latent_mean=None if stats is None else stats[0],
                            latent_std=None if stats is None else stats[1], **kw)
    return out


def export_diffusers(workdir: str, out: str, step: int | None = None, *, dtype=None,
                     max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """OUT/transformer and/or OUT/vae diffusers folders of a run; returns the folders."""
    model, config, meta = inference.load_run(workdir, step)
    kw = dict(dtype=dtype, max_shard_bytes=max_shard_bytes)
    if config.task == "vae":
        return [_save_vae(model.vae, meta, os.path.join(out, "vae"), **kw)]
    folders = [os.path.join(out, "transformer")]
    wan_dit.save_pretrained(model.dit, folders[0], **kw)
    if model.text is not None:
        logging.warning("the jointly trained text encoder has no diffusers layout: not exported")
    if config.vae.get("workdir"):
        vae_model, _, vae_meta = inference.load_run(config.vae.workdir)
        folders.append(_save_vae(vae_model.vae, vae_meta, os.path.join(out, "vae"), **kw))
    return folders


def export_stablehlo(workdir: str, out: str, step: int | None = None, *, batch: int = 1,
                     num_frames: int | None = None, height: int | None = None,
                     width: int | None = None, text_length: int | None = None,
                     platforms: Sequence[str] | None = None) -> list[str]:
    """The VAE decoder and (dit runs) the denoiser and a joint text encoder of a run as
    StableHLO for one clip size; returns the names written."""
    model, config, _ = inference.load_run(workdir, step)
    vae = model.vae if config.task == "vae" else inference.load_run(config.vae.workdir)[0].vae
    d, vcfg = config.data, vae.config
    frames, h, w = num_frames or d.num_frames, height or d.height, width or d.width
    vae.check_video((batch, frames, h, w, vcfg.in_channels))
    latent = vcfg.latent_shape(frames, h, w)[:3]
    kw = dict(batch=batch, platforms=platforms or None)
    stablehlo.export_vae_decoder(vae, out, latent_shape=latent, **kw)
    if config.task == "vae":
        return ["vae_decoder"]
    length = text_length or config.text.max_length
    stablehlo.export_denoiser(model.dit, out, latent_shape=latent, text_length=length, **kw)
    if model.text is None:
        return ["vae_decoder", "denoiser"]
    stablehlo.export_text_encoder(model.text, out, text_length=length, **kw)
    return ["vae_decoder", "denoiser", "text_encoder"]


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)
    workdir, out, step = FLAGS.checkpoint, FLAGS.out, FLAGS.step
    if FLAGS.format == "inference":
        inference.export_inference(workdir, out, step)
    elif FLAGS.format == "diffusers":
        written = export_diffusers(workdir, out, step, dtype=FLAGS.dtype,
                                   max_shard_bytes=int(FLAGS.max_shard_gb * 2**30))
        logging.info("diffusers folders written: %s", written)
    else:
        written = export_stablehlo(workdir, out, step, batch=FLAGS.batch_size,
                                   num_frames=FLAGS.num_frames, height=FLAGS.height,
                                   width=FLAGS.width, text_length=FLAGS.text_length,
                                   platforms=FLAGS.platforms)
        logging.info("StableHLO exports written to %s: %s", out, written)


if __name__ == "__main__":
    define_flags()
    app.run(main)

"""The text-to-video task: a DiT trained with rectified flow on frozen-VAE latents.

Each batch arrives as video + caption tokens from the input pipeline; `prepare_batch` runs the
frozen VAE encoder (posterior mode, normalised by the VAE run's per-channel latent statistics)
outside the differentiated step, so the VAE is neither trained nor checkpointed here. A batch
that already holds `latents` (precomputed) skips the VAE, and so do packed rows of latent
tokens (data_pipelines/packing.py: `tokens`, `segment_ids`, `positions`, per-slot captions),
whose loss draws one flow time per clip and counts real tokens only. The text encoder trains
jointly (config.text.trainable) or, frozen, encodes in `prepare_batch` (unless the batch holds
precomputed caption features, `context`) from pretrained Hugging Face T5/UMT5 weights
(config.text.pretrained).

Config keys read here: `config.model` (DiTConfig fields), `config.text` (tokenizer, max_length,
trainable, pretrained, encoder: TextEncoderConfig fields), `config.vae.workdir` (a vae run),
`config.flow` (FlowConfig fields), `config.sample` (samplers.SamplerConfig fields), `config.data`
(num_frames, height, width, batch_size, caption_field, packing, latents_path), `config.eval`
(num_prompts, fps, seed), `config.init_from` (a diffusers WanTransformer3DModel folder to start
the DiT from, or "" for a fresh init).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from vidgen import generate
from vidgen.diffusion import flow, samplers
from vidgen.evaluation import visualize, world_grader
from vidgen.interop import hf_t5, wan_dit
from vidgen.io.video import write_video
from vidgen.models.dit import DiT, DiTConfig
from vidgen.models.text_encoder import TextEncoder, TextEncoderConfig, Tokenizer
from vidgen.train import checkpoint
from vidgen.train.tasks import Task, load_pretrained_into
from vidgen.train.tasks import vae as vae_task

ConfigDict = ml_collections.ConfigDict
EVAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)     # flow times of the deterministic validation loss


class DiTTrainModel(nnx.Module):
    """What the dit task trains: the DiT, plus the text encoder when it trains jointly."""

    def __init__(self, dit: DiT, text: TextEncoder | None):
        self.dit = dit
        self.text = text


def build_model(config: ConfigDict, rngs: nnx.Rngs) -> DiTTrainModel:
    """The DiT from config.model and, if config.text.trainable, a fresh text encoder."""
    text = None
    if config.text.trainable:
        text = TextEncoder(TextEncoderConfig.from_dict(config.text.encoder.to_dict()), rngs=rngs)
    return DiTTrainModel(DiT(DiTConfig.from_dict(config.model.to_dict()), rngs=rngs), text)


def init_from(config: ConfigDict, model: DiTTrainModel) -> None:
    """Overwrites the DiT with config.init_from, a diffusers WanTransformer3DModel folder (e.g.
    Wan 2.1 T2V 1.3B's transformer/); a jointly trained text encoder keeps its fresh init."""
    load_pretrained_into(model.dit, wan_dit.load_pretrained, config.init_from,
                         keep=("remat_policy", "scan_layers", "attention_impl", "dtype",
                               "param_dtype"))


@functools.lru_cache(maxsize=4)
def _frozen_vae(workdir: str) -> tuple[nnx.Module, np.ndarray, np.ndarray]:
    """The EMA VAE of a vae run and its latent statistics (per-channel mean, std)."""
    model, _, meta = checkpoint.load_trained_model(os.path.join(workdir, "checkpoints"),
                                                   vae_task.build_model)
    extras = (meta.get("result") or {}).get("extras") or {}
    if "latent_mean" not in extras:
        raise ValueError(f"config.vae.workdir={workdir!r}: its last checkpoint holds no latent "
                         "statistics; train the VAE to the end (total_steps) first")
    return model.vae, np.asarray(extras["latent_mean"]), np.asarray(extras["latent_std"])


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str, max_length: int) -> Tokenizer:
    return Tokenizer(path, max_length)


@functools.lru_cache(maxsize=4)
def _frozen_text_encoder(path: str) -> TextEncoder:
    return hf_t5.load_pretrained(path)


def caption_encoder(encoder_path: str, tokenizer_path: str,
                    max_length: int) -> Callable[[Sequence[str]], np.ndarray]:
    """captions -> float32 features [B, Lt, D] of a frozen pretrained text encoder (a frozen-text
    run's `context`; data_pipelines/precompute.py stores them beside the latents)."""
    graphdef, state = nnx.split(_frozen_text_encoder(encoder_path))
    tokenizer = _tokenizer(tokenizer_path, max_length)

    def encode(captions: Sequence[str]) -> np.ndarray:
        ids, mask = tokenizer(list(captions))
        features = generate._encode_text(graphdef, state, jnp.asarray(ids), jnp.asarray(mask))
        return np.asarray(features, np.float32)

    return encode


def example_fields(config: ConfigDict) -> Callable[[dict], dict[str, np.ndarray]]:
    """Per-clip fields the input pipeline adds: the caption's token ids and mask."""
    tokenizer = _tokenizer(config.text.tokenizer, config.text.max_length)
    field = config.data.caption_field

    def fields(meta: dict) -> dict[str, np.ndarray]:
        ids, mask = tokenizer([meta[field]])
        return {"text_ids": ids[0], "text_mask": mask[0]}

    return fields


@functools.partial(jax.jit, static_argnums=0)
def _encode_latents(graphdef, state, video: jax.Array, mean: jax.Array,
                    std: jax.Array) -> jax.Array:
    """uint8 video [B, T, H, W, 3] -> normalised posterior-mode latents [B, t, h, w, C]."""
    z = nnx.merge(graphdef, state).encode(video.astype(jnp.float32) / 127.5 - 1.0).mode()
    return (z.astype(jnp.float32) - mean) / std


def latent_encoder(vae_workdir: str) -> Callable[[jax.Array], jax.Array]:
    """uint8 video [B, T, H, W, 3] -> the normalised posterior-mode latents the DiT trains on,
    with the frozen EMA VAE of a vae run (replicated over the video's mesh, if any)."""
    vae, mean, std = _frozen_vae(vae_workdir)
    graphdef, state = nnx.split(vae)
    placed = {}

    def encode(video: jax.Array) -> jax.Array:
        sharding = getattr(video, "sharding", None)
        mesh = getattr(sharding, "mesh", None)
        if mesh not in placed:
            where = jax.devices()[0] if mesh is None else NamedSharding(mesh, PartitionSpec())
            placed[mesh] = jax.device_put((state, mean, std), where)
        state_on_mesh, mean_on_mesh, std_on_mesh = placed[mesh]
        return _encode_latents(graphdef, state_on_mesh, video, mean_on_mesh, std_on_mesh)

    return encode


def prepare_batch(config: ConfigDict) -> Callable[[dict], dict]:
    """video -> normalised latents with the frozen VAE; with a frozen text encoder also the
    caption features (`context`) and those of the empty prompt (`null_context`)."""
    latent_fn = functools.cache(lambda: latent_encoder(config.vae.workdir))   # on first use
    frozen_text = None
    if not config.text.trainable:
        encoder = _frozen_text_encoder(config.text.pretrained)
        graphdef, state = nnx.split(encoder)
        null_ids, null_mask = _tokenizer(config.text.tokenizer, config.text.max_length)([""])
        frozen_text = (graphdef, state, jnp.asarray(null_mask)[0])
        null_context = functools.cache(     # the empty prompt's features: once, on first use
            lambda: generate._encode_text(graphdef, state, jnp.asarray(null_ids),
                                          jnp.asarray(null_mask))[0])

    def prepare(batch: dict) -> dict:
        out = {k: v for k, v in batch.items() if k != "video"}
        if "video" in batch:             # not for precomputed latents or packed tokens
            out["latents"] = latent_fn()(batch["video"])
        if frozen_text is not None:
            graphdef, state, null_mask = frozen_text
            if "context" not in out:     # [B, Lt] ids, or [B, S, Lt] of packed rows
                ids, mask = batch["text_ids"], batch["text_mask"]
                flat = generate._encode_text(graphdef, state, ids.reshape(-1, ids.shape[-1]),
                                             mask.reshape(-1, ids.shape[-1]))
                out["context"] = flat.reshape(ids.shape + flat.shape[-1:])
            out["null_context"] = null_context()
            out["null_mask"] = null_mask
        return out

    return prepare


def _null_tokens(ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Token ids and mask of the empty prompt (EOS, then padding), shaped like `ids`."""
    position = jnp.arange(ids.shape[-1])
    return (jnp.where(position == 0, Tokenizer.EOS_ID, Tokenizer.PAD_ID).astype(ids.dtype)
            * jnp.ones_like(ids), jnp.broadcast_to(position == 0, ids.shape))


def _context(model: DiTTrainModel, batch: dict, keep: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Text features and mask, with the empty prompt where keep is False (CFG dropout)."""
    if model.text is None:
        k = keep[:, None]
        mask = jnp.where(k, batch["text_mask"], batch["null_mask"][None])
        return jnp.where(k[..., None], batch["context"], batch["null_context"][None]), mask
    null_ids, null_mask = _null_tokens(batch["text_ids"])
    ids = jnp.where(keep[:, None], batch["text_ids"], null_ids)
    mask = jnp.where(keep[:, None], batch["text_mask"], null_mask)
    return model.text(ids, mask), mask


def _num_tokens(latent_shape: tuple[int, ...], config: ConfigDict) -> int:
    pt, ph, pw = config.model.patch_size
    t, h, w = latent_shape[1:4]
    return (t // pt) * (h // ph) * (w // pw)


def _flow_loss(model: DiTTrainModel, batch: dict, t: jax.Array, noise: jax.Array,
               keep: jax.Array) -> jax.Array:
    x0 = batch["latents"].astype(jnp.float32)
    x_t = flow.interpolate(x0, noise, t)
    context, mask = _context(model, batch, keep)
    v = model.dit(x_t, t, context, mask).astype(jnp.float32)
    return flow.flow_loss(v, x0, noise)


def _packed_context(model: DiTTrainModel, batch: dict, keep: jax.Array
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The captions of packed rows as one context per row: features [B, S*Lt, D], mask and
    context segment ids [B, S*Lt] (slot j's caption, or the empty prompt where keep [B, S] is
    False, belongs to segment j + 1)."""
    b, s, lt = batch["text_ids"].shape
    flat = {k: v.reshape((b * s,) + v.shape[2:]) for k, v in batch.items()
            if k in ("text_ids", "text_mask", "context")}
    flat.update({k: batch[k] for k in ("null_context", "null_mask") if k in batch})
    context, mask = _context(model, flat, keep.reshape(-1))
    return (context.reshape(b, s * lt, -1), mask.reshape(b, s * lt),
            jnp.repeat(batch["text_segment_ids"], lt, axis=1))


def _packed_loss(model: DiTTrainModel, batch: dict[str, jax.Array], rng: jax.Array,
                 fcfg: flow.FlowConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Rectified-flow MSE on packed rows (data_pipelines/packing.py: tokens [B, L, F] with
    segment_ids, positions, per-slot captions): each segment draws its own flow time (shifted
    by its token count) and caption dropout; the loss averages over real tokens only."""
    x0, segments = batch["tokens"].astype(jnp.float32), batch["segment_ids"]
    b, s = batch["text_segment_ids"].shape
    sizes = jnp.sum(segments[:, None, :] == jnp.arange(1, s + 1)[None, :, None], axis=-1)
    rng_t, rng_n, rng_d = jax.random.split(rng, 3)
    t = flow.sample_timesteps(rng_t, b * s, sizes.reshape(-1), fcfg).reshape(b, s)   # [B, S]
    noise = jax.random.normal(rng_n, x0.shape, jnp.float32)
    keep = jax.random.uniform(rng_d, (b, s)) >= fcfg.text_dropout
    t_tokens = jnp.take_along_axis(t, jnp.clip(segments - 1, 0, s - 1), axis=1)      # [B, L]
    context, mask, context_segments = _packed_context(model, batch, keep)
    v = model.dit(flow.interpolate(x0, noise, t_tokens), t, context, mask,
                  segment_ids=segments, positions=batch["positions"],
                  context_segment_ids=context_segments).astype(jnp.float32)
    loss = flow.flow_loss(v, x0, noise, weights=segments > 0)
    used = batch["text_segment_ids"] > 0
    count = jnp.maximum(jnp.sum(used), 1)
    return loss, {"loss": loss, "t_mean": jnp.sum(t * used) / count,
                  "text_kept": jnp.sum(keep * used) / count, "real_tokens": jnp.mean(segments > 0)}


def loss_fn(model: DiTTrainModel, batch: dict[str, jax.Array], rng: jax.Array,
            step: jax.Array, config: ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Rectified-flow MSE on batch["latents"] [B, t, h, w, C] with caption tokens; timesteps
    logit-normal, shifted by the token count; captions dropped with prob. flow.text_dropout.
    Packed rows (a batch with segment_ids) go through `_packed_loss`."""
    fcfg = flow.FlowConfig.from_dict(config.flow.to_dict())
    if "segment_ids" in batch:
        return _packed_loss(model, batch, rng, fcfg)
    x0 = batch["latents"]
    rng_t, rng_n, rng_d = jax.random.split(rng, 3)
    t = flow.sample_timesteps(rng_t, x0.shape[0], _num_tokens(x0.shape, config), fcfg)
    noise = jax.random.normal(rng_n, x0.shape, jnp.float32)
    keep = jax.random.uniform(rng_d, (x0.shape[0],)) >= fcfg.text_dropout
    loss = _flow_loss(model, batch, t, noise, keep)
    return loss, {"loss": loss, "t_mean": jnp.mean(t), "text_kept": jnp.mean(keep)}


@functools.partial(jax.jit, static_argnums=0)
def _validation_loss(graphdef, state, batch: dict, key: jax.Array) -> jax.Array:
    """Flow loss at the fixed times EVAL_TIMES with fixed noise and every caption kept."""
    model = nnx.merge(graphdef, state)
    x0 = batch["latents"]
    keep = jnp.ones((x0.shape[0],), bool)
    losses = []
    for i, time in enumerate(EVAL_TIMES):
        noise = jax.random.normal(jax.random.fold_in(key, i), x0.shape, jnp.float32)
        t = jnp.full((x0.shape[0],), time, jnp.float32)
        losses.append(_flow_loss(model, batch, t, noise, keep))
    return jnp.mean(jnp.stack(losses))


def _eval_batches(eval_clips: dict, config: ConfigDict, size: int):
    """Yields (clip slice, batch prepared as for training: latents, caption tokens and, with a
    frozen text encoder, caption features) over the eval clips."""
    fields, prepare = example_fields(config), prepare_batch(config)
    videos, metas = np.asarray(eval_clips["video"]), eval_clips["meta"]
    for start in range(0, len(videos), size):
        chunk = slice(start, start + size)
        tokens = [fields(meta) for meta in metas[chunk]]
        yield chunk, prepare({"video": jnp.asarray(videos[chunk]),
                              **{k: jnp.stack([t[k] for t in tokens]) for k in tokens[0]}})


def _generator(model: DiTTrainModel, config: ConfigDict) -> generate.VideoGenerator:
    vae, mean, std = _frozen_vae(config.vae.workdir)
    text = model.text if model.text is not None else _frozen_text_encoder(config.text.pretrained)
    return generate.VideoGenerator(model.dit, text, _tokenizer(config.text.tokenizer,
                                                               config.text.max_length),
                                   vae, mean, std)


def sample_settings(config: ConfigDict) -> samplers.SamplerConfig:
    """The sampler settings of config.sample."""
    return samplers.SamplerConfig.from_dict(config.sample.to_dict())


def _write_samples(out_dir: str, real: np.ndarray, fake: np.ndarray, prompts: list[str],
                   fps: float) -> None:
    """One mp4 per prompt (real clip | generated) and a contact sheet of real-over-generated."""
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for i, (r, f) in enumerate(zip(real, fake)):
        write_video(os.path.join(out_dir, f"{i:02d}.mp4"), visualize.side_by_side(r, f), fps)
        rows += [r, f]
    visualize.save_png(os.path.join(out_dir, "contact_sheet.png"), visualize.frame_strip(rows))
    with open(os.path.join(out_dir, "prompts.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(prompts) + "\n")


def evaluate(model: DiTTrainModel, eval_clips: dict, workdir: str, step: int,
             config: ConfigDict) -> dict[str, float]:
    """Validation flow loss on the held-out clips at fixed times and noise; then samples for
    the first eval.num_prompts held-out captions, graded against their scenes by the world
    grader (prompt adherence); process 0 writes mp4s and a contact sheet to
    {workdir}/eval/step_{step:07d}/."""
    ev = config.eval
    graphdef, state = nnx.split(model)
    key = jax.random.key(ev.seed)
    losses = [float(_validation_loss(graphdef, state, batch, key)) * (c.stop - c.start)
              for c, batch in _eval_batches(eval_clips, config, ev.batch_size)]
    n = len(eval_clips["meta"])
    results = {"val_loss": float(sum(losses) / n)}
    num = min(ev.num_prompts, n)
    if num == 0:
        return results
    metas = eval_clips["meta"][:num]
    prompts = [meta[config.data.caption_field] for meta in metas]
    d = config.data
    videos = _generator(model, config).generate(
        prompts, num_frames=d.num_frames, height=d.height, width=d.width,
        settings=sample_settings(config), seed=ev.seed)
    grades = [world_grader.grade_clip(v, meta["scene"]) for v, meta in zip(videos, metas)]
    summary = world_grader.summarize(grades)
    results.update(grader_overall=summary["overall"], grader_all_correct=summary["all_correct"],
                   **{f"grader_{k}": v for k, v in summary["accuracy"].items()})
    if jax.process_index() == 0:
        _write_samples(os.path.join(workdir, "eval", f"step_{step:07d}"),
                       np.asarray(eval_clips["video"][:num]), videos, prompts, ev.fps)
    return results


def load_generator(workdir: str, step: int | None = None
                   ) -> tuple[generate.VideoGenerator, ConfigDict]:
    """The sampling pipeline of a dit run (EMA weights of its checkpoint, its VAE and
    tokenizer) and the run's config.data."""
    model, config, _ = checkpoint.load_trained_model(os.path.join(workdir, "checkpoints"),
                                                     build_model, step)
    return _generator(model, config), config.data


def _require(ok: bool, key: str, value, why: str) -> None:
    if not ok:
        raise ValueError(f"config.{key}={value!r}: {why}")


def validate_config(config: ConfigDict) -> None:
    """Rejects configs the dit task cannot train, naming the key and its value."""
    model = DiTConfig.from_dict(config.model.to_dict())
    flow.FlowConfig.from_dict(config.flow.to_dict())
    sample_settings(config)
    text = config.text
    if text.trainable:
        encoder = TextEncoderConfig.from_dict(text.encoder.to_dict())
        _require(encoder.d_model == model.text_dim, "model.text_dim", model.text_dim,
                 f"must equal text.encoder.d_model={encoder.d_model}")
    else:
        _require(bool(text.pretrained), "text.pretrained", text.pretrained,
                 "a frozen text encoder needs pretrained weights (or set text.trainable=True)")
    _require(os.path.exists(text.tokenizer), "text.tokenizer", text.tokenizer,
             "no such sentencepiece model (train one: python -m data_pipelines.train_tokenizer)")
    if text.trainable:
        vocab = _tokenizer(text.tokenizer, text.max_length).vocab_size
        _require(vocab <= encoder.vocab_size, "text.encoder.vocab_size", encoder.vocab_size,
                 f"smaller than the tokenizer's {vocab} pieces ({text.tokenizer})")
    _require(text.max_length >= 2, "text.max_length", text.max_length, "must be >= 2")
    _require(os.path.isdir(os.path.join(config.vae.workdir, "checkpoints")), "vae.workdir",
             config.vae.workdir, "holds no checkpoints/ of a vae run")
    d = config.data
    _require((d.num_frames - 1) % 4 == 0, "data.num_frames", d.num_frames, "must be 1+4k")
    for key in ("height", "width"):
        _require(d[key] % 8 == 0, f"data.{key}", d[key], "must be a multiple of 8")
    _require(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
    if d.get("packing"):
        _require(bool(d.get("latents_path")), "data.latents_path", d.get("latents_path"),
                 "packing packs precomputed latents (python -m data_pipelines.precompute)")


TASK = Task(name="dit", build_model=build_model, loss_fn=loss_fn, evaluate=evaluate,
            finalize=None, validate_config=validate_config, prepare_batch=prepare_batch,
            example_fields=example_fields, init_from=init_from)

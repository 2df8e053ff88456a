"""Inference checkpoints: a training run's EMA parameters cast to bfloat16, without optimizer
state, beside the run's config; what serving and sampling load (launch/export.py writes them).

    {out}/inference.json   {"format", "task", "step", "param_dtype", "config", "extras"}
    {out}/params/          orbax checkpoint of {"params": EMA params, "rest": other variables}
A dit run's export also holds what sampling needs beside its DiT (and joint text encoder):
    {out}/vae/             the inference export of its VAE run (with the latent statistics)
    {out}/tokenizer.model  its sentencepiece model
Load with `load_inference` (model, config, meta) or `load_generator` (VideoGenerator).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from ml_collections import ConfigDict

from vidgen import generate
from vidgen.models.text_encoder import Tokenizer
from vidgen.train import checkpoint
from vidgen.train.tasks import get_task

log = logging.getLogger(__name__)
FORMAT = "vidgen-inference-v1"


def build_task_model(config: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """The trainable module of the task config.task names (vidgen/train/tasks)."""
    return get_task(config.task).build_model(config, rngs)


def load_run(workdir: str, step: int | None = None) -> tuple[nnx.Module, ConfigDict, dict]:
    """(EMA model, config, meta) of a training run's checkpoint (default: the newest)."""
    return checkpoint.load_trained_model(os.path.join(workdir, "checkpoints"), build_task_model,
                                         step)


def latent_stats(meta: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) of a vae run's latents from its checkpoint meta or inference meta, if any."""
    extras = meta.get("extras") or (meta.get("result") or {}).get("extras") or {}
    if "latent_mean" not in extras:
        return None
    return np.asarray(extras["latent_mean"]), np.asarray(extras["latent_std"])


def _target(a: Any, float_dtype: Any, sharding: jax.sharding.Sharding | None) -> Any:
    """An array's dtype-cast copy or, for a ShapeDtypeStruct, its placed restore target: floats
    become float_dtype, other dtypes (ints, PRNG keys) stay."""
    dtype = float_dtype if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype
    if isinstance(a, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(a.shape, dtype, sharding=sharding)
    return a.astype(dtype)


def save_inference(model: nnx.Module, config: ConfigDict, meta: dict, out: str, *,
                   param_dtype: str = "bfloat16") -> None:
    """Writes model's parameters in param_dtype and its other variables as they are, with the
    config and the run's task extras (e.g. latent statistics), into `out`."""
    os.makedirs(out, exist_ok=True)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    with contextlib.closing(ocp.StandardCheckpointer()) as ckptr:
        ckptr.save(os.path.join(os.path.abspath(out), "params"),
                   {"params": jax.tree.map(lambda a: _target(a, param_dtype, None), params),
                    "rest": rest})
    stats = latent_stats(meta)
    extras = {} if stats is None else {"latent_mean": stats[0].tolist(),
                                       "latent_std": stats[1].tolist()}
    info = {"format": FORMAT, "task": config.task, "step": meta.get("step"),
            "param_dtype": param_dtype, "config": json.loads(config.to_json_best_effort()),
            "extras": extras}
    with open(os.path.join(out, "inference.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)


def export_inference(workdir: str, out: str, step: int | None = None) -> None:
    """The inference export of a training run; a dit run's also holds its VAE run's export and
    its tokenizer, so the folder alone (plus a frozen pretrained text encoder, if the run used
    one) is enough to sample."""
    model, config, meta = load_run(workdir, step)
    save_inference(model, config, meta, out)
    if config.task == "dit":
        export_inference(config.vae.workdir, os.path.join(out, "vae"))
        shutil.copyfile(config.text.tokenizer, os.path.join(out, "tokenizer.model"))
    log.info("inference export of %s (step %s) written to %s", workdir, meta["step"], out)


def load_inference(directory: str) -> tuple[nnx.Module, ConfigDict, dict]:
    """(model, config, meta) of an inference export; the parameters keep their stored dtype
    (bfloat16), the computation runs in the dtype of config.model (float32 by default)."""
    with open(os.path.join(directory, "inference.json"), encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory}/inference.json: format {meta.get('format')!r}, "
                         f"expected {FORMAT!r}")
    config = ConfigDict(meta["config"])
    with nnx.use_eager_sharding(False):
        abstract = nnx.eval_shape(lambda: build_task_model(config, nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    stored = jnp.dtype(meta["param_dtype"])
    target = {"params": jax.tree.map(lambda a: _target(a, stored, one), params),
              "rest": jax.tree.map(lambda a: _target(a, a.dtype, one), rest)}
    with contextlib.closing(ocp.StandardCheckpointer()) as ckptr:
        state = ckptr.restore(os.path.join(os.path.abspath(directory), "params"), target)
    return nnx.merge(graphdef, state["params"], state["rest"]), config, meta


def load_generator(directory: str) -> tuple[generate.VideoGenerator, ConfigDict]:
    """The sampling pipeline of a dit run's inference export and the run's config.data."""
    model, config, meta = load_inference(directory)
    if meta["task"] != "dit":
        raise ValueError(f"{directory}: an export of a {meta['task']!r} run, not a dit run")
    vae_model, _, vae_meta = load_inference(os.path.join(directory, "vae"))
    stats = latent_stats(vae_meta)
    if stats is None:
        raise ValueError(f"{directory}/vae: its VAE run holds no latent statistics")
    text = model.text
    if text is None:                              # a frozen pretrained text encoder
        from vidgen.interop import hf_t5
        text = hf_t5.load_pretrained(config.text.pretrained)
    tokenizer = Tokenizer(os.path.join(directory, "tokenizer.model"),
                                   config.text.max_length)
    return generate.VideoGenerator(model.dit, text, tokenizer, vae_model.vae, *stats), config.data

"""Hugging Face T5 / UMT5 encoder weights (T5EncoderModel, UMT5EncoderModel safetensors) into our
TextEncoder.

Our names mirror transformers' modules, so one parameter maps to one state-dict key:
  embedding                     <- shared.weight (alias encoder.embed_tokens.weight)  [V, D]
  layers.{i}.attn_norm.scale    <- encoder.block.{i}.layer.0.layer_norm.weight
  layers.{i}.{q,k,v}            <- encoder.block.{i}.layer.0.SelfAttention.{q,k,v}.weight
                                   torch Linear [H*K, D] -> ours [D, H, K]
  layers.{i}.o                  <- ...SelfAttention.o.weight   [D, H*K] -> ours [H, K, D]
  layers.{i}.relative_bias      <- ...SelfAttention.relative_attention_bias.weight  [buckets, H]
                                   (T5: layer 0 only; UMT5: every layer)
  layers.{i}.ffn_norm.scale     <- encoder.block.{i}.layer.1.layer_norm.weight
  layers.{i}.{wi_0,wi_1,wo}     <- encoder.block.{i}.layer.1.DenseReluDense.{...}.weight  (.T)
  final_norm.scale              <- encoder.final_layer_norm.weight
Every key is checked: a missing, unexpected, non-float or wrongly shaped entry raises a ValueError
naming it. load_pretrained reads a folder one tensor at a time (safetensors_io.py; never pickle).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.interop import safetensors_io
from vidgen.interop.tensors import to_numpy
from vidgen.models.text_encoder import TextEncoder, TextEncoderConfig

EMBED_KEY, EMBED_ALIAS = "shared.weight", "encoder.embed_tokens.weight"
TRANSFORMERS_WEIGHTS = "model"                  # model.safetensors[.index.json]
_NOT_ENCODER = ("decoder.", "lm_head.")         # the rest of a full encoder-decoder checkpoint
_LAYER_KEYS = {
    "attn_norm": "layer.0.layer_norm.weight",
    "q": "layer.0.SelfAttention.q.weight", "k": "layer.0.SelfAttention.k.weight",
    "v": "layer.0.SelfAttention.v.weight", "o": "layer.0.SelfAttention.o.weight",
    "relative_bias": "layer.0.SelfAttention.relative_attention_bias.weight",
    "ffn_norm": "layer.1.layer_norm.weight",
    "wi_0": "layer.1.DenseReluDense.wi_0.weight", "wi_1": "layer.1.DenseReluDense.wi_1.weight",
    "wo": "layer.1.DenseReluDense.wo.weight",
}
_GATED_GELU = ("gated-gelu", "gated-gelu_new", "gated-gelu_pytorch_tanh")   # all tanh-approx GELU
_CONFIG_KEYS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                "relative_attention_num_buckets", "relative_attention_max_distance",
                "layer_norm_epsilon")


def hf_key(path: tuple[Any, ...]) -> str:
    """The transformers state-dict key of one of our parameter paths."""
    if path[0] == "embedding":
        return EMBED_KEY
    if path[0] == "final_norm":
        return "encoder.final_layer_norm.weight"
    return f"encoder.block.{path[1]}.{_LAYER_KEYS[path[2]]}"


def _torch_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """transformers' shape of our parameter `name` of shape `shape`."""
    if name in ("q", "k", "v"):                  # [D, H, K] <- Linear [H*K, D]
        return (shape[1] * shape[2], shape[0])
    if name == "o":                              # [H, K, D] <- Linear [D, H*K]
        return (shape[2], shape[0] * shape[1])
    return shape[::-1] if name in ("wi_0", "wi_1", "wo") else shape


def _convert(array: np.ndarray, target: tuple[int, ...], name: str, key: str) -> np.ndarray:
    """Moves a torch-layout array into our layout for a parameter called name of shape target."""
    expected = _torch_shape(name, tuple(target))
    if array.shape != expected:
        raise ValueError(f"{key}: shape {array.shape} does not match the model config, which "
                         f"expects {expected}")
    if name in ("q", "k", "v", "o"):
        return array.T.reshape(target)
    return array.T if name in ("wi_0", "wi_1", "wo") else array


def load_state_dict(model: TextEncoder, tensors: Mapping[str, Any]) -> None:
    """Copies a T5/UMT5 encoder state dict (numpy arrays or torch tensors) into model's
    parameters in place, cast to their dtype; the model may be abstract (nnx.eval_shape). The
    embedding comes from shared.weight, else its tied copy encoder.embed_tokens.weight (a copy
    beside shared.weight is not read); decoder.* and lm_head.* entries (T5ForConditionalGeneration
    checkpoints) are ignored. Raises a ValueError naming any missing, unexpected, non-float or
    wrongly shaped key."""
    params = nnx.state(model, nnx.Param)
    wanted = {hf_key(path): (path, var) for path, var in nnx.to_flat_state(params)}
    present = {key for key in tensors if not key.startswith(_NOT_ENCODER)}
    source = {key: key for key in wanted}
    if EMBED_KEY not in present and EMBED_ALIAS in present:
        source[EMBED_KEY] = EMBED_ALIAS
    missing = sorted(k for k, s in source.items() if s not in present)
    unexpected = sorted(present - set(wanted) - {EMBED_ALIAS})
    for kind, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            raise ValueError(f"T5 state dict does not match the model config: {kind} key(s) "
                             f"{keys[:8]}{' ...' if len(keys) > 8 else ''}")
    for key, (path, var) in wanted.items():
        array = _convert(to_numpy(tensors[source[key]], source[key]), var.shape, path[-1],
                         source[key])
        var.set_value(jnp.asarray(array, dtype=var.dtype))
    nnx.update(model, params)


def config_from_hf(config: Mapping[str, Any], **overrides: Any) -> TextEncoderConfig:
    """A TextEncoderConfig from a transformers T5/UMT5 config.json dict (gated-GELU, i.e. T5 v1.1,
    mT5, UMT5, Flan-T5); overrides set our own fields (dtype, param_dtype)."""
    model_type = config.get("model_type")
    if model_type not in ("t5", "umt5"):
        raise ValueError(f"config.json model_type={model_type!r}: expected 't5' or 'umt5'")
    projection = config.get("feed_forward_proj", "relu" if model_type == "t5" else "gated-gelu")
    if projection not in _GATED_GELU:
        raise ValueError(f"config.json feed_forward_proj={projection!r}: only {_GATED_GELU} "
                         "(T5 v1.1-style encoders) are supported")
    fields = {k: config[k] for k in _CONFIG_KEYS if k in config}
    fields["per_layer_position_bias"] = model_type == "umt5"
    return TextEncoderConfig.from_dict({**fields, **overrides})


def load_pretrained(path: str | os.PathLike, **overrides: Any) -> TextEncoder:
    """Our TextEncoder from a transformers T5/UMT5 folder (config.json + model.safetensors, or
    shards listed by model.safetensors.index.json, or any *.safetensors files), read one tensor
    at a time; decoder weights of a full encoder-decoder checkpoint are skipped. overrides set
    our own config fields (dtype, param_dtype)."""
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = config_from_hf(json.load(f), **overrides)
    with nnx.use_eager_sharding(False):                 # abstract: no random init, no mesh needed
        model = nnx.eval_shape(lambda: TextEncoder(config, rngs=nnx.Rngs(0)))
    with safetensors_io.open_weights(path, TRANSFORMERS_WEIGHTS) as tensors:
        load_state_dict(model, tensors)
    return model

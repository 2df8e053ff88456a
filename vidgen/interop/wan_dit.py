"""Wan 2.1 DiT weights between diffusers' WanTransformer3DModel layout and our DiT.

Our module names mirror diffusers' except for a few renames (_TOP, _RENAME), so a parameter path
maps to a state-dict key by name; our blocks are stacked, so one of our arrays [num_layers, ...]
is the `blocks.{i}.*` entries of every layer. Layouts:
  Linear weight [O, I] -> our kernel [I, *O] (q/k/v [D, H, K]; to_out [H, K, D] from [D, H*K]),
  patch_embedding Conv3d weight [D, C, pt, ph, pw] -> our kernel [pt*ph*pw*C, D],
  biases and norm weights: flat -> our [H, K] or [D]; scale_shift_table [1, n, D] -> [n, D].
Every key is checked: a missing, unexpected, non-float or wrongly shaped entry raises ValueError
naming it. Weights are plain arrays (numpy, or torch tensors); nothing is unpickled.
save_pretrained / load_pretrained write and read whole diffusers folders (safetensors_io.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.interop import safetensors_io
from vidgen.interop.tensors import to_numpy
from vidgen.models.dit import DiT, DiTConfig

_TOP = {"time_embedder_1": "condition_embedder.time_embedder.linear_1",
        "time_embedder_2": "condition_embedder.time_embedder.linear_2",
        "time_proj": "condition_embedder.time_proj",
        "text_embedder_1": "condition_embedder.text_embedder.linear_1",
        "text_embedder_2": "condition_embedder.text_embedder.linear_2"}
_RENAME = {"kernel": "weight", "scale": "weight", "to_out": "to_out.0", "fc1": "net.0.proj",
           "fc2": "net.2"}
_CONFIG_KEYS = {"patch_size": "patch_size", "num_attention_heads": "num_heads",
                "in_channels": "in_channels", "out_channels": "out_channels",
                "text_dim": "text_dim", "freq_dim": "freq_dim", "ffn_dim": "mlp_dim",
                "num_layers": "num_layers", "cross_attn_norm": "cross_attn_norm", "eps": "eps",
                "rope_max_seq_len": "rope_max_seq_len"}
_UNSUPPORTED = ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")   # Wan I2V / FLF2V parts
_FIXED_IN_DIFFUSERS = {"qk_norm": True, "rope_theta": 10000.0, "timestep_scale": 1000.0}
CLASS_NAME = "WanTransformer3DModel"


def _entries(model: DiT) -> Iterator[tuple[tuple[Any, ...], nnx.Variable, list[str]]]:
    """(our path, variable, diffusers keys): one key, or one per layer for stacked blocks."""
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        head, rest = str(path[0]), [_RENAME.get(str(p), str(p)) for p in path[1:]]
        if head == "blocks":
            keys = [".".join([head, str(i)] + rest) for i in range(model.config.num_layers)]
        else:
            keys = [".".join([_TOP.get(head, head)] + rest)]
        yield path, var, keys


def _torch_shape(path: tuple[Any, ...], shape: tuple[int, ...], cfg: DiTConfig
                 ) -> tuple[int, ...]:
    """diffusers' shape of (one layer of) our parameter at path with our shape."""
    if path[0] == "patch_embedding" and path[-1] == "kernel":
        return (cfg.hidden_dim, cfg.in_channels) + cfg.patch_size
    if path[-1] == "kernel":
        fan_in = 2 if path[-2] == "to_out" else 1
        return (math.prod(shape[fan_in:]), math.prod(shape[:fan_in]))
    if path[-1] == "scale_shift_table":
        return (1,) + shape
    return (math.prod(shape),)


def _from_torch(array: np.ndarray, path: tuple[Any, ...], target: tuple[int, ...],
                cfg: DiTConfig, key: str) -> np.ndarray:
    """One diffusers array -> our layout of shape target (one layer's shape for blocks)."""
    expected = _torch_shape(path, target, cfg)
    if array.shape != expected:
        raise ValueError(f"{key}: shape {array.shape}, expected {expected} for our parameter "
                         f"{'.'.join(map(str, path))} of shape {target}")
    if array.ndim == 5:                                    # Conv3d [D, C, pt, ph, pw]
        array = np.transpose(array, (2, 3, 4, 1, 0))
    elif path[-1] == "kernel":
        array = array.T
    return array.reshape(target)


def load_state_dict(model: DiT, state_dict: Mapping[str, Any]) -> None:
    """Copies a diffusers WanTransformer3DModel state dict (numpy arrays or torch tensors) into
    model's parameters in place, cast to their dtype. Raises ValueError naming any missing,
    unexpected, non-float or wrongly shaped key."""
    entries = list(_entries(model))
    wanted = {key for _, _, keys in entries for key in keys}
    missing, unexpected = sorted(wanted - set(state_dict)), sorted(set(state_dict) - wanted)
    if missing or unexpected:
        raise ValueError(f"state dict does not match the model config: missing keys "
                         f"{missing[:8]}{' ...' if len(missing) > 8 else ''}, unexpected keys "
                         f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    cfg = model.config
    for path, var, keys in entries:
        stacked = path[0] == "blocks"
        target = tuple(var.shape[1:] if stacked else var.shape)
        arrays = [_from_torch(to_numpy(state_dict[k], k), path, target, cfg, k) for k in keys]
        value = np.stack(arrays) if stacked else arrays[0]
        var.set_value(jnp.asarray(value, dtype=var.dtype))


def _to_torch(array: np.ndarray, path: tuple[Any, ...], cfg: DiTConfig) -> np.ndarray:
    """One layer of our parameter -> diffusers' layout: a fresh, writable, C-contiguous float32
    array (safetensors writes a transposed view's raw buffer, silently scrambling it)."""
    shape = _torch_shape(path, array.shape, cfg)
    if len(shape) == 5:
        array = array.reshape(cfg.patch_size + (cfg.in_channels, cfg.hidden_dim))
        array = np.transpose(array, (4, 3, 0, 1, 2))
    elif path[-1] == "kernel":
        array = array.reshape(shape[1], shape[0]).T
    return np.array(array.reshape(shape), dtype=np.float32, order="C")


def iter_state_dict(model: DiT) -> Iterator[tuple[str, np.ndarray]]:
    """Our parameters as (diffusers WanTransformer3DModel key, float32 numpy array) pairs, made
    one parameter at a time (a stacked block parameter yields one pair per layer)."""
    for path, var, keys in _entries(model):
        value = np.asarray(var.get_value(), np.float32)
        layers = list(value) if path[0] == "blocks" else [value]
        for key, array in zip(keys, layers):
            yield key, _to_torch(array, path, model.config)


def export_state_dict(model: DiT) -> dict[str, np.ndarray]:
    """Our parameters as a diffusers WanTransformer3DModel state dict of float32 numpy arrays."""
    return dict(iter_state_dict(model))


def config_from_diffusers(config: Mapping[str, Any], **overrides: Any) -> DiTConfig:
    """A DiTConfig from a WanTransformer3DModel config.json dict (Wan 2.1 text-to-video only);
    overrides set our own fields (dtype, remat_policy, ...). diffusers applies the q/k RMSNorm
    whatever its qk_norm says, so ours is always on."""
    extra = {k: config[k] for k in _UNSUPPORTED if config.get(k) is not None}
    if extra:
        raise ValueError(f"diffusers WanTransformer3DModel config {extra}: only text-to-video "
                         "Wan 2.1 models (no image embedder / added k,v) are supported")
    fields = {ours: config[theirs] for theirs, ours in _CONFIG_KEYS.items()
              if config.get(theirs) is not None}
    if "num_attention_heads" in config and "attention_head_dim" in config:
        fields["hidden_dim"] = config["num_attention_heads"] * config["attention_head_dim"]
    fields.setdefault("out_channels", fields.get("in_channels", 16))
    return DiTConfig.from_dict({**fields, "qk_norm": True, **overrides})


def config_to_diffusers(cfg: DiTConfig) -> dict[str, Any]:
    """The WanTransformer3DModel config.json dict of our DiT config; raises naming a field whose
    value diffusers' model cannot express."""
    for name, value in _FIXED_IN_DIFFUSERS.items():
        if getattr(cfg, name) != value:
            raise ValueError(f"DiTConfig.{name}={getattr(cfg, name)!r}: diffusers' "
                             f"WanTransformer3DModel only has {value!r}")
    config = {theirs: getattr(cfg, ours) for theirs, ours in _CONFIG_KEYS.items()}
    config.update(patch_size=list(cfg.patch_size), attention_head_dim=cfg.head_dim,
                  qk_norm="rms_norm_across_heads", **dict.fromkeys(_UNSUPPORTED))
    return {"_class_name": CLASS_NAME, "_diffusers_version": safetensors_io.DIFFUSERS_VERSION,
            **config}


def save_pretrained(model: DiT, path: str | os.PathLike, *, max_shard_bytes: int = 5 * 2**30,
                    dtype: Any = None) -> list[str]:
    """Writes model as a diffusers WanTransformer3DModel folder (config.json + safetensors in
    float32 or dtype, sharded with an index above max_shard_bytes) for its from_pretrained."""
    safetensors_io.write_config(path, config_to_diffusers(model.config))
    return safetensors_io.write_weights(path, iter_state_dict(model),
                                        max_shard_bytes=max_shard_bytes, dtype=dtype)


def load_pretrained(path: str | os.PathLike, **overrides: Any) -> DiT:
    """Our DiT from a diffusers WanTransformer3DModel folder (config.json + safetensors, sharded
    with an index or not), read one tensor at a time into an unallocated model."""
    config = config_from_diffusers(safetensors_io.read_config(path, CLASS_NAME), **overrides)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: DiT(config, rngs=nnx.Rngs(0)))   # no random init
    with safetensors_io.open_weights(path) as tensors:
        load_state_dict(model, tensors)
    return model

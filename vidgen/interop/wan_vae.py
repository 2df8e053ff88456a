"""Wan 2.1 VAE weights from diffusers' AutoencoderKLWan layout into our CausalVAE.

Our module tree mirrors diffusers' names, so a parameter path maps to a state-dict key by
  kernel -> weight, scale -> gamma, the per-frame conv 'resample' -> 'resample.1'
(diffusers wraps it in nn.Sequential after a padding layer), and a layout change:
  torch conv weight [O, I, *k] -> our kernel [*k, I, O] (1x1 Conv2d -> Linear kernel [I, O]),
  torch norm gamma [C, 1, ...] -> our scale [C].
Every key is checked: a missing, unexpected, non-float or wrongly shaped entry raises naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.interop.tensors import to_numpy
from vidgen.models.layers import AttentionBlock
from vidgen.models.vae import CausalVAE, VAEConfig

_RENAME = {"kernel": "weight", "scale": "gamma", "resample": "resample.1"}
_CONFIG_KEYS = {"base_dim": "base_channels", "dim_mult": "channel_mults",
                "num_res_blocks": "num_res_blocks", "z_dim": "z_channels",
                "temperal_downsample": "temporal_downsample", "attn_scales": "attn_scales",
                "dropout": "dropout", "in_channels": "in_channels"}


def diffusers_key(path: tuple[Any, ...]) -> str:
    """The AutoencoderKLWan state-dict key of one of our parameter paths."""
    return ".".join(_RENAME.get(p, str(p)) if isinstance(p, str) else str(p) for p in path)


def _convert(array: np.ndarray, target: tuple[int, ...], name: str, key: str) -> np.ndarray:
    """Moves a torch-layout array into our layout for a parameter called name of shape target."""
    if name == "kernel" and array.ndim >= 2:
        array = np.transpose(array, tuple(range(2, array.ndim)) + (1, 0))
        lead = array.ndim - len(target)
        if lead > 0 and all(d == 1 for d in array.shape[:lead]):
            array = array.reshape(array.shape[lead:])
    elif name == "scale" and array.ndim > 1 and all(d == 1 for d in array.shape[1:]):
        array = array.reshape(array.shape[:1])
    if array.shape != tuple(target):
        raise ValueError(f"{key}: shape {array.shape} after conversion to our layout does not "
                         f"match our parameter's {tuple(target)}")
    return array


def load_state_dict(vae: CausalVAE, state_dict: Mapping[str, Any]) -> None:
    """Copies a diffusers AutoencoderKLWan state dict (numpy arrays or torch tensors) into vae's
    parameters in place, cast to their dtype. Raises naming any missing, unexpected or bad key."""
    params = nnx.state(vae, nnx.Param)
    flat = list(nnx.to_flat_state(params))
    keys = {diffusers_key(path): (path, var) for path, var in flat}
    missing = sorted(set(keys) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(keys))
    if missing or unexpected:
        raise KeyError(f"state dict does not match the model config: missing keys {missing[:8]}"
                       f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                       f"{' ...' if len(unexpected) > 8 else ''}")
    for key, (path, var) in keys.items():
        array = _convert(to_numpy(state_dict[key], key), var.shape, path[-1], key)
        var.set_value(jnp.asarray(array, dtype=var.dtype))
    nnx.update(vae, params)


def config_from_diffusers(config: Mapping[str, Any], **overrides: Any) -> VAEConfig:
    """A VAEConfig from an AutoencoderKLWan config.json dict (Wan 2.1 only: no patch_size,
    is_residual or separate decoder_base_dim); overrides set our own fields (dtype, ...)."""
    wan22 = {k: config.get(k) for k in ("patch_size", "is_residual", "decoder_base_dim")
             if config.get(k) not in (None, False, config.get("base_dim"))}
    if wan22:
        raise ValueError(f"diffusers VAE config {wan22}: only the Wan 2.1 VAE is supported")
    if config.get("out_channels", 3) != config.get("in_channels", 3):
        raise ValueError(f"diffusers VAE config out_channels={config.get('out_channels')} "
                         f"differs from in_channels={config.get('in_channels')}")
    fields = {ours: config[theirs] for theirs, ours in _CONFIG_KEYS.items() if theirs in config}
    return VAEConfig.from_dict({**fields, **overrides})


def load_pretrained(path: str | os.PathLike, **overrides: Any) -> CausalVAE:
    """Our CausalVAE from a diffusers AutoencoderKLWan folder (config.json + safetensors)."""
    from safetensors.numpy import load_file        # optional dependency, only needed here
    with open(os.path.join(path, "config.json")) as f:
        config = config_from_diffusers(json.load(f), **overrides)
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no .safetensors weights")
    state_dict: dict[str, np.ndarray] = {}
    for name in files:
        state_dict.update(load_file(os.path.join(path, name)))
    vae = nnx.eval_shape(lambda: CausalVAE(config, rngs=nnx.Rngs(0)))   # no random init
    load_state_dict(vae, state_dict)
    return vae


def _torch_shape(owner: type, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """diffusers' shape for our parameter `name` of a layer that sits in a module of type owner."""
    if name == "kernel":                      # [*k, I, O] -> [O, I, *k]; Linear is a 1x1 Conv2d
        return shape[-1:] + shape[-2:-1] + (shape[:-2] or (1, 1))
    if name == "scale":                       # images=True (attention) norms are [C, 1, 1]
        return shape + ((1, 1) if owner is AttentionBlock else (1, 1, 1))
    return shape


def export_state_dict(vae: CausalVAE) -> dict[str, np.ndarray]:
    """Our parameters as a diffusers AutoencoderKLWan state dict of float32 numpy arrays (C-order:
    safetensors.numpy.save_file writes a transposed view's raw buffer, silently scrambling it)."""
    kinds = {path: type(node) for path, node in nnx.iter_graph(vae)}
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(vae, nnx.Param)):
        array = np.asarray(var.get_value(), np.float32)
        shape = _torch_shape(kinds[path[:-2]], path[-1], array.shape)
        if path[-1] == "kernel":
            n = array.ndim
            array = np.transpose(array, (n - 1, n - 2) + tuple(range(n - 2)))
        out[diffusers_key(path)] = np.ascontiguousarray(array.reshape(shape))
    return out

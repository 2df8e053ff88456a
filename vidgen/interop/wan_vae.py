"""Wan 2.1 VAE weights from diffusers' AutoencoderKLWan layout into our CausalVAE.

Our module tree mirrors diffusers' names, so a parameter path maps to a state-dict key by
  kernel -> weight, scale -> gamma, the per-frame conv 'resample' -> 'resample.1'
(diffusers wraps it in nn.Sequential after a padding layer), and a layout change:
  torch conv weight [O, I, *k] -> our kernel [*k, I, O] (1x1 Conv2d -> Linear kernel [I, O]),
  torch norm gamma [C, 1, ...] -> our scale [C].
With a pixel patch (patch_size p > 1, Wan 2.2's patchify without its residual blocks) diffusers
orders a patch's channels (c, dx, dy) where ours are (c, dy, dx): the encoder's input and the
decoder's output channels are permuted on the way (_patch_order).
Every key is checked: a missing, unexpected, non-float or wrongly shaped entry raises naming it.
save_pretrained / load_pretrained write and read whole diffusers folders (safetensors_io.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.interop import safetensors_io
from vidgen.interop.tensors import to_numpy
from vidgen.models.layers import AttentionBlock
from vidgen.models.vae import CausalVAE, VAEConfig

_RENAME = {"kernel": "weight", "scale": "gamma", "resample": "resample.1"}
_CONFIG_KEYS = {"base_dim": "base_channels", "dim_mult": "channel_mults",
                "num_res_blocks": "num_res_blocks", "z_dim": "z_channels",
                "temperal_downsample": "temporal_downsample", "attn_scales": "attn_scales",
                "dropout": "dropout"}
CLASS_NAME = "AutoencoderKLWan"
_PATCH_AXES = {("encoder", "conv_in", "kernel"): -2,        # the pixel-patch channel axis
               ("decoder", "conv_out", "kernel"): -1, ("decoder", "conv_out", "bias"): -1}


def diffusers_key(path: tuple[Any, ...]) -> str:
    """The AutoencoderKLWan state-dict key of one of our parameter paths."""
    return ".".join(_RENAME.get(p, str(p)) if isinstance(p, str) else str(p) for p in path)


def _patch_order(array: np.ndarray, path: tuple[Any, ...], cfg: VAEConfig) -> np.ndarray:
    """Swaps the (dy, dx) order of the pixel-patch channels of the encoder's input and the
    decoder's output (our (c, dy, dx) <-> diffusers' (c, dx, dy)); its own inverse."""
    p, axis = cfg.patch_size, _PATCH_AXES.get(tuple(path))
    if p == 1 or axis is None:
        return array
    order = np.arange(cfg.pixel_channels).reshape(-1, p, p).transpose(0, 2, 1).reshape(-1)
    return np.take(array, order, axis=axis)


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
        array = _patch_order(array, path, vae.config)
        var.set_value(jnp.asarray(array, dtype=var.dtype))
    nnx.update(vae, params)


def config_from_diffusers(config: Mapping[str, Any], **overrides: Any) -> VAEConfig:
    """A VAEConfig from an AutoencoderKLWan config.json dict (Wan 2.1, optionally with a pixel
    patch; not Wan 2.2's residual blocks or separate decoder width); overrides set our own
    fields (dtype, ...)."""
    wan22 = {k: config.get(k) for k in ("is_residual", "decoder_base_dim")
             if config.get(k) not in (None, False, config.get("base_dim"))}
    if wan22:
        raise ValueError(f"diffusers VAE config {wan22}: only the Wan 2.1 VAE is supported")
    if config.get("out_channels", 3) != config.get("in_channels", 3):
        raise ValueError(f"diffusers VAE config out_channels={config.get('out_channels')} "
                         f"differs from in_channels={config.get('in_channels')}")
    fields = {ours: config[theirs] for theirs, ours in _CONFIG_KEYS.items() if theirs in config}
    patch = config.get("patch_size") or 1
    if config.get("in_channels", 3) % (patch * patch):
        raise ValueError(f"diffusers VAE config in_channels={config['in_channels']}: not a "
                         f"multiple of patch_size**2={patch * patch}")
    fields.update(patch_size=patch, in_channels=config.get("in_channels", 3) // (patch * patch))
    return VAEConfig.from_dict({**fields, **overrides})


def config_to_diffusers(cfg: VAEConfig, latent_mean: Sequence[float] | None = None,
                        latent_std: Sequence[float] | None = None) -> dict[str, Any]:
    """The AutoencoderKLWan config.json dict of our VAE config, with the per-channel latent
    statistics the DiT's latents are normalised with (z - mean) / std (default 0 and 1)."""
    z = cfg.z_channels
    config = {theirs: getattr(cfg, ours) for theirs, ours in _CONFIG_KEYS.items()}
    config.update({k: list(config[k]) for k in ("dim_mult", "attn_scales", "temperal_downsample")})
    config.update(
        in_channels=cfg.pixel_channels, out_channels=cfg.pixel_channels,
        patch_size=cfg.patch_size if cfg.patch_size > 1 else None, is_residual=False,
        decoder_base_dim=None, scale_factor_temporal=cfg.temporal_factor,
        scale_factor_spatial=cfg.spatial_factor,
        latents_mean=[float(v) for v in (latent_mean if latent_mean is not None else [0.0] * z)],
        latents_std=[float(v) for v in (latent_std if latent_std is not None else [1.0] * z)])
    return {"_class_name": CLASS_NAME, "_diffusers_version": safetensors_io.DIFFUSERS_VERSION,
            **config}


def load_pretrained(path: str | os.PathLike, **overrides: Any) -> CausalVAE:
    """Our CausalVAE from a diffusers AutoencoderKLWan folder (config.json + safetensors, sharded
    with an index or not), read one tensor at a time into an unallocated model."""
    config = config_from_diffusers(safetensors_io.read_config(path, CLASS_NAME), **overrides)
    vae = nnx.eval_shape(lambda: CausalVAE(config, rngs=nnx.Rngs(0)))   # no random init
    with safetensors_io.open_weights(path) as tensors:
        load_state_dict(vae, tensors)
    return vae


def _torch_shape(owner: type, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """diffusers' shape for our parameter `name` of a layer that sits in a module of type owner."""
    if name == "kernel":                      # [*k, I, O] -> [O, I, *k]; Linear is a 1x1 Conv2d
        return shape[-1:] + shape[-2:-1] + (shape[:-2] or (1, 1))
    if name == "scale":                       # images=True (attention) norms are [C, 1, 1]
        return shape + ((1, 1) if owner is AttentionBlock else (1, 1, 1))
    return shape


def iter_state_dict(vae: CausalVAE) -> Iterator[tuple[str, np.ndarray]]:
    """Our parameters as (diffusers AutoencoderKLWan key, float32 numpy array) pairs, one at a
    time, C-ordered (safetensors.numpy writes a transposed view's raw buffer, scrambling it)."""
    kinds = {path: type(node) for path, node in nnx.iter_graph(vae)}
    for path, var in nnx.to_flat_state(nnx.state(vae, nnx.Param)):
        array = _patch_order(np.asarray(var.get_value(), np.float32), path, vae.config)
        shape = _torch_shape(kinds[path[:-2]], path[-1], array.shape)
        if path[-1] == "kernel":
            n = array.ndim
            array = np.transpose(array, (n - 1, n - 2) + tuple(range(n - 2)))
        yield diffusers_key(path), np.ascontiguousarray(array.reshape(shape))


def export_state_dict(vae: CausalVAE) -> dict[str, np.ndarray]:
    """Our parameters as a diffusers AutoencoderKLWan state dict of float32 numpy arrays."""
    return dict(iter_state_dict(vae))


def save_pretrained(vae: CausalVAE, path: str | os.PathLike, *,
                    latent_mean: Sequence[float] | None = None,
                    latent_std: Sequence[float] | None = None,
                    max_shard_bytes: int = 5 * 2**30, dtype: Any = None) -> list[str]:
    """Writes vae as a diffusers AutoencoderKLWan folder (config.json with the latent statistics
    + safetensors in float32 or dtype, sharded above max_shard_bytes) for its from_pretrained."""
    safetensors_io.write_config(path, config_to_diffusers(vae.config, latent_mean, latent_std))
    return safetensors_io.write_weights(path, iter_state_dict(vae),
                                        max_shard_bytes=max_shard_bytes, dtype=dtype)

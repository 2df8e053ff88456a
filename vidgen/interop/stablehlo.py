"""Serving exports with jax.export: a model's function for fixed input shapes, lowered to
StableHLO and serialized, with the parameters beside it (they are arguments, not constants, so a
large model's program stays small).

    {out}/{name}.jax_export    Exported.serialize(): the StableHLO module and its calling
                               convention (jax.export.deserialize reads it back)
    {out}/{name}.safetensors   the parameters, keyed by their flat paths
    {out}/{name}.json          inputs and outputs (name, shape, dtype), platforms, parameter count

`load(out, name)` gives a jitted callable of the inputs. The exported function takes
(params: {path: array}, *inputs); the model's non-parameter variables are constants.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vidgen.interop import safetensors_io
from vidgen.models.dit import DiT
from vidgen.models.text_encoder import TextEncoder
from vidgen.models.vae import CausalVAE


def _spec(name: str, shape: Sequence[int], dtype) -> dict:
    return {"name": name, "shape": [int(d) for d in shape], "dtype": jnp.dtype(dtype).name}


def export_module(module: nnx.Module, fn: Callable[..., jax.Array],
                  inputs: Sequence[tuple[str, jax.ShapeDtypeStruct]], out: str, name: str,
                  platforms: Sequence[str] | None = None,
                  used: nnx.filterlib.Filter = nnx.Param) -> jax.export.Exported:
    """Exports fn(module, *inputs) for the given input shapes as `{out}/{name}.*` (see the
    module doc); platforms defaults to the current backend. Only the parameters matching `used`
    are exported; fn must not read the others (they are zeros inside, which XLA drops)."""
    graphdef, params, unused, rest = nnx.split(module, nnx.All(nnx.Param, used), nnx.Param, ...)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = [jax.tree_util.keystr(path, simple=True, separator=".").removesuffix(".value")
            for path, _ in leaves]

    def call(flat: dict[str, jax.Array], *args: jax.Array) -> jax.Array:
        state = jax.tree.unflatten(treedef, [flat[k] for k in keys])
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), unused)
        return fn(nnx.merge(graphdef, state, zeros, rest), *args)

    named = [(k, leaf) for k, (_, leaf) in zip(keys, leaves)]
    specs = {k: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for k, leaf in named}
    exported = jax.export.export(jax.jit(call), platforms=platforms)(
        specs, *[spec for _, spec in inputs])
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.jax_export"), "wb") as f:
        f.write(exported.serialize())
    safetensors_io.write_weights(out, ((k, np.asarray(leaf)) for k, leaf in named), name=name,
                                 max_shard_bytes=2**62)         # one file, one array at a time
    outputs = [_spec(f"output_{i}", a.shape, a.dtype) for i, a in enumerate(exported.out_avals)]
    info = {"name": name, "inputs": [_spec(n, s.shape, s.dtype) for n, s in inputs],
            "outputs": outputs, "platforms": list(exported.platforms), "num_params": len(keys)}
    with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return exported


def load(out: str, name: str) -> Callable[..., jax.Array]:
    """The function `{out}/{name}.*` holds, as a jitted callable of its inputs (the parameters
    are read from the safetensors file once, here)."""
    with open(os.path.join(out, f"{name}.jax_export"), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    with safetensors_io.open_weights(out, name) as tensors:
        params = {k: jnp.asarray(tensors[k]) for k in tensors}
    return partial(jax.jit(exported.call), params)


def _velocity(dit: DiT, x: jax.Array, t: jax.Array, context: jax.Array,
              context_mask: jax.Array) -> jax.Array:
    return dit(x, t, context, context_mask).astype(jnp.float32)


def _decode(vae: CausalVAE, z: jax.Array) -> jax.Array:
    return jnp.clip(vae.decode(z).astype(jnp.float32), -1.0, 1.0)


def _encode_text(text: TextEncoder, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return text(ids, mask).astype(jnp.float32)


def export_denoiser(dit: DiT, out: str, *, batch: int, latent_shape: Sequence[int],
                    text_length: int, platforms: Sequence[str] | None = None,
                    name: str = "denoiser") -> jax.export.Exported:
    """The DiT's velocity v(x [B, t, h, w, C], t [B] in [0, 1], context [B, L, text_dim],
    context_mask [B, L] bool) -> float32 [B, t, h, w, C_out] for latent_shape = (t, h, w)."""
    cfg = dit.config
    f32 = jnp.float32
    inputs = [("x", jax.ShapeDtypeStruct((batch, *latent_shape, cfg.in_channels), f32)),
              ("t", jax.ShapeDtypeStruct((batch,), f32)),
              ("context", jax.ShapeDtypeStruct((batch, text_length, cfg.text_dim), f32)),
              ("context_mask", jax.ShapeDtypeStruct((batch, text_length), jnp.bool_))]
    return export_module(dit, _velocity, inputs, out, name, platforms)


def export_text_encoder(text: TextEncoder, out: str, *, batch: int, text_length: int,
                        platforms: Sequence[str] | None = None,
                        name: str = "text_encoder") -> jax.export.Exported:
    """The text encoder: token ids [B, L] int32 and mask [B, L] bool -> float32 [B, L, D]."""
    inputs = [("ids", jax.ShapeDtypeStruct((batch, text_length), jnp.int32)),
              ("mask", jax.ShapeDtypeStruct((batch, text_length), jnp.bool_))]
    return export_module(text, _encode_text, inputs, out, name, platforms)


def export_vae_decoder(vae: CausalVAE, out: str, *, batch: int, latent_shape: Sequence[int],
                       platforms: Sequence[str] | None = None,
                       name: str = "vae_decoder") -> jax.export.Exported:
    """The VAE decoder: latents z [B, t, h, w, z] -> float32 video [B, 1 + 4(t - 1), H, W, 3]
    clipped to [-1, 1], for latent_shape = (t, h, w)."""
    z = jax.ShapeDtypeStruct((batch, *latent_shape, vae.config.z_channels), jnp.float32)
    decoder = nnx.Any(nnx.PathContains("post_quant_conv"), nnx.PathContains("decoder"))
    return export_module(vae, _decode, [("z", z)], out, name, platforms, used=decoder)

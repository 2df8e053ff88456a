"""The DiT's own properties (vidgen/models/dit.py): scan = loop, remat changes nothing but
memory, text padding is ignored, packed clips equal separate clips, any latent size works, and the
logical axis names shard. Parity with diffusers' Wan DiT is in tests/interop/test_wan_dit.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vidgen.models import dit as dit_lib
from vidgen.models.dit import DiT, DiTConfig
from vidgen.parallel import mesh as mesh_lib

SMALL = DiTConfig(in_channels=4, out_channels=4, hidden_dim=48, num_layers=2, num_heads=4,
                  mlp_dim=64, text_dim=32)


def _abstract(cfg: DiTConfig = SMALL) -> DiT:
    with nnx.use_eager_sharding(False):
        return nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))


def _model(cfg: DiTConfig = SMALL, seed: int = 0) -> DiT:
    """A DiT with random parameters (norm scales near 1), filled from NumPy: a real init costs
    dozens of small XLA compiles."""
    model = _abstract(cfg)
    rng = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = 0.15 * rng.normal(size=var.shape) + (path[-1] == "scale")
        var.set_value(jnp.asarray(value, jnp.float32))
    return model


def _with_config(model: DiT, cfg: DiTConfig) -> DiT:
    """The same parameters in a DiT built from another (layout-compatible) config."""
    other = _abstract(cfg)
    nnx.update(other, nnx.state(model, nnx.Param))
    return other


def _inputs(shape, seed=0, text_len=6, text_dim=32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    t = jnp.asarray(rng.uniform(size=(shape[0],)), jnp.float32)
    context = jnp.asarray(rng.normal(size=(shape[0], text_len, text_dim)), jnp.float32)
    mask = jnp.asarray(np.arange(text_len)[None] < rng.integers(2, text_len, (shape[0], 1)))
    return x, t, context, mask


_forward = nnx.jit(lambda m, *args, **kw: m(*args, **kw))


def test_output_layer_starts_at_zero():
    with nnx.use_eager_sharding(False):
        fresh = DiT(SMALL, rngs=nnx.Rngs(0))
    assert np.all(np.asarray(fresh.proj_out.kernel[...]) == 0)
    assert np.all(np.asarray(fresh.proj_out.bias[...]) == 0)
    assert np.abs(np.asarray(fresh.blocks.ffn.fc1.kernel[...])).max() > 0    # the rest is random


def test_odd_and_non_square_latent_sizes():
    for shape in ((1, 3, 5, 7, 4), (2, 1, 2, 9, 4)):        # padded to 3x4 / 1x5 patches
        x, t, context, mask = _inputs(shape)
        out = np.asarray(_forward(_model(), x, t, context, mask))
        assert out.shape == x.shape and np.all(np.isfinite(out)) and np.abs(out).max() > 0.01


def test_scan_and_loop_agree():
    model = _model()
    loop = _with_config(model, dataclasses.replace(SMALL, scan_layers=False))
    x, t, context, mask = _inputs((2, 2, 4, 6, 4), seed=1)

    def output_and_grads(m):
        graphdef, params = nnx.split(m, nnx.Param)

        def loss(p):
            out = nnx.merge(graphdef, p)(x, t, context, mask)
            return jnp.mean(out ** 2), out

        (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        return out, jax.tree.leaves(grads)

    (out_scan, grads_scan), (out_loop, grads_loop) = map(output_and_grads, (model, loop))
    err = float(jnp.abs(out_scan - out_loop).max())
    grad_err = max(float(jnp.abs(a - b).max()) for a, b in zip(grads_scan, grads_loop))
    print(f"scan vs loop: max abs err {err:.2e}, gradients {grad_err:.2e}")
    assert err <= 1e-6 and grad_err <= 1e-6


def test_batch_equals_samples_alone():
    """A batch of one takes another code path (no vmap over the batch) than larger batches."""
    model = _model(seed=6)
    x, t, context, mask = _inputs((3, 2, 4, 4, 4), seed=6)
    batch = np.asarray(_forward(model, x, t, context, mask))
    err = max(np.abs(batch[i] - np.asarray(_forward(model, x[i:i + 1], t[i:i + 1],
                                                     context[i:i + 1], mask[i:i + 1]))[0]).max()
              for i in range(3))
    print(f"batch of 3 vs each sample alone: max abs err {err:.2e}")
    assert err <= 1e-5


def test_remat_policies_give_identical_outputs_and_gradients():
    x, t, context, mask = _inputs((1, 2, 4, 4, 4), seed=2)
    model = _model(seed=2)

    def value_and_grad(policy):
        m = _with_config(model, dataclasses.replace(SMALL, remat_policy=policy))
        graphdef, params = nnx.split(m, nnx.Param)
        loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(x, t, context, mask) ** 2)
        rematerialised = "remat" in str(jax.make_jaxpr(loss)(params))
        return jax.jit(jax.value_and_grad(loss))(params), rematerialised

    (base_loss, base_grads), base_remat = value_and_grad("none")
    assert not base_remat
    for policy in ("full", "dots", "save_attention", "save_dots_attention"):
        (loss, grads), remat = value_and_grad(policy)
        err = max(float(jnp.abs(a - b).max()) for a, b in
                  zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)))
        scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(base_grads))
        print(f"remat {policy}: loss diff {abs(float(loss - base_loss)):.1e}, grad err {err:.1e}"
              f" (largest gradient {scale:.1e})")
        assert remat and abs(float(loss - base_loss)) <= 1e-6 and err <= 1e-6 * scale


def test_save_attention_does_not_run_self_attention_forward_again():
    """Under 'save_attention' the backward pass reuses each self-attention kernel's output and
    log-sum-exp: the compiled gradient does the FLOPs of 'full' less one self-attention forward
    (4 L^2 D per layer for the scores and values, plus its softmax), and still recomputes the
    rest."""
    x, t, context, mask = _inputs((1, 2, 16, 16, 4), seed=2)
    model = _model(seed=2)

    def gradient_flops(policy):
        m = _with_config(model, dataclasses.replace(SMALL, remat_policy=policy,
                                                    scan_layers=False))
        graphdef, params = nnx.split(m, nnx.Param)
        loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(x, t, context, mask) ** 2)
        return jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()["flops"]

    none, full, saved = (gradient_flops(p) for p in ("none", "full", "save_attention"))
    tokens = 2 * 8 * 8                                           # (2, 16, 16) latents, 1x2x2 patches
    forward = 4 * tokens**2 * SMALL.hidden_dim * SMALL.num_layers
    print(f"gradient FLOPs: none {none:.4g}, full {full:.4g}, save_attention {saved:.4g}; "
          f"one self-attention forward per layer: {forward:.4g}")
    assert forward <= full - saved <= 1.2 * forward
    assert saved > none + forward                                # the rest is still recomputed


def test_padded_text_tokens_are_ignored():
    model = _model(seed=3)
    x, t, context, _ = _inputs((2, 1, 4, 4, 4), seed=3, text_len=6)
    mask = jnp.asarray([[True] * 3 + [False] * 3, [True] * 5 + [False]])
    base = np.asarray(_forward(model, x, t, context, mask))
    padded = context.at[0, 3:].set(100.0).at[1, 5].set(-7.0)
    real = context.at[0, 1].add(1.0)
    same = np.abs(np.asarray(_forward(model, x, t, padded, mask)) - base).max()
    moved = np.abs(np.asarray(_forward(model, x, t, real, mask)) - base)
    print(f"changing padded text: max change {same:.1e}; a real token: {moved[0].max():.1e}")
    assert same <= 1e-6 and moved[0].max() > 1e-3 and moved[1].max() == 0


def test_packed_clips_equal_separate_clips():
    model = _model(seed=4)
    clip_a, t, context_a, _ = _inputs((1, 2, 4, 6, 4), seed=4, text_len=3)   # 2x2x3 patches
    clip_b, _, context_b, _ = _inputs((1, 1, 6, 4, 4), seed=5, text_len=4)   # 1x3x2 patches
    tokens, positions, segments = [], [], []
    for seg, clip in ((1, clip_a), (2, clip_b)):
        tok, grid = dit_lib.patchify(clip, SMALL.patch_size)
        tokens.append(tok)
        positions.append(dit_lib.rope.grid_positions(1, *grid))
        segments.append(jnp.full((1, tok.shape[1]), seg))
    tokens.append(jnp.ones((1, 2, tokens[0].shape[-1])))                      # 2 padding tokens
    positions.append(jnp.zeros((1, 2, 3), jnp.int32))
    segments.append(jnp.zeros((1, 2), jnp.int32))
    context = jnp.concatenate([context_a, context_b, jnp.ones_like(context_a[:, :1])], axis=1)
    context_segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]])
    packed = _forward(model, jnp.concatenate(tokens, 1), t, context, context_segments > 0,
                      segment_ids=jnp.concatenate(segments, 1),
                      positions=jnp.concatenate(positions, 1),
                      context_segment_ids=context_segments)
    alone = [dit_lib.patchify(_forward(model, clip, t, ctx, None), SMALL.patch_size)[0]
             for clip, ctx in ((clip_a, context_a), (clip_b, context_b))]
    err = np.abs(np.asarray(packed[:, :18]) - np.asarray(jnp.concatenate(alone, 1))).max()
    print(f"packed vs separate clips: max abs err {err:.2e}")
    assert packed.shape == (1, 20, 16) and err <= 1e-5
    assert np.all(np.isfinite(np.asarray(packed)))


def test_parameters_carry_logical_axes():
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: DiT(SMALL, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(params):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(var.shape), path
        assert path[0] != "blocks" or names[0] is None, path
    mesh = mesh_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = mesh_lib.tree_shardings(params, mesh)
    spec = shardings["blocks"]["attn1"]["to_q"]["kernel"].get_value().spec
    assert tuple(spec) == (None, "fsdp", "tensor", None)


def test_config_validation():
    assert DiTConfig.from_dict({"hidden_dim": 64, "num_heads": 4}).head_dim == 16
    with pytest.raises(ValueError, match="mlp_ratio"):
        DiTConfig.from_dict({"mlp_ratio": 4})
    for bad, match in (({"hidden_dim": 50, "num_heads": 4}, "hidden_dim"),
                       ({"remat_policy": "some"}, "remat_policy"),
                       ({"patch_size": (2, 2)}, "patch_size")):
        with pytest.raises(ValueError, match=match):
            DiTConfig(**bad)

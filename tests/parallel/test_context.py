"""Attention on a mesh (vidgen/parallel/context.py through vidgen/models/attention.py) on 8
simulated devices: Ulysses sequence parallelism (batch x tensor x sequence = 2 x 2 x 2) and
cross-attention with split queries equal single-device attention, values and gradients, with
segment ids and masks; the layout choice and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vidgen.models.attention import dot_product_attention
from vidgen.parallel import context
from vidgen.parallel import mesh as mesh_lib

B, L, H, K = 2, 8, 4, 8
MESH = dict(data=2, tensor=2, sequence=2)


def _qkv(seed: int, lk: int = L) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(B, L, H, K)).astype(np.float32),
            rng.normal(size=(B, lk, H, K)).astype(np.float32),
            rng.normal(size=(B, lk, H, K)).astype(np.float32))


def _value_and_grads(fn, q, k, v):
    """Output and the gradients of sum(out * w) for q, k, v (one jitted program)."""
    w = np.random.default_rng(9).normal(size=q.shape).astype(np.float32)

    def f(q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(jnp.asarray(w))

    return jax.jit(f)(q, k, v)


def _max_err(a, b) -> float:
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _on_mesh_and_alone(fn, q, k, v) -> float:
    """Largest difference of fn's output and gradients on the 8-device mesh and on 1 device."""
    alone = _value_and_grads(fn, q, k, v)
    with mesh_lib.mesh_context(mesh_lib.make_mesh(MESH)):
        sharded = _value_and_grads(fn, q, k, v)
    return _max_err(sharded, alone)


def test_ulysses_equals_plain_attention_with_segment_ids():
    q, k, v = _qkv(0)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 2], [3, 3, 3, 3, 3, 3, 4, 4]], np.int32)
    mask = np.random.default_rng(1).uniform(size=(B, H, L, L)) < 0.7     # per head and query

    def attend(q, k, v):
        return dot_product_attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg)

    def attend_masked(q, k, v):
        return dot_product_attention(q, k, v, mask=mask, q_segment_ids=seg, kv_segment_ids=seg)

    def per_sample(q, k, v):       # the DiT's path: a vmap over examples naming the batch axes
        one = lambda q, k, v, s: dot_product_attention(q, k, v, q_segment_ids=s,
                                                       kv_segment_ids=s)
        return jax.vmap(one, spmd_axis_name=mesh_lib.batch_spmd_axes(B))(q, k, v, seg)

    errs = {f.__name__: _on_mesh_and_alone(f, q, k, v)
            for f in (attend, attend_masked, per_sample)}
    print(f"Ulysses (data x tensor x sequence = 2x2x2) vs 1 device, output and gradients: {errs}")
    assert max(errs.values()) <= 1e-6
    with mesh_lib.mesh_context(mesh_lib.make_mesh(MESH)):
        assert context.plan(q.shape, k.shape) == context.Layout(
            ("data",), ("tensor",), ("sequence",), ulysses=True)
        hlo = jax.jit(attend).lower(q, k, v).compile().as_text()
    assert hlo.count("all-to-all") >= 4        # q, k, v there and the output back


def test_cross_attention_splits_the_queries_only():
    q, k, v = _qkv(2, lk=6)
    padding = np.arange(6)[None, None, None, :] < np.array([3, 6])[:, None, None, None]

    def attend(q, k, v):
        return dot_product_attention(q, k, v, mask=padding)

    err = _on_mesh_and_alone(attend, q, k, v)
    print(f"cross-attention with split queries vs 1 device: {err:.1e}")
    assert err <= 1e-6
    with mesh_lib.mesh_context(mesh_lib.make_mesh(MESH)):
        assert context.plan(q.shape, k.shape) == context.Layout(
            ("data",), ("tensor",), ("sequence",), ulysses=False)
        assert "all-to-all" not in jax.jit(attend).lower(q, k, v).compile().as_text()


def test_layout_errors_and_fallbacks():
    with mesh_lib.mesh_context(mesh_lib.make_mesh(MESH)):
        with pytest.raises(ValueError, match=r"Ulysses .* 2 attention heads .* divisible by 4"):
            context.plan((B, L, 2, K), (B, L, 2, K))
        with pytest.raises(ValueError, match=r"3 heads do not split over the act_heads mesh "
                                             r"axes \('tensor',\) \(2 devices\)"):
            context.plan((B, L, 3, K), (B, L, 3, K))
        # 7 tokens do not split over 'sequence', 3 examples not over 'data': both stay whole
        assert context.plan((3, 7, H, K), (3, 7, H, K)) == context.Layout(
            (), ("tensor",), (), ulysses=False)
    with mesh_lib.mesh_context(mesh_lib.make_mesh({"data": -1}, jax.devices()[:1])):
        assert not mesh_lib.splits_anything()


def test_tpu_program_uses_splash_under_ulysses_and_offloads_remat():
    """The DiT's train gradient traced (not run) for a v5e 2x2 slice on this CPU: attention is
    splash (a Pallas call) inside the shard_map with Ulysses all-to-alls, and the 'offload' remat
    policy is accepted there but refused for the CPU."""
    pytest.importorskip("libtpu")
    from flax import nnx
    from jax.experimental import topologies

    from vidgen.models.dit import DiT, DiTConfig
    cfg = DiTConfig(in_channels=4, out_channels=4, hidden_dim=32, num_layers=2, num_heads=4,
                    mlp_dim=64, text_dim=16, freq_dim=32, remat_policy="offload")
    with nnx.use_eager_sharding(False):
        graphdef, state = nnx.split(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))))

    def loss(state):
        model = nnx.merge(graphdef, state)
        x, text = jnp.ones((2, 3, 4, 4, 4)), jnp.ones((2, 8, 16))
        return jnp.mean(model(x, jnp.ones((2,)), text, jnp.ones((2, 8), bool)) ** 2)

    tpus = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2").devices
    with mesh_lib.mesh_context(mesh_lib.make_mesh(dict(data=2, sequence=2), tpus)):
        program = str(jax.make_jaxpr(jax.grad(loss))(state))
    assert all(op in program for op in ("pallas_call", "shard_map", "all_to_all", "offload"))
    with pytest.raises(ValueError, match="remat_policy='offload' .* 'cpu' devices"):
        jax.make_jaxpr(jax.grad(loss))(state)

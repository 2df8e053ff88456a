"""Ahead-of-time compilation for a TPU slice on the CPU (vidgen/parallel/aot.py, topology.py,
launch/aot_compile.py): slice names against Cloud TPU's published shapes, one compile of a tiny
DiT train step for a v5p host (memory, FLOPs against the analytic count, fits flag, estimated
MFU), the compiler's out-of-memory refusal, and the CLI's exit status when a step does not fit.
Needs libtpu (setup.py's test and tpu extras): without it these tests fail, by design."""

import dataclasses
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from data_pipelines import buckets
from launch import aot_compile
from launch.configs import dit_1b3, dit_buckets
from vidgen.models.dit import DiT, DiTConfig
from vidgen.parallel import aot, topology
from vidgen.parallel import mesh as mesh_lib
from vidgen.train import flops
from vidgen.train import state as state_lib
from vidgen.train.tasks import get_task

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("name, libtpu_name, chips", [
    # Cloud TPU's documented v5p / v6e / v5e slice shapes (v5p-N counts TensorCores)
    ("v5p-8", "v5p:2x2x1", 4), ("v5p-16", "v5p:2x2x2", 8), ("v5p-32", "v5p:2x2x4", 16),
    ("v5p-64", "v5p:2x4x4", 32), ("v5p-128", "v5p:4x4x4", 64), ("v5p-256", "v5p:4x4x8", 128),
    ("v5p-512", "v5p:4x8x8", 256), ("v5p-2048", "v5p:8x8x16", 1024),
    ("v5p-4096", "v5p:8x16x16", 2048),
    ("v6e-8", "v6e:2x4", 8), ("v6e-256", "v6e:16x16", 256), ("v5litepod-16", "v5e:4x4", 16),
    ("v4-32", "v4:2x2x4", 16), ("v5p:4x4x12", "v5p:4x4x12", 192),
])
def test_slice_names(name, libtpu_name, chips):
    t = topology.parse_topology(name)
    assert (t.name, t.num_chips) == (libtpu_name, chips)


@pytest.mark.parametrize("name, match", [
    ("v5p-7", "counts TensorCores"), ("v5p-48", "not a power of two"), ("tpu-8", "GEN-N"),
    ("v5p-x", "not a chip grid"), ("v6e:4xq", "not a chip grid"),
])
def test_bad_slice_names(name, match):
    with pytest.raises(ValueError, match=match):
        topology.parse_topology(name)


@pytest.fixture(scope="module")
def report():
    """dit_1b3:tiny, one layer (so the cost model needs one more compile, not two), one clip
    per chip of a v5p host (4 chips, fsdp)."""
    c = dit_1b3.get_config("tiny")
    c.data.batch_size = 4
    c.model.num_layers = 1
    return aot.compile_train_step(get_task("dit"), c, "v5p-8", aot.config_bucket(c))


def test_report_memory_and_fit(report):
    m = report.memory
    assert report.topology.num_chips == 4 and report.mesh["fsdp"] == 4
    assert min(m.arguments, m.outputs, m.temporaries, m.code) > 0
    assert 0 < m.aliased <= m.outputs            # the donated state is reused for the new one
    assert m.total == m.arguments + m.outputs - m.aliased + m.temporaries + m.code
    assert report.hbm_bytes == 95 * 2 ** 30 and report.fits
    assert not dataclasses.replace(report, hbm_bytes=m.total - 1).fits


def test_report_flops_and_time(report):
    model = sum(report.model_flops.values())
    compiler = report.compiler.flops * report.topology.num_chips
    # The compiler costs everything but the splash kernels (whose FLOPs are counted apart);
    # the tiny model also trains its text encoder, which the model count leaves out.
    assert report.attention_flops > 0
    assert 0.7 < (compiler + report.attention_flops) / model < 2.5
    assert report.step_seconds > report.compiler.seconds > 0
    assert 0 < report.estimated_mfu < 1
    assert report.summary().splitlines()[-1] == f"estimated_mfu={report.estimated_mfu:.3f}"


def test_analytic_parameter_count_matches_the_model():
    """6 x params x tokens only holds if flops.py counts the model's matmul weights: compare
    with the kernels of a real (abstract) DiT; only the timestep embedding's are left out."""
    cfg = DiTConfig(hidden_dim=64, num_layers=3, num_heads=4, mlp_dim=160, text_dim=48)
    _, state, _ = state_lib.abstract_model(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
    kernels = {jax.tree_util.keystr(path): math.prod(leaf.shape) for path, leaf
               in jax.tree_util.tree_flatten_with_path(state)[0] if "kernel" in str(path)}
    per_token = sum(n for name, n in kernels.items() if "time_" not in name)
    video = flops.dit_model_flops(cfg, tokens=1, text_len=0)["dense"] / 6
    text = flops.dit_model_flops(cfg, tokens=0, text_len=1)["dense"] / 6
    assert len(kernels) == 7 + 10 and per_token == video + text


@pytest.mark.parametrize("policy,fused", [("full", False), ("save_attention", False),
                                          ("save_attention", True), ("save_dots_attention", True),
                                          ("none", True)])
def test_tpu_gradient_runs_the_attention_kernels_flops_py_counts(policy, fused):
    """The DiT's gradient compiled for a v5p host: the splash kernels (TPU custom calls) it runs
    are the ones vidgen/train/flops.py prices: per attention (self and cross) a forward, again
    under remat unless the policy keeps its output ('save_attention': self-attention's,
    'save_dots_attention': both), and a dq and a dkv backward kernel, or one fused kernel."""
    cfg = DiTConfig(in_channels=4, out_channels=4, hidden_dim=256, num_layers=2, num_heads=2,
                    mlp_dim=64, text_dim=16, freq_dim=32, remat_policy=policy,
                    scan_layers=False, splash_fused_backward=fused, dtype="bfloat16")
    graphdef, params, rest = state_lib.abstract_model(lambda: DiT(cfg, rngs=nnx.Rngs(0)))

    def loss(params):
        x, text = jnp.ones((4, 2, 16, 16, 4)), jnp.ones((4, 8, 16))
        model = nnx.merge(graphdef, params, rest)
        return jnp.mean(model(x, jnp.ones((4,)), text, jnp.ones((4, 8), bool)) ** 2)

    with mesh_lib.mesh_context(mesh_lib.make_mesh({"data": 4},
                                                  topology.topology_devices("v5p:2x2x1"))):
        program = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    kernels = program.count('custom_call_target="tpu_custom_call"')
    remat = policy not in ("none", "save_dots_attention")
    forwards = (2 if remat and policy != "save_attention" else 1) + (2 if remat else 1)
    backwards = 2 * (1 if fused else 2)
    assert kernels == cfg.num_layers * (forwards + backwards)
    # flops.py's kernel count, per unit of L x Lk x D, reads the same (forward 4, dq + dkv 14,
    # fused 10): self-attention here has Lk = L tokens, cross-attention Lk = 8 text tokens.
    count = flops.attention_kernel_flops(cfg, 128, 0, "splash") / (2 * 128 * 128 * 256)
    assert count == (2 if remat and policy != "save_attention" else 1) * 4 + (10 if fused else 14)


def test_splash_gradient_over_2m_tokens_compiles_for_a_v5p_chip():
    """A 60 s 1080p clip's self-attention as one chip holds it under 20-way Ulysses (1,966,560
    tokens, 2 heads of 128): splash's block metadata must fit the TensorCore's 1 MiB scalar memory
    and its kernels the scoped VMEM, which attention.splash_plan's key blocks and query chunks
    see to (one 2M x 2M call was refused for both)."""
    from jax.sharding import SingleDeviceSharding

    from vidgen.models import attention
    tokens = 1_966_560
    plan = attention.splash_plan(tokens, tokens)
    assert -(-tokens // plan.chunk) > 1                              # split into query chunks
    chip = SingleDeviceSharding(topology.topology_devices("v5p:2x2x1")[0])
    qkv = jax.ShapeDtypeStruct((tokens, 2, 128), jnp.bfloat16, sharding=chip)

    def loss(q, k, v):
        ids = jnp.zeros((tokens,), jnp.int32)
        return jnp.sum(attention.splash_attention(q, k, v, ids, ids).astype(jnp.float32))

    lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(qkv, qkv, qkv)
    assert lowered.as_text().count("tpu_custom_call") >= 3           # forward, dq, dk + dv
    lowered.compile()            # the compiler's SMEM / VMEM checks (it raised before the plan)


def test_compiler_out_of_memory_is_reported():
    devices = topology.topology_devices("v5p:2x2x1")
    mesh = Mesh(np.array(devices[:1]), ("x",))
    x = jax.ShapeDtypeStruct((1024, 1024), jnp.float32, sharding=NamedSharding(mesh,
                                                                              PartitionSpec()))
    lowered = jax.jit(lambda a: jnp.tile(a, (200, 100)) * 2).lower(x)     # 80 GB out
    compiled, oom = aot._compile(lowered)
    assert compiled is None and "HBM" in oom


def test_all_buckets_come_from_the_bucket_table():
    config = dit_buckets.get_config("tiny")
    table = buckets.BucketTable.from_config(config.data.buckets).buckets
    shapes = aot_compile.bucket_shapes(config, all_buckets=True)
    assert len(shapes) == len(table) > 1
    assert [(s.num_frames, s.height, s.width, s.batch_size) for s in shapes] == [
        (b.num_frames, b.height, b.width, b.batch_size) for b in table]
    assert aot_compile.bucket_shapes(config, all_buckets=False) == [aot.config_bucket(config)]


def test_cli_exits_nonzero_with_the_numbers_when_it_does_not_fit():
    done = subprocess.run(
        [sys.executable, "-m", "launch.aot_compile", "--config=launch/configs/dit_1b3.py:tiny",
         "--topology=v5p-8", "--config.data.batch_size=4", "--config.model.num_layers=1",
         "--hbm_gib=0.001", "--noestimate_time"],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
        timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "of 0.00 GiB HBM: DOES NOT FIT" in done.stdout and "temporaries" in done.stdout
    assert "does not fit on v5p-8" in done.stderr

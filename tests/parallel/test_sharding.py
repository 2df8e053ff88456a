"""Parallelism as configuration (vidgen/parallel/mesh.py, the DiT's logical axes): two dit train
steps on 8 simulated devices equal the same steps on 1 device for data x tensor parallelism
(2 x 4: Megatron heads and MLP over 'tensor', replicated over 'data'), FSDP x sequence
parallelism (2 x 4: ZeRO-3 over 'fsdp', Ulysses over 'sequence') and a 2x2x2 fsdp x tensor x
sequence mix; parameter, optimizer-state and activation shardings are what
the rules say; the rules table is validated; a VAE encode sharded by batch and by rows equals 1
device."""

import contextlib

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from launch.configs import dit_tiny
from models.vae_testing import TINY, random_vae   # tests/ is on sys.path (its conftest.py)
from vidgen.models.vae import VIDEO_AXES
from vidgen.parallel import mesh as mesh_lib
from vidgen.train import optim
from vidgen.train import state as state_lib
from vidgen.train.tasks import dit as task

BATCH, LATENT, TEXT_LEN, TEXT_DIM = 8, (3, 4, 4, 4), 8, 16     # 12 tokens of 2x2 patches
MESHES = {"data x tensor": dict(data=2, tensor=4), "fsdp x sequence": dict(fsdp=2, sequence=4),
          "mix": dict(fsdp=2, tensor=2, sequence=2)}


def _config(mesh: dict) -> ml_collections.ConfigDict:
    """The smallest DiT with 4 heads (they split over tensor x sequence = 4), frozen text."""
    c = dit_tiny.get_config("tiny")
    c.model.update(in_channels=4, out_channels=4, hidden_dim=32, num_layers=2, num_heads=4,
                   mlp_dim=64, text_dim=TEXT_DIM, freq_dim=32)
    c.text.trainable = False
    c.optim.update(lr=1e-3, warmup_steps=0)
    c.mesh = ml_collections.ConfigDict({**dict(data=1, fsdp=1, tensor=1, sequence=1), **mesh})
    return c


def _batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.arange(TEXT_LEN)[None] < rng.integers(2, TEXT_LEN + 1, size=(BATCH, 1))
    return {"latents": rng.normal(size=(BATCH,) + LATENT).astype(np.float32),
            "context": rng.normal(size=(BATCH, TEXT_LEN, TEXT_DIM)).astype(np.float32),
            "text_mask": mask, "null_context": rng.normal(size=(TEXT_LEN, TEXT_DIM)).astype(
                np.float32), "null_mask": np.arange(TEXT_LEN) < 1}


def _initial_state(plan: state_lib.StatePlan, tx) -> state_lib.TrainState:
    """Random parameters from NumPy (norm scales around 1) and a fresh optimizer state: the
    same start on every mesh, with nothing compiled. (The DiT's own init zeroes its output
    layer, which leaves every other gradient of a first step zero.)"""
    rng = np.random.default_rng(1)

    def fill(path, a):
        return (0.1 * rng.normal(size=a.shape) + (path[-2].key == "scale")).astype(a.dtype)

    params = jax.tree_util.tree_map_with_path(fill, plan.abstract.params)
    zero = np.zeros((), np.int32)
    return state_lib.TrainState(
        step=zero, params=params, rest=jax.tree.map(lambda a: np.zeros(a.shape, a.dtype),
                                                    plan.abstract.rest),
        opt_state=tx.init(params), ema=params, nonfinite_run=zero, nonfinite_total=zero)


# LLVM at -O0 and XLA:CPU's older fusion emitters cut the compile time of these small steps
# about fourfold; both sides of every comparison compile alike.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _train(mesh_config: dict, devices) -> dict:
    """Two train steps (vidgen/train/state.py's) on the same batch: the steps' metrics, and the
    final state with its host params and their shardings (keyed by parameter path)."""
    config = _config(mesh_config)
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    rules = mesh_lib.rules_from_config(config.mesh)
    tx = optim.make_optimizer(config.optim, config.total_steps)
    plan = state_lib.plan_train_state(lambda: task.build_model(config, nnx.Rngs(0)), tx, mesh,
                                      rules)
    step = state_lib.make_train_step(plan, task.TASK, tx, optim.make_schedule(
        config.optim, config.total_steps), config, mesh, rules)
    state = jax.device_put(_initial_state(plan, tx), plan.shardings)
    batch = mesh_lib.to_global(_batch(), mesh)
    step = jax.jit(step).lower(state, batch).compile(compiler_options=FAST_COMPILE)
    metrics = []
    for _ in range(2):
        state, m = step(state, batch)
        metrics.append(jax.device_get(m))
    flat = {"/".join(map(str, path)): var.get_value()
            for path, var in nnx.to_flat_state(state.params)}
    return {"mesh": mesh, "metrics": metrics, "state": state,
            "params": {k: np.asarray(v) for k, v in flat.items()},
            "specs": {k: v.sharding.spec for k, v in flat.items()}}


@pytest.fixture(scope="module")
def one_device():
    return _train({}, jax.devices()[:1])


def _spec(sharding: NamedSharding | P) -> tuple:
    """A PartitionSpec without trailing Nones and with 1-tuples unpacked, for comparing."""
    spec = [e[0] if isinstance(e, tuple) and len(e) == 1 else e
            for e in (sharding.spec if isinstance(sharding, NamedSharding) else sharding)]
    while spec and spec[-1] is None:
        spec.pop()
    return tuple(spec)


@contextlib.contextmanager
def _recording_constraints():
    """Records the sharding XLA gives every activation the models pin with mesh_lib.constrain
    (jax.debug.inspect_array_sharding, at compile time): {logical names: [normalised spec]}."""
    seen, real = {}, mesh_lib.constrain

    def recording(x, names):
        y = real(x, names)
        jax.debug.inspect_array_sharding(
            y, callback=lambda s: seen.setdefault(tuple(names), []).append(_spec(s)))
        return y

    mesh_lib.constrain = recording
    try:
        yield seen
    finally:
        mesh_lib.constrain = real


@pytest.fixture(scope="module")
def recorded():
    """The 2x2x2 mesh's run and the activation shardings of its compile."""
    with _recording_constraints() as seen:
        run = _train(MESHES["mix"], jax.devices())
    return run, seen

def _close_to(run: dict, reference: dict) -> tuple[float, float]:
    """Asserts losses, gradient norms (1e-5 relative) and params (1e-5) equal the reference's;
    returns the largest loss and parameter differences."""
    loss_err = 0.0
    for got, want in zip(run["metrics"], reference["metrics"]):
        for key in ("loss", "grad_norm"):
            assert float(got[key]) == pytest.approx(float(want[key]), rel=1e-5), key
        loss_err = max(loss_err, abs(float(got["loss"]) - float(want["loss"])))
    param_err = max(float(np.abs(run["params"][k] - v).max())
                    for k, v in reference["params"].items())
    assert param_err <= 1e-5
    return loss_err, param_err


@pytest.mark.parametrize("name", ["data x tensor", "fsdp x sequence"])
def test_two_steps_match_one_device(name, one_device):
    run = _train(MESHES[name], jax.devices())
    loss_err, param_err = _close_to(run, one_device)
    print(f"{name} {MESHES[name]} vs 1 device: loss {loss_err:.1e}, params {param_err:.1e}")


def test_mix_matches_one_device_and_shards_by_the_rules(one_device, recorded):
    run, _ = recorded
    loss_err, param_err = _close_to(run, one_device)
    print(f"mix {MESHES['mix']} vs 1 device: loss {loss_err:.1e}, params {param_err:.1e}")
    # Megatron: q/k/v and fc1 split by columns (heads, mlp) over 'tensor', out and fc2 by rows;
    # every kernel's model dimension FSDP-split; the stacked layer axis replicated.
    expected = {"dit/blocks/attn1/to_q/kernel": P(None, "fsdp", "tensor", None),
                "dit/blocks/attn2/to_v/kernel": P(None, "fsdp", "tensor", None),
                "dit/blocks/attn1/to_out/kernel": P(None, "tensor", None, "fsdp"),
                "dit/blocks/attn1/to_q/bias": P(None, "tensor", None),
                "dit/blocks/ffn/fc1/kernel": P(None, "fsdp", "tensor"),
                "dit/blocks/ffn/fc2/kernel": P(None, "tensor", "fsdp"),
                "dit/blocks/ffn/fc1/bias": P(None, "tensor"),
                "dit/patch_embedding/kernel": P(None, "fsdp")}
    for path, spec in expected.items():
        assert run["specs"][path] == spec, path
    # ZeRO-3: Adam's moments are split like their parameters
    opt = jax.tree_util.tree_flatten_with_path(run["state"].opt_state)[0]
    moments = [x.sharding.spec for path, x in opt
               if "['attn1']['to_q']['kernel']" in jax.tree_util.keystr(path)]
    assert moments == [expected["dit/blocks/attn1/to_q/kernel"]] * 2       # mu and nu


def test_activations_shard_by_the_rules(recorded):
    _, seen = recorded
    expected = {   # per-sample names; the vmap over examples adds the batch axis ('fsdp')
        ("act_batch", "act_len", "act_embed"): P("fsdp", "sequence", None),
        ("act_batch", None, "act_embed"): P("fsdp"),                        # text tokens
        ("act_len", "act_heads", "act_kv"): P("fsdp", "sequence", "tensor", None),
        (None, "act_heads", "act_kv"): P("fsdp", None, "tensor", None),     # text keys
        ("act_len", "act_mlp"): P("fsdp", "sequence", "tensor"),
        ("act_len", "act_embed"): P("fsdp", "sequence", None),
    }
    assert set(seen) == set(expected)
    for names, spec in expected.items():
        assert set(seen[names]) == {_spec(spec)}, names


def test_every_dit_parameter_has_logical_axes():
    config = _config({})
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: task.build_model(config, nnx.Rngs(0)))
    unnamed = [path for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
               if not var.get_metadata().get("out_sharding")]
    assert not unnamed


def test_config_rules_override_the_defaults():
    config = _config(dict(fsdp=4, tensor=2))
    config.mesh.rules = ml_collections.ConfigDict({"embed": None, "mlp": ("fsdp", "tensor")})
    rules = mesh_lib.rules_from_config(config.mesh)
    assert dict(rules)["mlp"] == ("fsdp", "tensor") and dict(rules)["heads"] == "tensor"
    mesh = mesh_lib.make_mesh(config.mesh)
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: task.build_model(config, nnx.Rngs(0)))
    shardings = mesh_lib.tree_shardings(nnx.state(model, nnx.Param), mesh, rules)
    assert shardings["dit"]["blocks"]["ffn"]["fc1"]["kernel"].get_value().spec == P(
        None, None, ("fsdp", "tensor"))
    assert shardings["dit"]["blocks"]["attn1"]["to_q"]["kernel"].get_value().spec == P(
        None, None, "tensor", None)


@pytest.mark.parametrize("rules, match", [
    ({"hidden": "tensor"}, r"config.mesh.rules: unknown logical axis 'hidden'"),
    ({"mlp": "model"}, r"config.mesh.rules.mlp='model': 'model' is not a mesh axis"),
    ({"mlp": ("tensor", "tensor")}, "appears twice"),
    ({"act_len": "fsdp"}, r"act_len='fsdp': shares mesh axes \['fsdp'\] with act_batch"),
    ({"mlp": 3}, r"config.mesh.rules.mlp=3: expected None, a mesh axis"),
])
def test_rules_errors_name_the_entry(rules, match):
    with pytest.raises(ValueError, match=match):
        mesh_lib.rules_from_config({"data": -1, "rules": rules})


def test_vae_encode_sharded_by_batch_equals_one_device():
    vae = random_vae(TINY)
    video = np.random.default_rng(2).uniform(-1, 1, size=(8, 5, 16, 16, 3)).astype(np.float32)
    graphdef, state = nnx.split(vae)
    def encode(state, video):
        return nnx.merge(graphdef, state).encode(video).mode()

    def run(state, video):
        return np.asarray(jax.jit(encode).lower(state, video).compile(
            compiler_options=FAST_COMPILE)(state, video))

    want = run(state, video)
    mesh = mesh_lib.make_mesh(dict(data=2, fsdp=4))
    placed = jax.device_put(state, mesh_lib.tree_shardings(state, mesh))     # FSDP kernels
    with _recording_constraints() as seen, mesh_lib.mesh_context(mesh):
        got = run(placed, mesh_lib.to_global(video, mesh))
    err = np.abs(got - want).max()
    print(f"VAE encode, batch over data x fsdp, FSDP kernels, vs 1 device: {err:.1e}")
    assert err <= 1e-5
    assert len(seen[VIDEO_AXES]) >= 4
    assert set(seen[VIDEO_AXES]) == {_spec(P(("data", "fsdp")))}

"""The dit task (vidgen/train/tasks/dit.py): loss wiring against an independent composition,
caption dropout, 8 simulated devices against 1, exact kill/resume, config errors, and starting
from a diffusers folder (config.init_from)."""

import dataclasses
import json

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines import train_tokenizer
from launch.configs import dit_tiny
from vidgen.interop import wan_dit
from vidgen.models.dit import DiT, DiTConfig
from vidgen.models.text_encoder import Tokenizer
from vidgen.parallel import mesh as mesh_lib
from vidgen.train import checkpoint, loop, optim
from vidgen.train import state as state_lib
from vidgen.train.tasks import dit as task

from test_loop import KillAfter, Killed, _params   # tests/train is on sys.path (no rootdir)

LATENT = (3, 4, 4, 16)         # t, h, w, C of a 9-frame 32x32 clip
CAPTIONS = ["a red ball moves left", "a small blue square falls", "a green star grows",
            "two objects on a white background", "a large yellow triangle rotates"]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    with open(folder / "captions.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"caption": CAPTIONS[i % 5] + f" {i % 3}", "split": "train"}) + "\n")
    return train_tokenizer.train_tokenizer(str(folder / "captions.jsonl"), str(folder / "tok"),
                                           vocab_size=64, fields=("caption",))


def _config(tokenizer_path, **overrides):
    c = dit_tiny.get_config("tiny")
    c.text.tokenizer = tokenizer_path
    c.text.encoder.vocab_size = 64
    c.total_steps, c.log_every = 6, 2
    c.checkpoint.update(every_steps=3, keep=3)
    c.update_from_flattened_dict(overrides)
    return c


def _example(i: int, tokenizer: Tokenizer) -> dict:
    rng = np.random.default_rng(i)
    ids, mask = tokenizer([CAPTIONS[i % 5]])
    return {"latents": rng.normal(size=LATENT).astype(np.float32), "text_ids": ids[0],
            "text_mask": mask[0], "index": np.int32(i)}


def _dataset(tokenizer: Tokenizer, batch: int) -> grain.IterDataset:
    return (grain.MapDataset.range(1000).map(lambda i: _example(i, tokenizer)).batch(batch)
            .to_iter_dataset())


def _model(config):
    with nnx.use_eager_sharding(False):
        return task.build_model(config, nnx.Rngs(0))


def test_loss_is_the_flow_mse_of_the_dit_on_the_captions(tokenizer_path):
    config = _config(tokenizer_path, **{"flow.text_dropout": 0.0})
    model, tok = _model(config), Tokenizer(tokenizer_path, config.text.max_length)
    batch = jax.tree.map(jnp.asarray, next(iter(_dataset(tok, 2))))
    rng = jax.random.key(3)
    loss, metrics = task.loss_fn(model, batch, rng, jnp.int32(0), config)
    # The same draws, composed by hand in float64 NumPy from the model's outputs.
    rng_t, rng_n, _ = jax.random.split(rng, 3)
    from vidgen.diffusion import flow
    fcfg = flow.FlowConfig.from_dict(config.flow.to_dict())
    t = flow.sample_timesteps(rng_t, 2, 3 * 2 * 2, fcfg)
    noise = jax.random.normal(rng_n, batch["latents"].shape, jnp.float32)
    x0 = np.asarray(batch["latents"], np.float64)
    tb = np.asarray(t, np.float64)[:, None, None, None, None]
    x_t = (1 - tb) * x0 + tb * np.asarray(noise, np.float64)
    context = model.text(batch["text_ids"], batch["text_mask"])
    v = model.dit(jnp.asarray(x_t, jnp.float32), t, context, batch["text_mask"])
    want = np.mean((np.asarray(v, np.float64) - (np.asarray(noise, np.float64) - x0)) ** 2)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(metrics["text_kept"]) == 1.0


def test_caption_dropout_swaps_in_the_empty_prompt(tokenizer_path):
    config = _config(tokenizer_path, **{"flow.text_dropout": 1.0})
    model, tok = _model(config), Tokenizer(tokenizer_path, config.text.max_length)
    batch = jax.tree.map(jnp.asarray, next(iter(_dataset(tok, 2))))
    dropped, metrics = task.loss_fn(model, batch, jax.random.key(0), jnp.int32(0), config)
    empty_ids, empty_mask = tok(["", ""])
    config.flow.text_dropout = 0.0
    empty = dict(batch, text_ids=jnp.asarray(empty_ids), text_mask=jnp.asarray(empty_mask))
    want, _ = task.loss_fn(model, empty, jax.random.key(0), jnp.int32(0), config)
    assert float(metrics["text_kept"]) == 0.0
    assert float(dropped) == pytest.approx(float(want), rel=1e-6)


def _one_step(config, devices, tok):
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    tx = optim.make_optimizer(config.optim, config.total_steps)
    plan = state_lib.plan_train_state(lambda: task.build_model(config, nnx.Rngs(0)), tx, mesh)
    update = state_lib.make_train_step(plan, task.TASK, tx, optim.make_schedule(
        config.optim, config.total_steps), config, mesh)
    batch = mesh_lib.to_global(next(iter(_dataset(tok, 8))), mesh)
    init = plan.init()
    before = jax.tree.map(lambda p: np.asarray(p).copy(), init.params)
    state, metrics = update(init, batch)
    change = max(float(np.abs(np.asarray(a) - b).max())
                 for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(before)))
    assert change > 1e-4, "the step must move the parameters for the comparison to mean anything"
    return float(metrics["loss"]), state


def test_fsdp8_step_matches_one_device(tokenizer_path):
    config = _config(tokenizer_path, **{"mesh.data": 1, "mesh.fsdp": -1,
                                        "optim.warmup_steps": 0})   # a step at the peak lr
    tok = Tokenizer(tokenizer_path, config.text.max_length)
    loss8, state8 = _one_step(config, jax.devices(), tok)
    loss1, state1 = _one_step(config, jax.devices()[:1], tok)
    print(f"dit step, fsdp=8 vs 1 device: loss {abs(loss8 - loss1):.2e}")
    assert loss8 == pytest.approx(loss1, rel=1e-5)
    worst = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                for a, b in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)))
    print(f"dit step, fsdp=8 vs 1 device: max param difference {worst:.2e}")
    assert worst <= 1e-5


def test_kill_and_resume_is_bit_identical(tokenizer_path, tmp_path):
    config = _config(tokenizer_path)
    tok = Tokenizer(tokenizer_path, config.text.max_length)
    two = jax.devices()[:2]
    full = loop.train(task.TASK, config, str(tmp_path / "full"), iter(_dataset(tok, 2)),
                      devices=two)
    with pytest.raises(Killed):
        loop.train(task.TASK, config, str(tmp_path / "resumed"),
                   KillAfter(iter(_dataset(tok, 2)), 4), devices=two)
    resumed = loop.train(task.TASK, config, str(tmp_path / "resumed"), iter(_dataset(tok, 2)),
                         devices=two)
    assert full["step"] == resumed["step"] == 6
    for a, b in zip(_params(tmp_path / "full", 6), _params(tmp_path / "resumed", 6)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("key,value,match", [
    ("model.text_dim", 48, "model.text_dim=48"),
    ("text.tokenizer", "/nonexistent.model", "text.tokenizer="),
    ("text.encoder.vocab_size", 8, "text.encoder.vocab_size=8"),
    ("data.num_frames", 8, "data.num_frames=8"),
    ("model.patch_size", (1, 2), "patch_size"),
])
def test_validate_config_names_the_key(tokenizer_path, tmp_path, key, value, match):
    config = _config(tokenizer_path, **{"vae.workdir": str(tmp_path)})
    (tmp_path / "checkpoints").mkdir()
    config.update_from_flattened_dict({key: value})
    with pytest.raises(ValueError, match=match):
        task.validate_config(config)


def _random_dit(config, seed: int = 1, **changes) -> DiT:
    """A DiT of config.model (with changes) whose every parameter is random, unlike a fresh
    init (whose output layer is zero)."""
    cfg = DiTConfig.from_dict({**config.model.to_dict(), **changes})
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        var.set_value(jnp.asarray(0.1 * rng.normal(size=var.shape), var.dtype))
    return model


def _params_loss(model, batch, rng, step, config):
    """A loss that is cheap to compile: the mean square of every parameter."""
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return sum(jnp.mean(p ** 2) for p in leaves) * jnp.mean(batch["x"]), {}


def test_init_from_starts_the_dit_from_a_diffusers_folder(tokenizer_path, tmp_path):
    # The dit task's model and init_from hook; a loss over the parameters alone keeps the compile
    # small. ema_decay 1 keeps the EMA at the step-0 params, so the checkpoint shows what
    # training began with; fsdp over 2 devices makes every imported array land in its shards.
    config = _config(tokenizer_path, **{"total_steps": 1, "optim.warmup_steps": 0,
                                        "ema_decay": 1.0, "mesh.data": 1, "mesh.fsdp": -1,
                                        "text.trainable": False})
    config.model.update(hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=16, text_dim=8,
                        freq_dim=8)
    source = _random_dit(config)
    wan_dit.save_pretrained(source, tmp_path / "wan", max_shard_bytes=5_000)   # with an index
    config.init_from = str(tmp_path / "wan")
    loop.validate_config(config)
    dit_task = dataclasses.replace(task.TASK, loss_fn=_params_loss, prepare_batch=None)
    batches = grain.MapDataset.range(4).map(lambda i: {"x": np.ones(2, np.float32)}).batch(2)
    loop.train(dit_task, config, str(tmp_path / "run"), iter(batches.to_iter_dataset()),
               devices=jax.devices()[:2])
    started, _, _ = checkpoint.load_trained_model(str(tmp_path / "run" / "checkpoints"),
                                                  task.build_model)
    got = dict(nnx.to_flat_state(nnx.state(started.dit, nnx.Param)))
    for path, var in nnx.to_flat_state(nnx.state(source, nnx.Param)):
        np.testing.assert_array_equal(np.asarray(got[path].get_value()),
                                      np.asarray(var.get_value()), err_msg=str(path))


def test_init_from_a_mismatched_or_missing_folder_names_the_key(tokenizer_path, tmp_path):
    config = _config(tokenizer_path)
    wan_dit.save_pretrained(_random_dit(config, mlp_dim=32), tmp_path / "wan")
    config.init_from = str(tmp_path / "wan")
    with nnx.use_eager_sharding(False):
        model = nnx.eval_shape(lambda: task.build_model(config, nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"mlp_dim=32, but config\.model\.mlp_dim=64"):
        task.TASK.init_from(config, model)
    config.init_from = str(tmp_path / "absent")
    with pytest.raises(ValueError, match=r"config\.init_from=.*absent"):
        loop.validate_config(config)

"""The shared training loop on a toy regression task: sharding parity, exact resume, non-finite
handling and preemption (vidgen/train/loop.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from vidgen.parallel import mesh as mesh_lib
from vidgen.train import checkpoint as ckpt_lib
from vidgen.train import loop, optim
from vidgen.train import state as state_lib
from vidgen.train.tasks import Task

IN, HIDDEN, OUT, BATCH = 8, 32, 2, 8
W_TRUE = np.random.default_rng(0).normal(size=(IN, OUT)).astype(np.float32)


class MLP(nnx.Module):
    """2-layer MLP; the first kernel carries logical axis names, the rest relies on FSDP."""

    def __init__(self, rngs: nnx.Rngs):
        kernel_init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))
        self.l1 = nnx.Linear(IN, HIDDEN, kernel_init=kernel_init, rngs=rngs)
        self.l2 = nnx.Linear(HIDDEN, OUT, rngs=rngs)

    def __call__(self, x):
        return self.l2(jax.nn.gelu(self.l1(x)))


def loss_fn(model, batch, rng, step, config):
    err = model(batch["x"]) - batch["y"]
    loss = jnp.mean(err ** 2)
    return loss, {"mse": loss, "noise": jax.random.uniform(rng)}


def evaluate(model, clips, workdir, step, config):
    return {"mse": float(jnp.mean((model(clips["x"]) - clips["y"]) ** 2))}


TOY = Task(name="toy", build_model=lambda config, rngs: MLP(rngs), loss_fn=loss_fn,
           evaluate=evaluate, finalize=None, validate_config=lambda config: None)


def example(i: int, nan_from: int | None = None) -> dict:
    x = np.random.default_rng(i).normal(size=(IN,)).astype(np.float32)
    if nan_from is not None and i >= nan_from:
        x[:] = np.nan
    return {"x": x, "y": x @ W_TRUE, "index": np.int32(i)}


def dataset(nan_from: int | None = None) -> grain.IterDataset:
    """Random regression examples, batched; examples >= nan_from are all-NaN."""
    return (grain.MapDataset.range(10_000).map(lambda i: example(i, nan_from))
            .batch(BATCH).to_iter_dataset())


def make_config(**overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        task="toy", seed=0, total_steps=6, log_every=2, eval_every=100, ema_decay=0.9,
        max_nonfinite_steps=3,
        optim=dict(lr=1e-2, warmup_steps=0, end_lr_factor=0.1, b1=0.9, b2=0.99,
                   weight_decay=1e-3, grad_clip=1.0),
        mesh=dict(data=-1, fsdp=2, tensor=1, sequence=1),
        checkpoint=dict(every_steps=3, keep=3, async_save=True)))
    c.update_from_flattened_dict(overrides)
    return c


def one_step(config, devices):
    """Init + one update on the mesh over `devices`; returns (loss, new state, plan)."""
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    tx = optim.make_optimizer(config.optim, config.total_steps)
    plan = state_lib.plan_train_state(lambda: MLP(nnx.Rngs(config.seed)), tx, mesh)
    update = state_lib.make_train_step(
        plan, TOY, tx, optim.make_schedule(config.optim, config.total_steps), config, mesh)
    batch = mesh_lib.to_global(next(iter(dataset())), mesh)
    state, metrics = update(plan.init(), batch)
    return float(metrics["loss"]), state, plan


def _rstrip(spec) -> tuple:
    spec = tuple(spec)
    while spec and spec[-1] is None:
        spec = spec[:-1]
    return spec


def test_fsdp8_matches_one_device_and_shards_by_the_rules():
    config = make_config(**{"mesh.data": 1, "mesh.fsdp": -1})
    loss8, state8, plan = one_step(config, jax.devices())
    loss1, state1, _ = one_step(config, jax.devices()[:1])
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    for new8, new1 in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
        np.testing.assert_allclose(np.asarray(new8), np.asarray(new1), atol=1e-5, rtol=1e-5)
    expected = {("l1", "kernel"): ("fsdp", "tensor"),   # logical ('embed', 'mlp') by the rules
                ("l1", "bias"): ("fsdp",),              # 32: largest dim divisible by 8
                ("l2", "kernel"): ("fsdp",),            # (32, 2): dim 0
                ("l2", "bias"): ()}                     # (2,): replicated
    for path, spec in expected.items():
        param = state8.params[path[0]][path[1]]
        assert _rstrip(param.get_value().sharding.spec) == spec, path
        assert _rstrip(state8.ema[path[0]][path[1]].get_value().sharding.spec) == spec, path
        mu = state8.opt_state[1][0].mu[path[0]][path[1]]       # clip, then adamw's adam state
        assert _rstrip(mu.get_value().sharding.spec) == spec, path
    assert state8.step.sharding.is_fully_replicated


def run(workdir, config, data=None, eval_clips=None):
    it = iter(data if data is not None else dataset())
    return loop.train(TOY, config, str(workdir), it, eval_clips), it


class Killed(Exception):
    pass


class KillAfter(grain.DatasetIterator):
    """Passes batches through, then raises Killed: a crash between two steps."""

    def __init__(self, parent, batches: int):
        super().__init__(parent)
        self._left = batches

    def __next__(self):
        if self._left == 0:
            raise Killed()
        self._left -= 1
        return next(self._parent)

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


def _params(workdir, step):
    """Host copies of the params saved at `step`."""
    state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
    return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def test_kill_and_resume_is_bit_identical(tmp_path):
    config = make_config()
    eval_clips = {k: np.stack([example(50_000 + i)[k] for i in range(4)]) for k in ("x", "y")}
    full, it_full = run(tmp_path / "full", config, eval_clips=eval_clips)
    with pytest.raises(Killed):
        run(tmp_path / "resumed", config, KillAfter(iter(dataset()), 4))   # dies in step 4
    assert ckpt_lib.Checkpointer(str(tmp_path / "resumed" / "checkpoints"), every_steps=3,
                                 keep=3).latest_step() == 3
    resumed, it_resumed = run(tmp_path / "resumed", config, eval_clips=eval_clips)
    assert resumed["step"] == full["step"] == 6
    for a, b in zip(_params(tmp_path / "full", 6), _params(tmp_path / "resumed", 6)):
        np.testing.assert_array_equal(a, b)
    assert resumed["eval"] == full["eval"]
    np.testing.assert_array_equal(next(it_resumed)["index"], next(it_full)["index"])
    assert json.load(open(tmp_path / "resumed" / "result.json"))["step"] == 6
    again, _ = run(tmp_path / "resumed", config)        # finished: returns the stored result
    assert again["eval"] == full["eval"]


def test_nonfinite_step_is_skipped_and_counted():
    config = make_config(**{"mesh.data": 1, "mesh.fsdp": 1})
    mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
    tx = optim.make_optimizer(config.optim, config.total_steps)
    plan = state_lib.plan_train_state(lambda: MLP(nnx.Rngs(0)), tx, mesh)
    update = state_lib.make_train_step(plan, TOY, tx, optim.make_schedule(config.optim, 6),
                                       config, mesh)
    it = iter(dataset(nan_from=BATCH))                  # batch 0 fine, batch 1 all NaN
    state, _ = update(plan.init(), mesh_lib.to_global(next(it), mesh))
    before = jax.device_get(state)
    state, metrics = update(state, mesh_lib.to_global(next(it), mesh))
    after = jax.device_get(state)
    assert not bool(metrics["finite"]) and np.isnan(float(metrics["loss"]))
    for field in ("params", "opt_state", "ema"):
        for a, b in zip(jax.tree.leaves(getattr(before, field)),
                        jax.tree.leaves(getattr(after, field))):
            np.testing.assert_array_equal(a, b)
    assert (int(after.step), int(after.nonfinite_run), int(after.nonfinite_total)) == (2, 1, 1)


def test_consecutive_nonfinite_steps_stop_with_clear_error(tmp_path):
    config = make_config(**{"max_nonfinite_steps": 2, "checkpoint.every_steps": 2})
    with pytest.raises(FloatingPointError, match="2 consecutive non-finite steps"):
        run(tmp_path, config, dataset(nan_from=2 * BATCH))       # steps 3, 4, ... are NaN
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), every_steps=2, keep=3)
    assert ckpt.all_steps() == [2]                  # raised at step 4, before saving it
    ckpt.close()
    assert all(np.isfinite(p).all() for p in _params(tmp_path, 2))


SIGTERM_SCRIPT = """
import json, os, sys
sys.path.insert(0, {here!r})
import test_loop
config = test_loop.make_config(**{{"total_steps": 100000, "log_every": 1000,
                                  "checkpoint.every_steps": 5, "checkpoint.keep": 2,
                                  "mesh.fsdp": 1}})
result, _ = test_loop.run({workdir!r}, config, test_loop.dataset())
print("RESULT", json.dumps(result))
"""


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SIGTERM_SCRIPT.format(here=os.path.dirname(__file__),
                                            workdir=str(tmp_path / "w")))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while (proc.poll() is None and not (tmp_path / "w" / "checkpoints" / "5").exists()
               and time.time() < deadline):
            time.sleep(0.1)                             # in the loop once step 5 is saved
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()                                     # SIGKILL: JAX may swallow SIGTERM
        proc.communicate()
        pytest.fail("training subprocess did not stop after SIGTERM")
    assert proc.returncode == 0, out[-3000:]
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    assert result["preempted"] and 5 <= result["step"] < 100000
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / "w" / "checkpoints"), every_steps=1, keep=1)
    assert ckpt.latest_step() == result["step"]
    ckpt.close()


TINY_CONFIG = '''
import ml_collections
def get_config(arg=None):
    return ml_collections.ConfigDict(dict(
        task=arg or "vae", seed=0, total_steps=2, log_every=1, eval_every=2, ema_decay=0.9,
        max_nonfinite_steps=3,
        optim=dict(lr=1e-3, warmup_steps=0, end_lr_factor=0.1, b1=0.9, b2=0.99,
                   weight_decay=0.0, grad_clip=1.0)))
'''


@pytest.mark.parametrize("args, message", [
    (["--config.optim.lrr=1"], "unknown config key 'lrr' in --config.optim.lrr"),
    (["--config.optim=1"], "--config.optim=1"),
])
def test_launch_rejects_bad_overrides_naming_them(tmp_path, args, message):
    (tmp_path / "cfg.py").write_text(TINY_CONFIG)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", f"--config={tmp_path / 'cfg.py'}",
         f"--workdir={tmp_path / 'w'}", *args],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "w").exists()


def test_launch_names_unknown_task():
    from launch import train as launch_train
    with pytest.raises(ValueError, match=r"config.task='nope': unknown task.*'vae'"):
        launch_train.get_task("nope")

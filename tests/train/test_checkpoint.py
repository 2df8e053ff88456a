"""Checkpoints (vidgen/train/checkpoint.py): sharded state + grain iterator + JSON round trip,
the save cadence, a process killed mid-save, and the SIGTERM guard."""

import json
import os
import signal
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vidgen.parallel import mesh as mesh_lib
from vidgen.train import checkpoint as ckpt_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def data_iter():
    return iter(grain.MapDataset.range(100).seed(1).shuffle().batch(4).to_iter_dataset())


def sharded_state(offset: float):
    mesh = mesh_lib.make_mesh({"fsdp": -1})
    w = jax.device_put(jnp.arange(64.0).reshape(8, 8) + offset, NamedSharding(mesh, P("fsdp")))
    return {"w": w, "step": jnp.int32(offset)}


def test_round_trip_restores_arrays_shardings_iterator_and_meta(tmp_path):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), every_steps=2, keep=2)
    it = data_iter()
    for step in range(1, 7):
        next(it)
        saved = ckpt.save(step, sharded_state(step), it, {"step": step, "stats": [1.5, 2.5]})
        assert saved == (step % 2 == 0)
    assert ckpt.save(7, sharded_state(7), it, {"step": 7, "stats": [1.5, 2.5]}, force=True)
    ckpt.close()
    expected_next = next(it)

    ckpt = ckpt_lib.Checkpointer(str(tmp_path), every_steps=2, keep=2)
    assert ckpt.all_steps() == [6, 7] and ckpt.latest_step() == 7      # keep=2
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            sharded_state(0))
    fresh = data_iter()
    state, meta = ckpt.restore(7, abstract, fresh)
    ckpt.close()
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(sharded_state(7)["w"]))
    assert state["w"].sharding == abstract["w"].sharding
    assert meta == {"step": 7, "stats": [1.5, 2.5]}
    np.testing.assert_array_equal(next(fresh), expected_next)


def test_restore_on_a_different_process_count_takes_process_0s_iterator_state(tmp_path):
    """A checkpoint written by 2 processes restores on 1: the iterator gets process 0's state
    (process 1's, different on purpose, is ignored)."""
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=1)
    it = data_iter()
    next(it)
    ckpt.save(1, sharded_state(1), it, {})
    ckpt.close()
    expected_next = next(it)
    data_dir = tmp_path / "1" / "data"
    os.rename(data_dir / "process_0-of-1.json", data_dir / "process_0-of-2.json")
    other = data_iter()
    for _ in range(5):
        next(other)
    (data_dir / "process_1-of-2.json").write_text(json.dumps(other.get_state()))

    ckpt = ckpt_lib.Checkpointer(str(tmp_path), every_steps=1, keep=1)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            sharded_state(0))
    fresh = data_iter()
    ckpt.restore(1, abstract, fresh)
    ckpt.close()
    np.testing.assert_array_equal(next(fresh), expected_next)


KILL_SCRIPT = """
import os, signal
import grain, jax.numpy as jnp
from vidgen.train import checkpoint as ckpt_lib
ckpt = ckpt_lib.Checkpointer({directory!r}, every_steps=1, keep=3)
it = iter(grain.MapDataset.range(100).batch(2).to_iter_dataset())
next(it)
ckpt.save(1, {{"w": jnp.arange(1000.0)}}, it, {{"step": 1}})
ckpt.wait()
write_iterator_state = grain.checkpoint.CheckpointHandler.save
def save_then_die(self, directory, item=None, args=None):
    write_iterator_state(self, directory, item, args)
    os.kill(os.getpid(), signal.SIGKILL)     # mid-save: the other items are not committed
grain.checkpoint.CheckpointHandler.save = save_then_die
next(it)
ckpt.save(2, {{"w": jnp.arange(1000.0) + 1}}, it, {{"step": 2}})
ckpt.wait()
print("survived")
"""


def test_kill_during_save_keeps_last_good_checkpoint(tmp_path):
    directory = str(tmp_path / "ckpt")
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(directory=directory))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
           "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:          # subprocess.run SIGKILLs it on timeout
        pytest.fail("checkpoint subprocess hung")
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
    leftovers = [n for n in os.listdir(directory) if n.startswith("2.")]
    assert leftovers and all("orbax-checkpoint-tmp" in n for n in leftovers)

    ckpt = ckpt_lib.Checkpointer(directory, every_steps=1, keep=3)
    assert ckpt.latest_step() == 1
    abstract = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32,
                                          sharding=jax.sharding.SingleDeviceSharding(
                                              jax.devices()[0]))}
    it = iter(grain.MapDataset.range(100).batch(2).to_iter_dataset())
    state, meta = ckpt.restore(1, abstract, it)
    ckpt.close()
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(1000.0))
    assert meta == {"step": 1}
    np.testing.assert_array_equal(next(it), [2, 3])
    assert not any(n.startswith("2.") for n in os.listdir(directory))   # cleaned on open


def test_preemption_guard_turns_sigterm_into_a_flag():
    before = signal.getsignal(signal.SIGTERM)
    with ckpt_lib.PreemptionGuard() as guard:
        assert not guard.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested
    assert signal.getsignal(signal.SIGTERM) is before


def test_bad_settings_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="config.checkpoint.every_steps=0"):
        ckpt_lib.Checkpointer(str(tmp_path), every_steps=0, keep=1)

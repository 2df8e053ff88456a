"""Multi-host training (vidgen/parallel/distributed.py, the loop, orbax): two processes on
localhost (one CPU device each, gloo collectives) train the tiny dit config with ZeRO-3 FSDP
across them, are stopped after the step-2 checkpoint and resume from it; the final loss,
parameters and EMA equal one process with two devices. Plus the start-up settings' rules."""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from vidgen.parallel import distributed

# As test_sharding.FAST_COMPILE: LLVM -O0 and the older fusion emitters compile ~4x faster.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "parallel", "multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(workdir) -> list[str]:
    """Runs the two host processes and the reference process at once, to the end; returns their
    logs. Hung processes ignore SIGTERM (JAX catches it): a timeout kills them with SIGKILL."""
    port = str(_free_port())
    runs = [(["host", port, str(i), str(workdir / "hosts")], 1) for i in range(2)]
    runs.append((["single", str(workdir / "one")], 2))
    logs = [workdir / f"log{i}.txt" for i in range(len(runs))]
    procs = []
    for (args, devices), log in zip(runs, logs):
        flags = f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
        with open(log, "w") as out:        # files, not pipes: a full pipe would block a process
            procs.append(subprocess.Popen(
                [sys.executable, WORKER, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, XLA_FLAGS=flags)))
    try:
        for p in procs:
            p.wait(timeout=600)
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    texts = [log.read_text() for log in logs]
    for p, text in zip(procs, texts):
        assert p.returncode == 0, text[-3000:]
    return texts


def _saved(workdir, step: int) -> dict:
    """Host copies of params and EMA of the checkpoint at `step` (restored onto one device,
    whatever devices wrote it)."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                          checkpointer.metadata(path).item_metadata.tree)
    state = checkpointer.restore(path, target)
    return {k: [np.asarray(x) for x in jax.tree.leaves(state[k])] for k in ("params", "ema")}


def _result(workdir) -> dict:
    with open(os.path.join(workdir, "result.json")) as f:
        return json.load(f)


def test_two_processes_match_one_process_with_two_devices(tmp_path):
    errs = _run(tmp_path)
    got, want = _result(tmp_path / "hosts"), _result(tmp_path / "one")
    loss_err = abs(got["extras"]["loss"] - want["extras"]["loss"])
    saved, reference = _saved(tmp_path / "hosts", 4), _saved(tmp_path / "one", 4)
    param_err = max(float(np.abs(a - b).max()) for k in saved
                    for a, b in zip(saved[k], reference[k]))
    print(f"2 processes x 1 device (stopped and resumed) vs 1 process x 2 devices: loss "
          f"{loss_err:.1e}, params and EMA {param_err:.1e}")
    assert got["step"] == want["step"] == 4 and loss_err <= 1e-5 * abs(want["extras"]["loss"])
    assert param_err <= 1e-5
    assert "checkpoint: restored step 2" in errs[0]       # the second run did resume
    assert "worker 0 finished at step 4" in errs[0] and "finished" not in errs[1]


def test_start_up_settings():
    assert not distributed.initialize(env={})                   # one process: nothing to start
    assert not distributed.initialize(mode="off", env={"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})
    assert distributed.cluster_detected({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "4"})
    assert distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2"})
    assert not distributed.cluster_detected({"TPU_WORKER_HOSTNAMES": "localhost"})
    with pytest.raises(ValueError, match="go together"):
        distributed.initialize("localhost:1234", None, 0)
    with pytest.raises(ValueError, match=r"process_id=2: must be in \[0, num_processes=2\)"):
        distributed.initialize("localhost:1234", 2, 2)
    with pytest.raises(ValueError, match="distributed mode 'maybe'"):
        distributed.initialize(mode="maybe")

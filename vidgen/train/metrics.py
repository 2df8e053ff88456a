"""Training telemetry: TensorBoard scalars, the progress line, and compile counting.

Everything is written and logged by process 0 only; other processes get no-op writers, so the
loop calls these unconditionally.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax import monitoring

log = logging.getLogger(__name__)
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def is_chief() -> bool:
    """Whether this process writes logs, TensorBoard events and result files."""
    return jax.process_index() == 0


class ScalarWriter:
    """TensorBoard scalars under {logdir} (tensorboardX), process 0 only."""

    def __init__(self, logdir: str):
        self._writer = None
        if is_chief():
            from tensorboardX import SummaryWriter   # heavy import, only where it is used
            os.makedirs(logdir, exist_ok=True)
            self._writer = SummaryWriter(logdir)

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        """Writes each scalar as {prefix}{name} at step."""
        if self._writer is None:
            return
        for name, value in scalars.items():
            self._writer.add_scalar(prefix + name, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def summarize(window: Sequence[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """Means of per-step metrics over the steps whose update was applied (finite ones);
    `skipped` counts the others. Counters such as nonfinite_total keep their last value."""
    kept = [m for m in window if bool(m["finite"])]
    out = {"skipped": float(len(window) - len(kept))}
    for name in window[-1]:
        if name in ("finite", "nonfinite_run", "nonfinite_total"):
            continue
        values = [float(m[name]) for m in kept if np.ndim(m[name]) == 0]
        if values:
            out[name] = float(np.mean(values))
    out["nonfinite_total"] = float(window[-1]["nonfinite_total"])
    return out


class Throughput:
    """Steps/s, clips/s and ETA over the window since the last report."""

    def __init__(self, total_steps: int, global_batch: int):
        self.total_steps, self.global_batch = total_steps, global_batch
        self._step, self._time = None, None

    def start(self, step: int) -> None:
        """Starts timing at `step` (call after the first, compiling, step has finished)."""
        self._step, self._time = step, time.perf_counter()

    def report(self, step: int) -> dict[str, float]:
        """steps_per_s, clips_per_s, step_time_s and eta_s since the last report (or start)."""
        if self._time is None or step <= self._step:
            return {}
        now = time.perf_counter()
        steps_per_s = (step - self._step) / max(now - self._time, 1e-9)
        self._step, self._time = step, now
        return {"steps_per_s": steps_per_s, "clips_per_s": steps_per_s * self.global_batch,
                "step_time_s": 1.0 / steps_per_s,
                "eta_s": (self.total_steps - step) / steps_per_s}


def progress_line(step: int, total_steps: int, scalars: Mapping[str, float]) -> str:
    """'step 120/3000 (4%) | loss 0.1234 | 3.10 steps/s | 24.8 clips/s | ETA 0:15:29'."""
    parts = [f"step {step}/{total_steps} ({100 * step // max(total_steps, 1)}%)"]
    if "loss" in scalars:
        parts.append(f"loss {scalars['loss']:.4g}")
    if "steps_per_s" in scalars:
        parts += [f"{scalars['steps_per_s']:.2f} steps/s", f"{scalars['clips_per_s']:.1f} clips/s"]
        eta = scalars["eta_s"]
        parts.append("ETA " + (str(datetime.timedelta(seconds=round(eta)))
                               if math.isfinite(eta) else "?"))
    if scalars.get("skipped"):
        parts.append(f"{int(scalars['skipped'])} non-finite steps skipped")
    return " | ".join(parts)


class CompileCounter:
    """Counts (and logs, on process 0) every XLA compilation while active: a steady-state
    loop should compile its step once per input shape, so a growing count is a bug signal."""

    def __init__(self):
        self.count = 0

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event != _BACKEND_COMPILE_EVENT:
            return
        self.count += 1
        if is_chief():
            log.info("compiled %s in %.1fs (compilation #%d)", kwargs.get("fun_name", "?"),
                     duration, self.count)

    def __enter__(self) -> CompileCounter:
        monitoring.register_event_duration_secs_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        monitoring.unregister_event_duration_listener(self._on_event)

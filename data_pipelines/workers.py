"""A process pool that survives its items: per-item timeouts, crashed workers replaced.

For work on untrusted files (probing and decoding videos), where one file can hang or crash
FFmpeg: `run_with_timeouts` applies a function to every item in worker processes and reports
each item's outcome instead of failing the run. Workers start with forkserver, so callers need
an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing import connection
from typing import Any

# forkserver: workers start from a clean server process, never a fork of a threaded parent.
_CONTEXT = multiprocessing.get_context("forkserver")


def _serve(fn: Callable[[Any], Any], conn: connection.Connection) -> None:
    """A worker's loop: says it is ready (None), then applies `fn` to each (index, item) received
    and sends back (index, status, value)."""
    conn.send(None)
    while (task := conn.recv()) is not None:
        index, item = task
        try:
            conn.send((index, "ok", fn(item)))
        except Exception as e:  # pylint: disable=broad-except  # reported with its item
            conn.send((index, "error", f"{type(e).__name__}: {e}"))


@dataclasses.dataclass
class _Worker:
    process: multiprocessing.Process
    conn: connection.Connection
    ready: bool = False  # started up: its clock runs only from here
    task: int | None = None
    started: float = 0.0

    @classmethod
    def start(cls, fn: Callable[[Any], Any]) -> _Worker:
        parent, child = _CONTEXT.Pipe()
        process = _CONTEXT.Process(target=_serve, args=(fn, child), daemon=True)
        process.start()
        child.close()  # so that the worker's death reads as EOF here
        return cls(process, parent)

    def stop(self, kill: bool = False) -> str:
        """Ends the worker (at once if `kill`); returns how it ended."""
        if not kill:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(timeout=0 if kill else 5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        return f"worker exit code {self.process.exitcode}"


def run_with_timeouts(fn: Callable[[Any], Any], items: Sequence[Any], *, workers: int,
                      timeout_s: float | None) -> Iterator[tuple[int, str, Any]]:
    """Applies `fn` to every item in `workers` processes; yields (index, status, value) as each
    finishes: "ok" (value: fn's result), "error" (value: the exception), "crashed" (the worker
    died) or "timeout" (no result within `timeout_s`; the worker is killed). A dead or killed
    worker is replaced, so one bad item never stops the others. `fn` must be picklable."""
    pending = collections.deque(enumerate(items))
    pool = [_Worker.start(fn) for _ in range(min(max(workers, 1), len(pending)))]
    try:
        while pending or any(w.task is not None for w in pool):
            for w in pool:
                if w.ready and w.task is None and pending:
                    w.task, item = pending.popleft()
                    w.started = time.monotonic()
                    w.conn.send((w.task, item))
            busy = [w.started for w in pool if w.task is not None]
            wait_s = None if timeout_s is None or not busy else max(
                0.0, min(busy) + timeout_s - time.monotonic())
            ready = connection.wait([w.conn for w in pool], wait_s)
            for i, w in enumerate(pool):
                if w.conn in ready:
                    try:
                        message = w.conn.recv()
                    except (EOFError, OSError):  # the worker died
                        if not w.ready:
                            raise RuntimeError(f"a worker failed to start: {w.stop()}") from None
                        pool[i], detail = _Worker.start(fn), w.stop()
                        message = None if w.task is None else (w.task, "crashed", detail)
                    if message is None:
                        w.ready = True
                        continue
                    w.task = None
                    yield message
                elif (w.task is not None and timeout_s is not None
                      and time.monotonic() - w.started >= timeout_s):
                    w.stop(kill=True)
                    pool[i] = _Worker.start(fn)
                    yield w.task, "timeout", f"no result after {timeout_s:g} s"
    finally:
        for w in pool:
            w.stop()

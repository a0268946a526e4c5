"""Worker pools that turn ItemTasks into ItemResults.

:class:`ProcessPool` isolates untrusted decoding: each task runs in a child process with a
per-item time limit and a memory cap. A hang, an out-of-memory or a native crash (SIGSEGV)
becomes that item's error row (``timeout``, ``oom``, ``crash``, with the signal); the child
is replaced and the run goes on. Children are plain subprocesses (not multiprocessing), so
the pool also works inside daemonic processes such as Dask workers.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from datapipe.engine.runner import ItemResult, ItemRunner, ItemTask
from datapipe.graph import Pipeline

logger = logging.getLogger(__name__)

RETRYABLE = ("timeout", "crash", "oom")
_START_TIMEOUT_S = 120.0
_MAX_START_FAILURES = 3


class InlinePool:
    """Runs tasks in this process: no isolation, no overhead. For trusted stages only."""

    def __init__(
        self, pipeline: Pipeline, fitted: dict[str, Any] | None = None, epoch: int = 0
    ) -> None:
        self.runner = ItemRunner(pipeline, fitted, epoch)

    def imap_unordered(self, tasks: Iterable[ItemTask]) -> Iterator[ItemResult]:
        for task in tasks:
            yield self.runner.run(task)

    def close(self) -> None:
        pass

    def __enter__(self) -> InlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Child:
    proc: subprocess.Popen[bytes]
    tasks: Connection
    results: Connection
    #: tasks sent and not answered yet; the child works on the first, the next waits in its pipe
    inflight: deque[ItemTask] = field(default_factory=deque)
    deadline: float = 0.0
    ready: bool = False

    @property
    def task(self) -> ItemTask | None:
        return self.inflight[0] if self.inflight else None


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


class ProcessPool:
    """N child processes, each running one task at a time under a time limit and memory cap.

    Each child gets its next task before it finishes the current one (``prefetch``), so it
    never waits on the parent; the time limit of a task starts when the child starts it.
    """

    prefetch = 2

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        workers: int = 1,
        timeout_s: float = 120.0,
        memory_mb: int = 4096,
        retries: int = 0,
        fitted: dict[str, Any] | None = None,
        epoch: int = 0,
    ) -> None:
        self.payload = (pipeline, dict(fitted or {}), epoch)
        self.n = max(1, workers)
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.retries = retries
        self.children: list[_Child] = []
        self.replaced = 0
        self._start_failures = 0

    # -- children ---------------------------------------------------------------------------
    def _spawn(self) -> _Child:
        task_r, task_w = os.pipe()
        res_r, res_w = os.pipe()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "datapipe.engine.worker",
                str(task_r),
                str(res_w),
                str(self.memory_mb),
            ],
            pass_fds=(task_r, res_w),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        os.close(task_r)
        os.close(res_w)
        child = _Child(proc, Connection(task_w, readable=False), Connection(res_r, writable=False))
        child.tasks.send(self.payload)
        child.deadline = time.monotonic() + _START_TIMEOUT_S
        return child

    def _retire(self, child: _Child, kill: bool) -> None:
        if kill and child.proc.poll() is None:
            child.proc.kill()
        for conn in (child.tasks, child.results):
            conn.close()
        child.proc.wait()

    def close(self) -> None:
        for child in self.children:
            try:
                child.tasks.send(None)
            except OSError:
                pass
        for child in self.children:
            try:
                child.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.proc.kill()
            self._retire(child, kill=True)
        self.children = []

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scheduling -------------------------------------------------------------------------
    def imap_unordered(self, tasks: Iterable[ItemTask]) -> Iterator[ItemResult]:
        """Yield one result per task, in completion order."""
        pending = iter(tasks)
        retry: deque[ItemTask] = deque()
        exhausted = False
        if not self.children:
            self.children = [self._spawn() for _ in range(self.n)]
        while True:
            for child in self.children:  # hand out work
                while child.ready and len(child.inflight) < self.prefetch:
                    task = retry.popleft() if retry else None
                    if task is None and not exhausted:
                        task = next(pending, None)
                        exhausted = task is None
                    if task is None:
                        break
                    if not child.inflight:
                        child.deadline = time.monotonic() + self.timeout_s
                    child.inflight.append(task)
                    child.tasks.send(task)
            busy = [c for c in self.children if c.inflight or not c.ready]
            if exhausted and not retry and not any(c.inflight for c in self.children):
                return
            timeout = max(0.0, min(c.deadline for c in busy) - time.monotonic()) if busy else None
            readable = wait([c.results for c in busy], timeout=timeout)
            now = time.monotonic()
            for i, child in enumerate(list(self.children)):
                if child.results in readable:
                    try:
                        msg = child.results.recv()
                    except (EOFError, OSError):
                        result = self._died(child)
                    else:
                        if isinstance(msg, tuple) and msg and msg[0] == "ready":
                            child.ready = True
                        else:
                            child.inflight.popleft()
                            child.deadline = now + self.timeout_s  # it starts the next one
                            yield msg
                        continue
                elif now >= child.deadline and (child.inflight or not child.ready):
                    result = self._timed_out(child)
                else:
                    continue
                # the child is gone: replace it, report or retry its task, requeue the rest
                task = child.task
                waiting = list(child.inflight)[1:]
                self._retire(child, kill=True)
                self.children[i] = self._spawn()
                self.replaced += 1
                retry.extendleft(reversed(waiting))
                if task is None:  # it died or hung before it was ready
                    self._start_failures += 1
                    if self._start_failures >= _MAX_START_FAILURES:
                        raise RuntimeError(f"datapipe workers fail to start: {result.message}")
                    continue
                if result.error_class in RETRYABLE and task.attempt <= self.retries:
                    task.attempt += 1
                    retry.append(task)
                    continue
                result.key, result.attempt = task.key, task.attempt
                yield result

    def _died(self, child: _Child) -> ItemResult:
        rc = child.proc.wait()
        key = child.task.key if child.task else ""
        if rc < 0:
            sig = _signal_name(rc)
            if -rc == signal.SIGKILL:
                return ItemResult.error(
                    key,
                    None,
                    "oom",
                    f"worker killed by {sig} (the system ran out of memory?)",
                    "WorkerKilled",
                    signal=sig,
                )
            return ItemResult.error(
                key, None, "crash", f"worker crashed with {sig}", "WorkerCrashed", signal=sig
            )
        return ItemResult.error(
            key, None, "crash", f"worker exited with status {rc}", "WorkerExited"
        )

    def _timed_out(self, child: _Child) -> ItemResult:
        key = child.task.key if child.task else ""
        limit = self.timeout_s if child.task else _START_TIMEOUT_S
        return ItemResult.error(
            key,
            None,
            "timeout",
            f"no result after {limit:g} s; worker killed",
            "Timeout",
            signal="SIGKILL",
        )

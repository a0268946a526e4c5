"""Worker pools that turn ItemTasks into ItemResults.

:class:`ProcessPool` isolates untrusted decoding: each task runs in a child process with a
per-item time limit and a memory cap. A hang, an out-of-memory or a native crash (SIGSEGV)
becomes that item's error row (``timeout``, ``oom``, ``crash``, with the signal); so does a
child that breaks the result protocol (``crash``, ``WorkerProtocolError``): results cross as
data only (:mod:`datapipe.engine.wire`), never as pickles. The child is replaced and the run
goes on. Children are plain subprocesses (not multiprocessing), so
the pool also works inside daemonic processes such as Dask workers.

:func:`make_pool` picks one by :class:`PoolSettings` (the pipeline's ``run:`` section with the
caller's overrides); the local executor and ``datapipe.stream.from_pipeline`` both use it.
"""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from datapipe.engine.channel import PIPE_BYTES, Inbox, Outbox, frame, grow_pipe
from datapipe.engine.runner import ItemResult, ItemRunner, ItemTask
from datapipe.engine.wire import Ready, WireError, decode
from datapipe.graph import Pipeline
from datapipe.keys import item_key_of

logger = logging.getLogger(__name__)

RETRYABLE = ("timeout", "crash", "oom")
_START_TIMEOUT_S = 120.0
_MAX_START_FAILURES = 3
#: how long a child whose result pipe closed may take to exit before it is killed
_EXIT_GRACE_S = 5.0
#: result bytes read from one child per poll, so one cannot starve the others' deadlines
_READ_BUDGET = 16 << 20
#: tasks handed to a child at once are joined into one write up to this size (each write
#: wakes the child: one per task costs a context switch per item on a busy machine)
_COALESCE = 1 << 16


@dataclass
class PoolSettings:
    """How items run: worker processes (0: inline unless a stage needs isolation), the
    per-item time limit and memory cap, retries of crashed items, and the epoch."""

    workers: int = 0
    timeout_s: float = 120.0
    memory_mb: int = 4096
    retries: int = 0
    epoch: int = 0

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline, **overrides: Any) -> PoolSettings:
        """The pipeline's ``run:`` section; ``overrides`` that are not None win."""
        r = pipeline.run
        base = {
            "workers": r.workers,
            "timeout_s": r.timeout_s,
            "memory_mb": r.memory_mb,
            "retries": r.retries,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def make_pool(
    settings: PoolSettings, pipeline: Pipeline, fitted: dict[str, Any]
) -> InlinePool | ProcessPool:
    """Inline when nothing needs isolation and no workers were asked for; else child processes."""
    isolate = any(n.stage.isolate for n in pipeline.nodes)
    if settings.workers == 0 and not isolate:
        return InlinePool(pipeline, fitted, settings.epoch)
    return ProcessPool(
        pipeline,
        workers=max(1, settings.workers),
        timeout_s=settings.timeout_s,
        memory_mb=settings.memory_mb,
        retries=settings.retries,
        fitted=fitted,
        epoch=settings.epoch,
    )


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
    #: tasks for the child, written as its pipe drains
    outbox: Outbox
    #: the child's messages, read as they come
    inbox: Inbox
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

    Each child gets its next tasks before it finishes the current one, so it never waits on
    the parent: up to ``prefetch`` while items are quick (joined into one write, which wakes
    the child once for many items), ``slow_prefetch`` while they are slow or not yet timed
    (a long queue on one child would idle the others at the end of the run). The time limit
    of a task starts when the child starts it; a replaced child's queued tasks are requeued.
    The parent never blocks on a pipe: tasks are written and results read without blocking
    (a child sending a large result while the parent sends it a large task cannot deadlock;
    a child that stalls mid-message runs into its time limit). Results cross as data only
    (:mod:`datapipe.engine.wire`, never unpickled); a malformed one is a ``crash`` row and
    the child is replaced.
    """

    #: tasks queued per child: many for quick items (fewer wake-ups per item), two for slow
    #: ones (a long queue on one child would leave the others idle at the end of the run)
    prefetch = 16
    slow_prefetch = 2
    #: items taking longer than this (a running mean of the results' times) are slow
    slow_item_s = 0.01

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
        self._payload_frame: list[memoryview] | None = None
        # a child builds each message in memory under its cap, so none can be larger
        self._max_message = (memory_mb + 16) * 2**20 if memory_mb > 0 else None
        self._scratch = bytearray(PIPE_BYTES)
        self._item_s: float | None = None  # running mean of the items' times (None: unknown)

    # -- children ---------------------------------------------------------------------------
    def _spawn(self) -> _Child:
        task_r, task_w = os.pipe()
        res_r, res_w = os.pipe()
        grow_pipe(task_w)
        grow_pipe(res_r)
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
        os.set_blocking(task_w, False)  # the child's ends stay blocking
        os.set_blocking(res_r, False)
        child = _Child(proc, Outbox(task_w), Inbox(res_r, self._scratch, self._max_message))
        if self._payload_frame is None:
            self._payload_frame = frame(self.payload)
        child.outbox.put(self._payload_frame)
        child.deadline = time.monotonic() + _START_TIMEOUT_S
        return child

    def _retire(self, child: _Child, kill: bool) -> None:
        if kill and child.proc.poll() is None:
            child.proc.kill()
        for fd in (child.outbox.fd, child.inbox.fd):
            os.close(fd)
        child.proc.wait()

    def close(self) -> None:
        """Stop idle children (kill busy ones: their work is abandoned)."""
        for child in self.children:
            if not child.inflight and not child.outbox:
                child.outbox.put(frame(None))
        for child in self.children:
            if child.inflight or child.outbox:
                child.proc.kill()
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

    # -- pipes --------------------------------------------------------------------------------
    def _poll(self, busy: list[_Child], timeout: float | None) -> None:
        poller = select.poll()
        readers = {c.inbox.fd: c for c in busy}
        writers = {c.outbox.fd: c for c in busy if c.outbox}
        for fd in readers:
            poller.register(fd, select.POLLIN)
        for fd in writers:
            poller.register(fd, select.POLLOUT)
        ms = None if timeout is None else math.ceil(timeout * 1000)
        for fd, _events in poller.poll(ms):
            if fd in writers:
                writers[fd].outbox.flush()
            if fd in readers:
                readers[fd].inbox.read(_READ_BUDGET)

    def _check(self, child: _Child, msg: Ready | ItemResult) -> Ready | ItemResult:
        """A message that fits where the child is: one ready, then answers to its tasks."""
        if isinstance(msg, Ready):
            if child.ready:
                raise WireError("a second ready message")
            return msg
        task = child.task
        if task is None:
            raise WireError(f"a result for {msg.key!r} with no task sent")
        if msg.key != task.key:
            raise WireError(f"a result for {msg.key!r} while working on {task.key!r}")
        for sample_key in [k for k, _ in msg.samples] + [k for k, _ in msg.records]:
            if item_key_of(sample_key) != task.key:
                raise WireError(f"sample {sample_key!r} is not one of item {task.key!r}")
        return msg

    # -- scheduling -------------------------------------------------------------------------
    def _depth(self) -> int:
        """How many tasks a child may hold: ``prefetch`` once items are known to be quick."""
        quick = self._item_s is not None and self._item_s < self.slow_item_s
        return self.prefetch if quick else self.slow_prefetch

    def _can_wait(self, busy: list[_Child]) -> bool:
        """Whether every child has quick work queued for a while: the parent may then sleep
        and take many results in one wake-up (one per result costs each side a context
        switch on a busy machine)."""
        if self._item_s is None or self._item_s >= self.slow_item_s:
            return False
        return all(c.ready and len(c.inflight) >= self.prefetch // 2 for c in busy)

    def _batch_wait_s(self) -> float:
        """A quarter of the work queued in a child, at most 2 ms."""
        return min(0.002, (self._item_s or 0.0) * self.prefetch / 4)

    def imap_unordered(self, tasks: Iterable[ItemTask]) -> Iterator[ItemResult]:
        """Yield one result per task, in completion order."""
        pending = iter(tasks)
        retry: deque[ItemTask] = deque()
        exhausted = False
        while len(self.children) < self.n:
            self.children.append(self._spawn())
        try:
            while True:
                for child in self.children:  # hand out work, one write per child
                    frames: list[memoryview] = []
                    while child.ready and len(child.inflight) < self._depth():
                        task = retry.popleft() if retry else None
                        if task is None and not exhausted:
                            task = next(pending, None)
                            exhausted = task is None
                        if task is None:
                            break
                        if not child.inflight:
                            child.deadline = time.monotonic() + self.timeout_s
                        child.inflight.append(task)
                        frames += frame(task)
                    if sum(len(f) for f in frames) <= _COALESCE:  # small tasks: one write
                        frames = [memoryview(b"".join(frames))] if frames else []
                    if frames:
                        child.outbox.put(frames)
                busy = [c for c in self.children if c.inflight or not c.ready]
                if exhausted and not retry and not any(c.inflight for c in self.children):
                    return
                timeout = (
                    max(0.0, min(c.deadline for c in busy) - time.monotonic()) if busy else None
                )
                if self._can_wait(busy):
                    time.sleep(self._batch_wait_s())
                self._poll(busy, timeout)
                now = time.monotonic()
                for i, child in enumerate(list(self.children)):
                    try:
                        while child.inbox.messages:
                            msg = self._check(child, decode(child.inbox.messages.popleft()))
                            if isinstance(msg, Ready):
                                child.ready = True
                                continue
                            child.inflight.popleft()
                            child.deadline = now + self.timeout_s  # it starts the next one
                            mean = msg.elapsed_s if self._item_s is None else self._item_s
                            self._item_s = mean + 0.1 * (msg.elapsed_s - mean)
                            yield msg
                        if child.inbox.error:
                            raise WireError(child.inbox.error)
                    except WireError as exc:
                        result = self._malformed(child, exc)
                    else:
                        if child.inbox.eof:
                            result = self._died(child)
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
        finally:  # abandoned mid-run: children still busy would answer the next run
            for child in [c for c in self.children if c.inflight or c.outbox]:
                self._retire(child, kill=True)
                self.children.remove(child)

    def _malformed(self, child: _Child, exc: WireError) -> ItemResult:
        key = child.task.key if child.task else ""
        logger.warning("worker %s broke the result protocol: %s", child.proc.pid, exc)
        return ItemResult.error(
            key,
            None,
            "crash",
            f"worker sent a malformed message ({exc}); worker killed",
            "WorkerProtocolError",
        )

    def _died(self, child: _Child) -> ItemResult:
        key = child.task.key if child.task else ""
        try:
            rc = child.proc.wait(timeout=_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:  # it closed its result pipe and lives on
            return ItemResult.error(
                key, None, "crash", "worker closed its result pipe; worker killed", "WorkerExited"
            )
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

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

import itertools
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datapipe.engine.channel import PIPE_BYTES, Inbox, Outbox, frame, grow_pipe
from datapipe.engine.child_shards import ShardTarget, remove_child_files, verify_shard
from datapipe.engine.merge import is_full, merge_shards
from datapipe.engine.runner import Answered, ItemResult, ItemRunner, ItemTask, WrittenShard
from datapipe.engine.wire import Message, Ready, ShardDone, ShardFailed, WireError, decode
from datapipe.engine.worker import FLUSH
from datapipe.graph import Pipeline
from datapipe.keys import item_key_of

logger = logging.getLogger(__name__)


class ShardRefused(WireError):
    """A child's shard failed the parent's check."""


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
_POOL_IDS = itertools.count(1)


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
    settings: PoolSettings,
    pipeline: Pipeline,
    fitted: dict[str, Any],
    shards: ShardTarget | None = None,
) -> InlinePool | ProcessPool:
    """Inline when nothing needs isolation and no workers were asked for; else child processes
    (which write their samples into ``shards`` themselves when it is given)."""
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
        shards=shards,
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
    #: the names of its shards start with this (see ShardTarget.child_prefix)
    prefix: str = ""
    #: tasks sent and not answered yet; the child works on the first, the next waits in its pipe
    inflight: deque[ItemTask] = field(default_factory=deque)
    #: answered ok, their samples in the child's open shard: (task, result) by key
    pending: dict[str, tuple[ItemTask, ItemResult]] = field(default_factory=dict)
    #: asked to close its open shard, not answered yet
    flushing: bool = False
    #: its shards the parent checked and took
    accepted: set[str] = field(default_factory=set)
    deadline: float = 0.0
    ready: bool = False

    @property
    def busy(self) -> bool:
        return bool(self.inflight) or not self.ready or self.flushing

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
        shards: ShardTarget | None = None,
    ) -> None:
        self.payload = (pipeline, dict(fitted or {}), epoch, shards)
        self.shards = shards
        self._uid = next(_POOL_IDS)  # shard names differ between the pools of one run
        self._spawned = 0
        self._passes = 0
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
        self._spawned += 1
        prefix = self.shards.child_prefix(self._uid, self._spawned) if self.shards else "-"
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
                prefix,
            ],
            pass_fds=(task_r, res_w),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        os.close(task_r)
        os.close(res_w)
        os.set_blocking(task_w, False)  # the child's ends stay blocking
        os.set_blocking(res_r, False)
        child = _Child(proc, Outbox(task_w), Inbox(res_r, self._scratch, self._max_message), prefix)
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
        if self.shards is not None:  # its open shard, never to be finished
            remove_child_files(Path(self.shards.directory), child.prefix, child.accepted)

    def close(self) -> None:
        """Stop idle children (kill busy ones: their work is abandoned)."""
        for child in self.children:
            if not child.inflight and not child.outbox:
                child.outbox.put(frame(None))
        for child in self.children:
            if child.inflight or child.outbox or child.pending:
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

    def _check(self, child: _Child, msg: Message) -> Message:
        """A message that fits where the child is: one ready, then answers to its tasks, and
        shards (in shard mode) holding the items it answered since its last one."""
        if isinstance(msg, Ready):
            if child.ready:
                raise WireError("a second ready message")
            return msg
        if isinstance(msg, ShardFailed):
            return msg
        if isinstance(msg, ShardDone):
            name = re.fullmatch(re.escape(child.prefix) + r"-\d{3,}\.tar", msg.name)
            if self.shards is None or not child.pending or name is None:
                raise ShardRefused(f"an unexpected shard message ({msg.name!r})")
            return msg
        task = child.task
        if task is None:
            raise WireError(f"a result for {msg.key!r} with no task sent")
        if msg.key != task.key:
            raise WireError(f"a result for {msg.key!r} while working on {task.key!r}")
        for sample_key in [k for k, _ in msg.samples] + [k for k, _ in msg.records]:
            if item_key_of(sample_key) != task.key:
                raise WireError(f"sample {sample_key!r} is not one of item {task.key!r}")
        if msg.shard_samples and (
            self.shards is None or not task.encode or msg.status != "ok" or msg.samples
        ):
            raise WireError(f"a result for {msg.key!r} claims samples in a shard")
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

    def imap_unordered(
        self, tasks: Iterable[ItemTask]
    ) -> Iterator[ItemResult | WrittenShard | Answered]:
        """Yield one result per task, in completion order; in shard mode the ok ones come
        inside the :class:`WrittenShard` that holds their samples, announced by an
        :class:`Answered` as they finish."""
        pending = iter(tasks)
        retry: deque[ItemTask] = deque()
        exhausted = False
        partial: list[WrittenShard] = []  # children's last shards, merged at the end
        self._passes += 1
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
                if exhausted and not retry and not any(c.inflight for c in self.children):
                    if not any(c.pending for c in self.children):
                        yield from self._merged(partial)
                        return
                    for child in self.children:  # the last items wait in open shards
                        if child.pending and not child.flushing:
                            child.flushing = True
                            child.deadline = time.monotonic() + self.timeout_s
                            child.outbox.put(frame(FLUSH))
                busy = [c for c in self.children if c.busy]
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
                            elif isinstance(msg, ShardFailed):
                                raise OSError(msg.message)
                            elif isinstance(msg, ShardDone):
                                shard = self._accept(child, msg)
                                if is_full(shard, self.shards.max_samples, self.shards.max_bytes):
                                    yield shard
                                else:
                                    partial.append(shard)
                            else:
                                task = child.inflight.popleft()
                                child.deadline = now + self.timeout_s  # it starts the next one
                                mean = msg.elapsed_s if self._item_s is None else self._item_s
                                self._item_s = mean + 0.1 * (msg.elapsed_s - mean)
                                if msg.shard_samples:  # counted when its shard comes
                                    child.pending[msg.key] = (task, msg)
                                    yield Answered(msg.key, msg.status)
                                else:
                                    yield msg
                        if child.inbox.error:
                            raise WireError(child.inbox.error)
                    except ShardRefused as exc:  # no task of the queue is to blame
                        logger.warning("worker %s wrote a bad shard: %s", child.proc.pid, exc)
                        retry.extendleft(reversed(child.inflight))
                        child.inflight.clear()
                        why = f"worker wrote a malformed shard ({exc}); worker killed"
                        result = ItemResult.error("", None, "crash", why, "WorkerProtocolError")
                    except WireError as exc:
                        result = self._malformed(child, exc)
                    else:
                        if child.inbox.eof:
                            result = self._died(child)
                        elif now >= child.deadline and child.busy:
                            result = self._timed_out(child)
                        else:
                            continue
                    # the child is gone: replace it, report or retry its task, requeue the rest
                    # (and the items whose samples were in its unfinished shard)
                    task = child.task
                    unsent = [t for t, _ in child.pending.values()]
                    retry.extendleft(reversed(list(child.inflight)[1:]))
                    self._replace(i, child)
                    if unsent:
                        yield from self._suspects(unsent, result, retry, blamed=task is not None)
                    if task is None and child.ready:  # between tasks: its shard was to blame
                        continue
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
            for child in [c for c in self.children if c.inflight or c.outbox or c.pending]:
                self._retire(child, kill=True)
                self.children.remove(child)
            for shard in partial:  # not recorded: gone, as an unfinished shard would be
                if self.shards is not None:
                    (Path(self.shards.directory) / shard.name).unlink(missing_ok=True)

    def _replace(self, i: int, child: _Child) -> None:
        self._retire(child, kill=True)
        self.children[i] = self._spawn()
        self.replaced += 1

    def _suspects(
        self, tasks: list[ItemTask], result: ItemResult, retry: deque[ItemTask], blamed: bool
    ) -> Iterator[ItemResult]:
        """Items a lost child had answered but not yet put in a closed shard run again. When
        no task of its was running (``blamed`` False), the failure came after their results:
        any of them may have taken the child over, so each runs again in a shard of its own,
        and one that fails so, alone, gets ``result`` as its error row."""
        if not blamed and len(tasks) == 1 and tasks[0].flush_after:
            (task,) = tasks
            result.key, result.attempt = task.key, task.attempt
            yield result
            return
        for task in tasks:
            task.flush_after = task.flush_after or not blamed
        retry.extendleft(reversed(tasks))

    def _accept(self, child: _Child, msg: ShardDone) -> WrittenShard:
        """A child's shard, checked against what it reported (a refused one is deleted)."""
        assert self.shards is not None
        path = Path(self.shards.directory) / msg.name
        results = {key: result for key, (_, result) in child.pending.items()}
        try:
            held = verify_shard(path, msg.n_samples, msg.n_bytes, results)
        except WireError as exc:
            path.unlink(missing_ok=True)
            raise ShardRefused(str(exc)) from None
        child.pending.clear()
        child.flushing = False
        child.accepted.add(msg.name)
        return WrittenShard(msg.name, msg.n_samples, msg.n_bytes, held)

    def _merged(self, partial: list[WrittenShard]) -> list[WrittenShard]:
        """The children's partly filled shards as full ones and one partly filled (the
        layout a single writer leaves)."""
        if len(partial) < 2:
            shards, partial[:] = list(partial), []
            return shards
        assert self.shards is not None
        t = self.shards
        prefix = t.merge_prefix(self._uid, self._passes)
        merged = merge_shards(t.directory, prefix, partial, t.max_samples, t.max_bytes)
        partial.clear()
        return merged

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

"""The Dask executor: the same DAG on a ``dask.distributed`` cluster.

Records are grouped in partitions; each partition runs every fused Map stage in one task on a
worker and writes its shards straight into the output directory. Select/Fit barriers gather
only light fields. The client alone writes the manifest, so sample arrays never travel
through the scheduler or the client. Inputs and the output must be on a filesystem every
worker sees (a local disk for a LocalCluster; NFS or similar for a real cluster).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
from asyncio import CancelledError
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from datapipe.engine.driver import RunDriver, RunOptions
from datapipe.engine.merge import is_full, merge_shards
from datapipe.engine.partition import PartitionSpec, run_partition
from datapipe.engine.pool import PoolSettings
from datapipe.engine.report import RunReport
from datapipe.engine.runner import ItemResult, ItemTask, WrittenShard
from datapipe.engine.sources import preflight
from datapipe.errors import ExecutorError
from datapipe.graph import Pipeline
from datapipe.hooks import RunHooks
from datapipe.store.output import OutputStore

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5
PARTITIONS_PER_WORKER = 4
SOLO_RETRIES = 1


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A client for ``scheduler`` (or ``$DASK_SCHEDULER_ADDRESS``), else a LocalCluster."""
    from distributed import Client, LocalCluster

    if not logger.isEnabledFor(logging.DEBUG):  # distributed sets INFO on import
        for name in ("distributed", "dask"):
            logging.getLogger(name).setLevel(logging.WARNING)
        # connection failures surface as one ExecutorError, not as logged tracebacks
        logging.getLogger("distributed.client").setLevel(logging.CRITICAL)
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(
                f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT_S} s "
                f"({type(exc).__name__}); is `dask scheduler` running there?",
                exit_code=2,
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=max(1, workers or 2),
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _probe_output(shard_dir: str) -> str:
    """Runs on every worker: can it write where the shards go?"""
    path = Path(shard_dir) / f".probe-{os.getpid()}"
    try:
        path.write_bytes(b"")
        path.unlink()
    except OSError as exc:
        return f"{exc.strerror}"
    return ""


def check_workers_see_output(client: Any, shard_dir: Path) -> None:
    problems = {w: msg for w, msg in client.run(_probe_output, str(shard_dir)).items() if msg}
    if problems:
        worker, msg = next(iter(problems.items()))
        raise ExecutorError(
            f"Dask worker {worker} cannot write to {shard_dir} ({msg}); the output must be on "
            "a filesystem every worker sees",
            exit_code=2,
        )


class DaskPool:
    """Turns tasks into partitions on the cluster; yields light results and written shards."""

    _phase = itertools.count()

    def __init__(self, client: Any, spec: PartitionSpec) -> None:
        self.client = client
        self.spec = spec

    def _partition_size(self, n_tasks: int) -> int:
        n_workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        per = math.ceil(n_tasks / (PARTITIONS_PER_WORKER * n_workers))
        return max(1, min(self.spec.pipeline.output.shard_size, per))

    def imap_unordered(self, tasks: Iterable[ItemTask]) -> Iterator[ItemResult | WrittenShard]:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        tasks = list(tasks)
        if not tasks:
            return
        size = self._partition_size(len(tasks))
        phase = next(self._phase)
        chunks = {i: tasks[j : j + size] for i, j in enumerate(range(0, len(tasks), size))}
        futures = {self._submit(phase, i, chunk): (i, chunk) for i, chunk in chunks.items()}
        next_index = len(chunks)
        pending = as_completed(list(futures), loop=self.client.loop)
        solo: dict[str, int] = {}  # KilledWorker count of items retried on their own
        suspects: deque[ItemTask] = deque()
        suspect_running: Any = None
        out = self.spec.pipeline.output
        limits = (out.shard_size, out.shard_bytes)
        partly: list[WrittenShard] = []  # shards a partition left partly filled

        def submit_suspect() -> Any:
            nonlocal next_index
            if not suspects:
                return None
            task = suspects.popleft()
            new = self._submit(phase, next_index, [task])
            futures[new] = (next_index, [task])
            pending.add(new)
            next_index += 1
            return new

        try:
            for fut in pending:
                _, chunk = futures.pop(fut)
                if len(chunk) == 1 and suspect_running is fut:
                    suspect_running = None
                if fut.status == "finished":
                    if suspect_running is None and suspects:
                        suspect_running = submit_suspect()
                    for res in fut.result():
                        if isinstance(res, WrittenShard) and not is_full(res, *limits):
                            partly.append(res)  # merged below into full shards
                        else:
                            yield res
                    continue
                if fut.status == "cancelled":  # the scheduler forgot it: it is gone
                    raise OSError("the scheduler cancelled the run's tasks")
                exc = fut.exception()
                if exc is None or isinstance(exc, KilledWorker):  # None: lost with its worker
                    # find the poison item: the suspects run one at a time, alone, so a
                    # neighbour's crash cannot get a good item blamed
                    if len(chunk) == 1:
                        solo[chunk[0].key] = solo.get(chunk[0].key, 0) + 1
                    blamed = len(chunk) == 1 and solo[chunk[0].key] > SOLO_RETRIES
                    if not blamed:
                        suspects.extend(chunk)
                    if suspect_running is None:
                        suspect_running = submit_suspect()
                    if not blamed:
                        continue
                    yield ItemResult.error(
                        chunk[0].key,
                        None,
                        "crash",
                        f"the item killed Dask workers repeatedly ({exc})",
                        "KilledWorker",
                    )
                    continue
                raise ExecutorError(f"a Dask task failed: {type(exc).__name__}: {exc}")
            if partly:
                yield from self._merge(phase, partly, limits)
        except (OSError, TimeoutError, CancelledError) as exc:
            raise ExecutorError(
                f"lost the Dask scheduler ({type(exc).__name__}: {exc}); work committed so far "
                "is kept, re-run the same command to resume"
            ) from None
        finally:
            for fut in futures:
                fut.release()

    def _merge(
        self, phase: int, shards: list[WrittenShard], limits: tuple[int, int]
    ) -> list[WrittenShard]:
        """Gather partly filled shards into full ones (one task on a worker, where the
        files are), so the layout is the local executor's: full shards and one partly so."""
        spec = self.spec
        prefix = f"shard-{spec.run_id:05d}-m{phase:03d}"
        fut = self.client.submit(
            merge_shards,
            spec.shard_dir,
            prefix,
            shards,
            *limits,
            key=f"datapipe-{prefix}",
            pure=False,
        )
        try:
            return fut.result()
        except (OSError, TimeoutError, CancelledError):
            raise
        except Exception as exc:  # a worker lost mid-merge: nothing of it was committed
            raise ExecutorError(
                f"merging partly filled shards failed ({type(exc).__name__}: {exc}); work "
                "committed so far is kept, re-run the same command to resume"
            ) from None
        finally:
            fut.release()

    def _submit(self, phase: int, index: int, chunk: list[ItemTask]) -> Any:
        key = f"datapipe-run{self.spec.run_id}-phase{phase}-part{index}"
        return self.client.submit(run_partition, self.spec, index, chunk, key=key, pure=False)

    def close(self) -> None:
        pass


def run_dask(
    pipeline: Pipeline,
    out: str | Path,
    *,
    scheduler: str | None = None,
    hooks: RunHooks | None = None,
    retry_errors: bool = False,
    **settings: Any,
) -> RunReport:
    """Run ``pipeline`` on a Dask cluster into ``out``; returns the run report."""
    cfg = PoolSettings.from_pipeline(pipeline, **settings)
    preflight(pipeline)
    with OutputStore(out) as store, dask_client(scheduler, cfg.workers or None) as client:
        check_workers_see_output(client, store.shard_dir)

        def make_pool(p: Pipeline, fitted: dict[str, Any], run_id: int) -> DaskPool:
            spec = PartitionSpec(
                p,
                dict(fitted),
                cfg.epoch,
                str(store.shard_dir.resolve()),
                run_id,
                cfg.timeout_s,
                cfg.memory_mb,
                cfg.retries,
            )
            return DaskPool(client, spec)

        driver = RunDriver(
            pipeline,
            store,
            make_pool,
            hooks,
            RunOptions(retry_errors=retry_errors, epoch=cfg.epoch),
        )
        return driver.run()

"""Run a partition of tasks where the data lives and write its shards there.

This is what a Dask task executes on a worker: the samples go straight into shards in the
output directory (temporary name, fsync, rename); only light results travel back to the
client, which records them in the manifest. Isolated stages run in a child that writes its
shards itself (:mod:`datapipe.engine.child_shards`, names unique to the child), which the
worker checks; otherwise the worker writes them, named for (run, partition). Either way the
client records only the shards of the results it receives: those of an attempt lost with its
worker are never recorded, and the next run deletes them.

A partition's last shard is usually not full; :func:`~datapipe.engine.merge.merge_shards`
gathers such shards into shards of ``output.shard_size`` samples, so a Dask run has the layout
of a local one (full shards, and one partly filled).
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datapipe.engine.child_shards import ShardTarget
from datapipe.engine.merge import close_shard
from datapipe.engine.pool import InlinePool, ProcessPool
from datapipe.engine.runner import Answered, ItemResult, ItemTask, WrittenShard
from datapipe.graph import Pipeline
from datapipe.store.shards import ShardWriter


@dataclass(frozen=True)
class PartitionSpec:
    """Everything a worker needs besides the tasks: picklable, small."""

    pipeline: Pipeline
    fitted: dict[str, Any]
    epoch: int
    shard_dir: str
    run_id: int
    timeout_s: float
    memory_mb: int
    retries: int

    def cache_key(self) -> str:
        blob = json.dumps(
            [
                self.pipeline.fingerprint(),
                self.fitted,
                self.epoch,
                self.timeout_s,
                self.memory_mb,
                self.retries,
                self.shard_dir,  # where an isolated child writes its shards, and under
                self.run_id,  # which run's names
            ],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()


_local = threading.local()


def _pool_for(spec: PartitionSpec) -> InlinePool | ProcessPool:
    """One pool per worker thread and pipeline: isolated children survive between tasks."""
    key = spec.cache_key()
    cached: dict[str, Any] = getattr(_local, "pools", {})
    if key not in cached:
        for old in cached.values():
            old.close()
        cached = {}
        if any(n.stage.isolate for n in spec.pipeline.nodes):
            cached[key] = ProcessPool(
                spec.pipeline,
                workers=1,
                timeout_s=spec.timeout_s,
                memory_mb=spec.memory_mb,
                retries=spec.retries,
                shards=_child_shards(spec),
                fitted=spec.fitted,
                epoch=spec.epoch,
            )
        else:
            cached[key] = InlinePool(spec.pipeline, spec.fitted, spec.epoch)
        _local.pools = cached
    return cached[key]


def _child_shards(spec: PartitionSpec) -> ShardTarget:
    """Shards of this worker's child: names unique across workers and machines."""
    prefix = f"shard-{spec.run_id:05d}-c{uuid.uuid4().hex[:8]}"
    return ShardTarget.of(spec.pipeline, spec.shard_dir, prefix)


def run_partition(
    spec: PartitionSpec, index: int, tasks: list[ItemTask]
) -> list[ItemResult | WrittenShard]:
    """Process ``tasks``; ok samples go into shards ``shard-RUN-pINDEX-SEQ.tar``."""
    out = spec.pipeline.output
    shard_dir = Path(spec.shard_dir)
    produced: list[ItemResult | WrittenShard] = []
    writer: ShardWriter | None = None
    held: list[ItemResult] = []
    seq = 0
    pool = _pool_for(spec)
    try:
        for res in pool.imap_unordered(tasks):
            if isinstance(res, Answered):  # progress on the child's open shard: none here
                continue
            if isinstance(res, WrittenShard):  # the child wrote it; the pool checked it
                produced.append(res)
                continue
            if res.status != "ok" or res.light is not None:
                produced.append(res)
                continue
            if writer is None:
                seq += 1
                name = f"shard-{spec.run_id:05d}-p{index:05d}-{seq:03d}.tar"
                writer = ShardWriter(shard_dir, name, out.shard_size, out.shard_bytes)
            for _, members in res.samples:
                writer.add(members)
            res.shard_samples, res.samples = len(res.samples), []
            held.append(res)
            if writer.full:
                produced.append(close_shard(writer, held))
                writer, held = None, []
        if writer is not None:
            produced.append(close_shard(writer, held))
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return produced

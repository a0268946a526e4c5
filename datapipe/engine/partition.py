"""Run a partition of tasks where the data lives and write its shards there.

This is what a Dask task executes on a worker: the samples go straight into shards in the
output directory (temporary name, fsync, rename); only light results travel back to the
client, which records them in the manifest. Shard names are a function of (run, partition),
so a retried task rewrites the same names with the same bytes.

A partition's last shard is usually not full; :func:`merge_shards` gathers such shards into
shards of ``output.shard_size`` samples, so a Dask run has the layout of a local one (full
shards, and one partly filled).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datapipe.engine.pool import InlinePool, ProcessPool
from datapipe.engine.runner import ItemResult, ItemTask, WrittenShard
from datapipe.graph import Pipeline
from datapipe.keys import item_key_of
from datapipe.store.codec import split_member
from datapipe.store.shards import ShardWriter, iter_members


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
                fitted=spec.fitted,
                epoch=spec.epoch,
            )
        else:
            cached[key] = InlinePool(spec.pipeline, spec.fitted, spec.epoch)
        _local.pools = cached
    return cached[key]


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
                produced.append(_close(writer, held))
                writer, held = None, []
        if writer is not None:
            produced.append(_close(writer, held))
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return produced


def _close(writer: ShardWriter, held: list[ItemResult]) -> WrittenShard:
    info = writer.close()
    return WrittenShard(info.name, info.n_samples, info.n_bytes, list(held))


def is_full(shard: WrittenShard, max_samples: int, max_bytes: int) -> bool:
    """Whether a written shard is as full as the local executor would make it."""
    return shard.n_samples >= max_samples or shard.n_bytes >= max_bytes


def merge_shards(
    shard_dir: str, prefix: str, shards: list[WrittenShard], max_samples: int, max_bytes: int
) -> list[WrittenShard]:
    """Copy the samples of ``shards`` in order into new shards ``PREFIX-SEQ.tar`` that close
    when full (after a whole item, as the local writer does), then delete the old ones.

    Every item's samples stay together; the result lists each new shard with the results of
    the items it holds. Names are deterministic, so a retried merge rewrites the same files.
    """
    merger = _Merger(Path(shard_dir), prefix, max_samples, max_bytes)
    try:
        for old in shards:
            results = {r.key: r for r in old.results}
            sample: list[tuple[str, bytes]] = []
            for name, data in iter_members(merger.directory / old.name):
                if sample and split_member(sample[0][0])[0] != split_member(name)[0]:
                    merger.add(sample, results)
                    sample = []
                sample.append((name, data))
            if sample:
                merger.add(sample, results)
        merger.close()
    finally:
        if merger.writer is not None:
            merger.writer.abort()
    for old in shards:
        (merger.directory / old.name).unlink(missing_ok=True)
    return merger.merged


@dataclass
class _Merger:
    directory: Path
    prefix: str
    max_samples: int
    max_bytes: int
    writer: ShardWriter | None = None
    item: str | None = None
    held: list[ItemResult] = field(default_factory=list)
    merged: list[WrittenShard] = field(default_factory=list)

    def add(self, sample: list[tuple[str, bytes]], results: dict[str, ItemResult]) -> None:
        """Add one sample's members; a new item may start a new shard when this one is full."""
        item = item_key_of(split_member(sample[0][0])[0])
        if item != self.item:
            if self.writer is not None and self.writer.full:
                self.close()
            if self.writer is None:
                name = f"{self.prefix}-{len(self.merged) + 1:03d}.tar"
                self.writer = ShardWriter(self.directory, name, self.max_samples, self.max_bytes)
            self.held.append(results[item])
            self.item = item
        assert self.writer is not None
        self.writer.add(sample)

    def close(self) -> None:
        if self.writer is not None:
            self.merged.append(_close(self.writer, self.held))
            self.writer, self.held = None, []

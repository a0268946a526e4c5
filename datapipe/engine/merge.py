"""Gather partly filled shards into full ones, so every executor leaves the same layout:
full shards of ``output.shard_size`` samples (or ``shard_bytes``), and one partly filled.

Dask partitions and the local executor's worker children each end with a partly filled
shard; :func:`merge_shards` copies their samples, whole items at a time, into new shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datapipe.engine.runner import ItemResult, WrittenShard
from datapipe.keys import item_key_of
from datapipe.store.codec import split_member
from datapipe.store.shards import ShardWriter, iter_members


def close_shard(writer: ShardWriter, held: list[ItemResult]) -> WrittenShard:
    """Close ``writer`` (fsync, rename): the shard with the results of the items it holds."""
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
            self.merged.append(close_shard(self.writer, self.held))
            self.writer, self.held = None, []

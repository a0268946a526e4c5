"""Gather partly filled shards into full ones, so every executor leaves the same layout:
full shards of ``output.shard_size`` samples (or ``shard_bytes``), and one partly filled.

Dask partitions and the local executor's worker children each end with a partly filled
shard; :func:`merge_shards` copies their samples, whole items at a time, into new shards.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

from datapipe.engine.runner import ItemResult, WrittenShard
from datapipe.keys import item_key_of
from datapipe.store.codec import split_member
from datapipe.store.shards import ShardWriter
from datapipe.store.tarformat import BLOCK, walk_members


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
    An item's members are copied as one byte range, by the kernel where it can.
    """
    merger = _Merger(Path(shard_dir), prefix, max_samples, max_bytes)
    try:
        for old in shards:
            results = {r.key: r for r in old.results}
            with open(merger.directory / old.name, "rb") as fh:
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    members = walk_members(data)
                for item, start, end, n_samples in item_ranges(members):
                    merger.add(results[item], fh.fileno(), start, end - start, n_samples)
        merger.close()
    finally:
        if merger.writer is not None:
            merger.writer.abort()
    for old in shards:
        (merger.directory / old.name).unlink(missing_ok=True)
    return merger.merged


def item_ranges(members: list[tuple[str, int, int]]) -> list[tuple[str, int, int, int]]:
    """(item, first byte, end byte, samples) of each item's run of members in an archive."""
    out: list[tuple[str, int, int, int]] = []
    samples: set[str] = set()
    for name, offset, size in members:
        sample = split_member(name)[0]
        item = item_key_of(sample)
        end = offset + size + (-size % BLOCK)
        if out and out[-1][0] == item:
            samples.add(sample)
            out[-1] = (item, out[-1][1], end, len(samples))
        else:
            samples = {sample}
            out.append((item, offset - BLOCK, end, 1))
    return out


@dataclass
class _Merger:
    directory: Path
    prefix: str
    max_samples: int
    max_bytes: int
    writer: ShardWriter | None = None
    held: list[ItemResult] = field(default_factory=list)
    merged: list[WrittenShard] = field(default_factory=list)

    def add(self, result: ItemResult, src_fd: int, offset: int, length: int, n: int) -> None:
        """Add one item's members (a byte range of an old shard); it starts a new shard when
        this one is full."""
        if self.writer is not None and self.writer.full:
            self.close()
        if self.writer is None:
            name = f"{self.prefix}-{len(self.merged) + 1:03d}.tar"
            self.writer = ShardWriter(self.directory, name, self.max_samples, self.max_bytes)
        self.held.append(result)
        self.writer.add_copied(src_fd, offset, length, n)

    def close(self) -> None:
        if self.writer is not None:
            self.merged.append(close_shard(self.writer, self.held))
            self.writer, self.held = None, []

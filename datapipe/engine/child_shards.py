"""Shards written by the worker children themselves, checked by the parent before they count.

Moving every sample's bytes through the result pipe costs the parent more than the samples'
own work when items are small (a read, a decode, a write per sample). So for the main pass of
a local run each child appends its ok samples to a shard of its own, and tells the parent the
item's outcome with a light result (no sample bytes). When the shard is full, or the parent
asks at the end of a pass, the child closes it (fsync, rename) and names it in a ``shard``
message. The parent then reads the file back and checks every member (:func:`verify_shard`)
before the items count: a child that a crafted file took over can still write only garbage
into its own items' samples, which it could send over the pipe as well.

An item whose result came but whose shard did not (the child crashed, hung, or broke the
protocol) is simply run again: nothing of it was recorded, and the partial file is deleted.
"""

from __future__ import annotations

import contextlib
import mmap
from dataclasses import dataclass
from pathlib import Path

from datapipe.engine.runner import ItemResult
from datapipe.engine.wire import WireError, encode_shard, encode_shard_failed
from datapipe.graph import Pipeline
from datapipe.keys import item_key_of
from datapipe.store.codec import split_member
from datapipe.store.files import TMP_MARK
from datapipe.store.shards import ShardWriter
from datapipe.store.tarformat import walk_members


@dataclass(frozen=True)
class ShardTarget:
    """Where children write shards and how full they get. Names: ``PREFIX-xPOOL-wCHILD-SEQ.tar``
    from the children, ``PREFIX-xPOOL-mPASS-SEQ.tar`` when merged (``POOL`` tells apart the
    pools of one run, ``CHILD`` every child a pool started)."""

    directory: str
    prefix: str
    max_samples: int
    max_bytes: int

    @classmethod
    def of(cls, pipeline: Pipeline, directory: str, prefix: str) -> ShardTarget:
        """Shards of ``pipeline``'s output size, in ``directory``, named ``prefix-...``."""
        out = pipeline.output
        return cls(directory, prefix, out.shard_size, out.shard_bytes)

    def child_prefix(self, pool: int, child: int) -> str:
        return f"{self.prefix}-x{pool:02d}-w{child:03d}"

    def merge_prefix(self, pool: int, pass_: int) -> str:
        return f"{self.prefix}-x{pool:02d}-m{pass_:03d}"


class ChildShards:
    """The child's side: ok samples go into its open shard, which closes when full."""

    def __init__(self, target: ShardTarget, child_prefix: str) -> None:
        self.target = target
        self.prefix = child_prefix
        self.writer: ShardWriter | None = None
        self.seq = 0

    def add(self, result: ItemResult) -> list[bytes]:
        """Write ``result``'s samples, leaving it light; the messages to send after it (a
        ``shard`` message when this filled the shard, ``shard_failed`` when writing failed)."""
        t = self.target
        try:
            if self.writer is None:
                self.seq += 1
                name = f"{self.prefix}-{self.seq:03d}.tar"
                self.writer = ShardWriter(Path(t.directory), name, t.max_samples, t.max_bytes)
            for _, members in result.samples:
                self.writer.add(members)
        except OSError as exc:
            self.abort()
            return [encode_shard_failed(f"cannot write a shard: {exc}")]
        result.shard_samples, result.samples = len(result.samples), []
        return self.close() if self.writer.full else []

    def close(self) -> list[bytes]:
        """Close the open shard (if any): its ``shard`` message."""
        if self.writer is None:
            return []
        writer, self.writer = self.writer, None
        try:
            info = writer.close()
        except OSError as exc:
            writer.abort()
            return [encode_shard_failed(f"cannot write a shard: {exc}")]
        return [encode_shard(info.name, info.n_samples, info.n_bytes)]

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


def verify_shard(
    path: Path, n_samples: int, n_bytes: int, pending: dict[str, ItemResult]
) -> list[ItemResult]:
    """Check a child's shard against what it reported: a well-formed archive of
    ``n_samples`` samples in ``n_bytes`` bytes holding exactly the items of ``pending`` (each
    item's samples together, as many as its result says, every member named for its item).
    Returns the items' results in the shard's order; WireError for anything else."""
    try:
        size = path.stat().st_size
        if size != n_bytes:
            raise WireError(f"shard {path.name} has {size} bytes, the child said {n_bytes}")
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            members = walk_members(data)
    except (OSError, ValueError) as exc:
        raise WireError(f"shard {path.name}: {exc}") from None
    order: list[str] = []
    samples: dict[str, set[str]] = {}
    sample = item = ""
    for name, _, _ in members:
        if not (sample and name.startswith(sample) and name[len(sample) : len(sample) + 1] == "."):
            sample = split_member(name)[0]  # a new sample (most members share the last one's)
            item = item_key_of(sample)
        if item not in pending:
            raise WireError(f"shard {path.name} holds {name!r}, of no item the child reported")
        if not order or order[-1] != item:
            if item in samples:
                raise WireError(f"shard {path.name}: the samples of {item!r} are not together")
            order.append(item)
            samples[item] = set()
        samples[item].add(sample)
    if set(order) != set(pending):
        missing = sorted(set(pending) - set(order))[:3]
        raise WireError(f"shard {path.name} lacks the samples of {missing}")
    for item in order:
        if len(samples[item]) != pending[item].shard_samples:
            raise WireError(f"shard {path.name}: {item!r} has the wrong number of samples")
    if sum(len(s) for s in samples.values()) != n_samples:
        raise WireError(f"shard {path.name} holds a different number of samples")
    return [pending[item] for item in order]


def remove_child_files(directory: Path, child_prefix: str, accepted: set[str]) -> None:
    """Delete what a retired child left that the parent did not accept: its unfinished shard,
    and any file under its name it wrote without a valid ``shard`` message."""
    leftovers = [*directory.glob(f".{child_prefix}-*{TMP_MARK}*")]
    leftovers += [p for p in directory.glob(f"{child_prefix}-*.tar") if p.name not in accepted]
    for path in leftovers:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

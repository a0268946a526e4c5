"""Random access into WebDataset tar shards: an index of member offsets, and reads by pread.

A shard is indexed once from its tar headers alone (member name, data offset, size; the data
is skipped with a seek), and the index is cached per process by (path, size, mtime). The
members of one sample are contiguous in the shards datapipe writes, so one sample is one
``os.preadv`` of its span into a fresh buffer, cut into members and decoded in place
(:mod:`datapipe.stream.npy`: numpy's safe header parser, no pickle, arrays are views).
"""

from __future__ import annotations

import logging
import os
import tarfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from datapipe.errors import StoreError
from datapipe.store.codec import split_member
from datapipe.stream.base import BadUnit
from datapipe.stream.npy import decode_member

logger = logging.getLogger(__name__)

#: what a corrupt member raises while decoding (JSON and Unicode errors are ValueErrors)
_DECODE_ERRORS = (ValueError, TypeError, EOFError, OSError, SyntaxError, RecursionError, zlib.error)

#: (field, ext, offset from the sample's span start, size)
Member = tuple[str, str, int, int]


@dataclass(frozen=True)
class ShardIndex:
    path: str
    size: int
    mtime_ns: int
    #: (key, members) in tar order; member offsets are absolute here
    samples: tuple[tuple[str, tuple[Member, ...]], ...]
    #: why indexing stopped early ('' when the whole tar was read)
    problem: str = ""


@dataclass(frozen=True, slots=True)
class SampleRef:
    """Where one sample lives: shard number, byte span, and its members inside the span."""

    key: str
    shard: int
    start: int
    length: int
    members: tuple[Member, ...]


def index_shard(path: str | Path) -> ShardIndex:
    """The sample index of one shard (cached per process while the file is unchanged)."""
    st = os.stat(path)
    return _index(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=4096)
def _index(path: str, size: int, mtime_ns: int) -> ShardIndex:
    by_key: dict[str, list[Member]] = {}
    problem = ""
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:  # headers only: tarfile seeks over the data
                if not info.isfile():
                    continue
                key, field, ext = split_member(info.name)
                if not field or info.offset_data + info.size > size:
                    if field:
                        problem = f"member {info.name} runs past the end of the file"
                    continue
                by_key.setdefault(key, []).append((field, ext, info.offset_data, info.size))
    except (tarfile.TarError, OSError, UnicodeDecodeError) as exc:
        problem = f"unreadable tar header: {exc}"
    if problem:
        logger.warning("shard %s: %s; indexed %d samples before it", path, problem, len(by_key))
    samples = tuple((k, tuple(m)) for k, m in by_key.items())
    return ShardIndex(path, size, mtime_ns, samples, problem)


def sample_ref(
    key: str,
    shard: int,
    members: tuple[Member, ...],
    interned: dict[tuple[Member, ...], tuple[Member, ...]] | None = None,
) -> SampleRef:
    """A sample's span and its members relative to it (equal layouts shared via ``interned``)."""
    start = min(m[2] for m in members)
    end = max(m[2] + m[3] for m in members)
    rel = tuple((f, e, off - start, n) for f, e, off, n in members)
    if interned is not None:
        rel = interned.setdefault(rel, rel)
    return SampleRef(key, shard, start, end - start, rel)


class ShardReader:
    """Reads samples by :class:`SampleRef`; file descriptors opened lazily, per process."""

    def __init__(self, shards: list[tuple[str, int, int]]) -> None:
        #: (path, size, mtime_ns) of each shard, as indexed
        self.shards = shards
        self._fds: dict[int, int] = {}

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            path, size, mtime_ns = self.shards[shard]
            fd = os.open(path, os.O_RDONLY)
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                os.close(fd)
                raise StoreError(
                    f"shard {path} changed since the dataset was built (a new run "
                    "rewrote it?); build the dataset again"
                )
            self._fds[shard] = fd
        return fd

    def read(self, ref: SampleRef) -> dict[str, Any]:
        """The decoded fields of one sample, plus ``key``; raises BadUnit if one is bad."""
        buf = bytearray(ref.length)  # writable: arrays are views on it, tensors share it
        got = os.preadv(self._fd(ref.shard), [buf], ref.start)
        if got != ref.length:
            raise BadUnit(ref.key, f"truncated: read {got} of {ref.length} bytes")
        record: dict[str, Any] = {"key": ref.key}
        for field, ext, off, size in ref.members:
            try:
                record[field] = decode_member(ext, buf, off, size)
            except _DECODE_ERRORS as exc:
                raise BadUnit(ref.key, f"field {field!r} ({ext}) does not decode: {exc}") from None
        return record

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

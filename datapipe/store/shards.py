"""WebDataset-format tar shards, written to a temporary name and renamed when complete."""

from __future__ import annotations

import mmap
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datapipe.store.codec import decode_value, split_member
from datapipe.store.files import fsync_dir, tmp_name
from datapipe.store.tarformat import TarStream, walk_members


@dataclass(frozen=True)
class ShardInfo:
    name: str
    n_samples: int
    n_bytes: int


class ShardWriter:
    """Appends samples to one tar shard; :meth:`close` makes it visible atomically."""

    def __init__(self, directory: Path, name: str, max_samples: int, max_bytes: int) -> None:
        self.path = directory / name
        self.tmp = tmp_name(self.path)
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.n_samples = 0
        self._fh = open(self.tmp, "wb")
        self._tar = TarStream(self._fh)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n_bytes(self) -> int:
        return self._fh.tell()

    def add(self, members: list[tuple[str, bytes]]) -> None:
        """Write one sample's members (all of one key)."""
        self._tar.add_many(members)
        self.n_samples += 1

    def add_copied(self, src_fd: int, offset: int, length: int, n_samples: int) -> None:
        """Append ``length`` bytes of another archive (whole members, from ``offset``) holding
        ``n_samples`` samples, copied by the kernel where it can (``copy_file_range``)."""
        self._fh.flush()
        out, done = self._fh.fileno(), 0
        try:
            while done < length:
                n = os.copy_file_range(src_fd, out, length - done, offset + done)
                if n == 0:
                    raise OSError("copy_file_range copied nothing")
                done += n
        except (OSError, AttributeError):  # another filesystem, or no such call here
            os.lseek(out, 0, os.SEEK_END)
            while done < length:
                chunk = os.pread(src_fd, min(length - done, 1 << 24), offset + done)
                if not chunk:
                    raise OSError("the source archive ended early") from None
                os.write(out, chunk)
                done += len(chunk)
        self._fh.seek(0, os.SEEK_END)
        self.n_samples += n_samples

    @property
    def full(self) -> bool:
        return self.n_samples >= self.max_samples or self.n_bytes >= self.max_bytes

    def close(self) -> ShardInfo:
        self._tar.finish()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return ShardInfo(self.name, self.n_samples, self.path.stat().st_size)

    def abort(self) -> None:
        self._fh.close()
        self.tmp.unlink(missing_ok=True)


def iter_members(path: Path) -> Iterator[tuple[str, bytes]]:
    """Stream (name, bytes) from a tar without extracting anything to disk: the archive as
    datapipe writes it is walked directly (several times faster than :mod:`tarfile`), any
    other (or a damaged one) goes through ``tarfile``, which reads what it can."""
    with open(path, "rb") as fh:
        try:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            data = None
        if data is not None:
            with data:
                try:
                    members = walk_members(data)
                except ValueError:
                    members = None
                if members is not None:
                    for name, start, size in members:
                        yield name, data[start : start + size]
                    return
    with tarfile.open(path, mode="r|") as tar:
        for info in tar:
            if not info.isfile():
                continue
            fh = tar.extractfile(info)
            if fh is not None:
                yield info.name, fh.read()


def iter_samples(shard_paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Decode committed samples back into records (``key`` plus fields), shard by shard in
    the order given, samples in the order they were written. Used to feed Sink stages, by
    ``datapipe show`` and by tests; training should read with ``datapipe.stream``."""
    for path in shard_paths:
        current: dict[str, Any] = {}
        for name, data in iter_members(path):
            key, fname, ext = split_member(name)
            if current and current["key"] != key:
                yield current
                current = {}
            current["key"] = key
            current[fname] = decode_value(ext, data)
        if current:
            yield current


def rewrite_shard(path: Path, keep_key: Callable[[str], bool]) -> ShardInfo:
    """Rewrite a shard keeping only samples whose key passes ``keep_key`` (atomic)."""
    tmp = tmp_name(path)
    n, last = 0, None
    with open(tmp, "wb") as fh:
        out = TarStream(fh)
        for name, data in iter_members(path):
            key = split_member(name)[0]
            if keep_key(key):
                out.add(name, data)
                if key != last:
                    n, last = n + 1, key
        out.finish()
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return ShardInfo(path.name, n, path.stat().st_size)

"""Minimal POSIX ustar writing: headers built directly, members streamed to a file.

Shards are written this way rather than with :mod:`tarfile` because a header built here costs
a fraction of ``TarInfo.tobuf`` (a sample has several members); the bytes are identical
(tests compare them). Reading still goes through :mod:`tarfile`.
"""

from __future__ import annotations

import mmap
from typing import BinaryIO

import numpy as np

BLOCK = 512  # bytes of a header, and the unit members are padded to
_FIXED = b"0000644\0" + b"0000000\0" * 2  # mode, uid, gid


def ustar_split(name: str) -> tuple[bytes, bytes]:
    """(prefix, name) fields for a member name; ValueError when ustar cannot hold it."""
    raw = name.encode()
    if len(raw) <= 100:
        return b"", raw
    cut = raw.find(b"/")  # the shortest prefix that leaves a name of <= 100 bytes
    while cut > 0 and len(raw) - cut - 1 > 100:
        cut = raw.find(b"/", cut + 1)
    if cut <= 0 or cut > 155:
        raise ValueError(f"tar member name too long for ustar: {name!r}")
    return raw[:cut], raw[cut + 1 :]


def ustar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header for a regular file (mtime 0, root-owned), built directly: about
    ten times cheaper than ``tarfile.TarInfo.tobuf`` and byte-for-byte the same layout."""
    prefix, raw = ustar_split(name)
    if size >= 8**11:
        raise ValueError("tar member larger than 8 GiB")
    octal = b"%011o\0" % size
    checksum = _CONSTANT_SUM + sum(raw) + sum(prefix) + sum(octal)
    return b"".join(
        (
            raw.ljust(100, b"\0"),
            _FIXED,
            octal,
            _MIDDLE % checksum,
            prefix.ljust(155, b"\0"),
            b"\0" * 12,
        )
    )


#: mtime, checksum (spaces while summed), type, link name, magic, version, and the empty
#: uname, gname, devmajor, devminor fields (tarfile leaves them empty)
_MIDDLE = b"00000000000\0" + b"%06o\0 " + b"0" + b"\0" * 100 + b"ustar\x0000" + b"\0" * 80
_CONSTANT_SUM = sum(_FIXED) + sum(_MIDDLE.replace(b"%06o\0 ", b" " * 8))


def member_bytes(name: str, data: bytes) -> bytes:
    """One member as it sits in the archive: header, data, padding to the next block."""
    return b"".join((ustar_header(name, len(data)), data, _PADS[-len(data) % BLOCK]))


_PADS = [b"\0" * n for n in range(BLOCK)]


class TarStream:
    """Appends members to an open binary file; ``finish`` writes the end-of-archive blocks."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh

    def add(self, name: str, data: bytes) -> None:
        self.fh.write(member_bytes(name, data))

    def add_many(self, members: list[tuple[str, bytes]]) -> None:
        """Several members in one write (a sample's: one call instead of three per member)."""
        self.fh.write(b"".join([member_bytes(name, data) for name, data in members]))

    def finish(self) -> None:
        self.fh.write(b"\0" * (2 * BLOCK))


def walk_members(data: bytes | memoryview | mmap.mmap) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of every member of a ustar archive as :class:`TarStream`
    writes it (regular files, then two zero blocks, nothing after); ValueError for anything
    else: a bad checksum, another member type, a member running past the end.

    The walk reads only each header's size and names; the checksums, types and magic of all
    headers are then checked at once (numpy), a few microseconds a member in all."""
    end = len(data)
    found: list[tuple[str, int, int]] = []
    starts: list[int] = []
    pos = 0
    while pos + BLOCK <= end and data[pos : pos + 1] != b"\0":
        try:
            size = int(data[pos + 124 : pos + 135], 8)
        except ValueError:
            raise ValueError(f"member header at byte {pos} is not a ustar header") from None
        name = bytes(data[pos : pos + 100]).split(b"\0", 1)[0]
        if data[pos + 345 : pos + 346] != b"\0":
            name = bytes(data[pos + 345 : pos + 500]).split(b"\0", 1)[0] + b"/" + name
        starts.append(pos)
        found.append((name.decode("utf-8", "strict"), pos + BLOCK, size))
        pos += BLOCK + size + (-size % BLOCK)
    if pos + 2 * BLOCK != end or bytes(data[pos:end]) != bytes(2 * BLOCK):
        raise ValueError("the archive does not end with its two end-of-archive blocks")
    if starts:
        # the headers copied out (fancy indexing copies), so no view of ``data`` outlives this
        # line: an mmap with a live view cannot be closed, not even while an error unwinds
        raw = np.frombuffer(data, np.uint8)
        index = np.asarray(starts, np.int64)
        heads = raw[: len(raw) // BLOCK * BLOCK].reshape(-1, BLOCK)[index // BLOCK]
        del raw
        _check_headers(heads, index)
    return found


def _check_headers(heads: np.ndarray, starts: np.ndarray) -> None:
    """Checksum, type (regular file) and magic of the headers (rows of ``heads``, found at
    ``starts``), all at once."""
    field = heads[:, 148:156]
    digits = field[:, :6].astype(np.int64) - ord("0")
    if (digits < 0).any() or (digits > 7).any():
        raise ValueError("a member header's checksum is not an octal number")
    stored = digits @ (8 ** np.arange(5, -1, -1))
    computed = heads.sum(axis=1, dtype=np.int64) - field.sum(axis=1, dtype=np.int64) + 256
    if (stored != computed).any():
        bad = int(starts[np.argmax(stored != computed)])
        raise ValueError(f"member header at byte {bad} has a bad checksum")
    kinds = heads[:, 156]
    if not np.isin(kinds, (ord("0"), 0)).all() or (heads[:, 257:263] != _MAGIC).any():
        raise ValueError("a member is not a regular ustar file")


_MAGIC = np.frombuffer(b"ustar\0", np.uint8)

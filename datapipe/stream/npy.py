"""Decoding ``.npy`` and ``.json`` members in place, without pickle and without copies.

An ``.npy`` member is a header (magic, version, a Python-literal dict: dtype, order, shape)
followed by the raw array bytes. The header is parsed with numpy's own safe readers
(``numpy.lib.format.read_array_header_*``, ``ast.literal_eval`` underneath, never pickle) and
cached by its exact bytes, since every sample of a field usually shares it; the array is then
a view on the caller's writable buffer (``np.frombuffer``), so ``torch.from_numpy`` takes it
as it is. Object dtypes are refused, as ``np.load(allow_pickle=False)`` does, and the data
size must match the header exactly. Headers of other versions fall back to ``np.load``.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from functools import lru_cache
from typing import Any

import numpy as np

_MAGIC = b"\x93NUMPY"


@lru_cache(maxsize=256)
def _parse_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    fp = io.BytesIO(header)
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    if dtype.hasobject:
        raise ValueError("object arrays cannot be loaded without pickle")
    return dtype, tuple(shape), bool(fortran)


def _header_length(buf: bytearray | memoryview, off: int, size: int) -> int | None:
    """Bytes of the header, or None for a version this fast path does not handle."""
    if size < 10 or bytes(buf[off : off + 6]) != _MAGIC:
        raise ValueError("not an .npy member (bad magic)")
    major = buf[off + 6]
    if major == 1:
        return 10 + int.from_bytes(buf[off + 8 : off + 10], "little")
    if major == 2 and size >= 12:
        return 12 + int.from_bytes(buf[off + 8 : off + 12], "little")
    return None


def decode_npy(buf: bytearray, off: int, size: int) -> np.ndarray:
    """The array stored in ``buf[off : off + size]``, sharing ``buf``'s memory."""
    hlen = _header_length(buf, off, size)
    if hlen is None:
        return np.load(io.BytesIO(bytes(buf[off : off + size])), allow_pickle=False)
    if hlen > size:
        raise ValueError(f"npy header of {hlen} bytes in a member of {size}")
    dtype, shape, fortran = _parse_header(bytes(buf[off : off + hlen]))
    count = math.prod(shape)
    if hlen + count * dtype.itemsize != size:
        raise ValueError(
            f"npy data holds {size - hlen} bytes, its header says {count * dtype.itemsize}"
        )
    if count == 0:
        return np.empty(shape, dtype=dtype)
    flat = np.frombuffer(buf, dtype=dtype, count=count, offset=off + hlen)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def decode_member(ext: str, buf: bytearray, off: int, size: int) -> Any:
    """One member of a sample: ``npy`` or ``npy.gz`` -> array, ``json`` -> value, ``bin``
    -> bytes."""
    if ext == "npy":
        return decode_npy(buf, off, size)
    if ext == "npy.gz":
        raw = bytearray(gzip.decompress(memoryview(buf)[off : off + size]))
        return decode_npy(raw, 0, len(raw))
    if ext == "json":
        return json.loads(str(memoryview(buf)[off : off + size], "utf-8"))
    if ext == "bin":
        return bytes(buf[off : off + size])
    raise ValueError(f"unknown member extension {ext!r}")

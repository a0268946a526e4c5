"""Record <-> tar members, WebDataset style: ``KEY.FIELD.npy`` for arrays (``.npy.gz`` when
compressed), ``.json`` for scalars, strings, lists and dicts, ``.bin`` for bytes. No pickle
anywhere."""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from datapipe.errors import ItemError
from datapipe.keys import check_key
from datapipe.keys import sanitize_key as sanitize_key  # datapipe.ops names it here
from datapipe.store.tarformat import ustar_split

#: gzip level of compressed arrays: level 1 is within 10 % of the size of 6, several times faster
GZIP_LEVEL = 1


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_has_nonfinite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_nonfinite(v) for v in value)
    return False


def encode_value(name: str, value: Any, compress: bool = False) -> tuple[str, bytes]:
    """One field to (extension, bytes); ``compress``: an array as gzip'd ``npy.gz``."""
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise ItemError(
                "invalid", f"field {name!r} is an object array; only plain dtypes are stored"
            )
        data = npy_bytes(value)
        return ("npy.gz", gzip_bytes(data)) if compress else ("npy", data)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bin", bytes(value)
    if isinstance(value, np.generic):
        value = value.item()
    if type(value) is int or type(value) is str:  # the common scalars, as json.dumps writes them
        return "json", (b"%d" % value) if type(value) is int else _json_str(value).encode()
    if _has_nonfinite(value):
        raise ItemError("nonfinite", f"field {name!r} holds NaN or infinity")
    try:
        return "json", json.dumps(value, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ItemError("invalid", f"field {name!r} cannot be stored: {exc}") from None


_json_str = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str
_npy_headers: dict[tuple[np.dtype, tuple[int, ...]], bytes] = {}


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as the bytes ``np.save`` writes, the header built once per dtype and shape
    (``np.save`` spends most of a small array's time building it)."""
    if not array.flags.c_contiguous:  # not ascontiguousarray: it makes a 0-d array 1-d
        array = array.copy(order="C")
    key = (array.dtype, array.shape)  # the dtype itself: a structured one has fields
    header = _npy_headers.get(key)
    if header is None:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        data = buf.getvalue()
        if len(_npy_headers) < 1024:
            _npy_headers[key] = data[: len(data) - array.nbytes]
        return data
    return header + array.tobytes()


#: gzip header: deflate, no flags, mtime 0, XFL 4 (fastest), OS 255 (unknown)
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"


def gzip_bytes(data: bytes) -> bytes:
    """``data`` as a gzip member whose header does not depend on the time or the platform
    (``gzip.compress`` writes the OS zlib was built for), so the bytes are those of the data
    and of zlib's deflate alone."""
    deflate = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
    body = deflate.compress(data) + deflate.flush()
    return _GZIP_HEADER + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def encode_sample(
    key: str,
    record: Mapping[str, Any],
    fields: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    compress: bool | Iterable[str] = False,
) -> list[tuple[str, bytes]]:
    """Tar members for one sample, sorted by name; ``compress``: True (every array) or the
    names of the array fields to gzip."""
    check_key(key)
    zipped = compress if isinstance(compress, bool) else frozenset(compress)
    wanted = set(fields) if fields is not None else None
    skip = set(exclude) | {"key"}
    members = []
    for name in sorted(record):
        if name in skip or (wanted is not None and name not in wanted):
            continue
        gz = zipped if isinstance(zipped, bool) else name in zipped
        ext, data = encode_value(name, record[name], gz)
        member = f"{key}.{name}.{ext}"
        try:
            ustar_split(member)
        except ValueError:
            raise ItemError(
                "invalid", f"member name {member!r} is too long for a tar shard"
            ) from None
        members.append((member, data))
    return members


def decode_value(ext: str, data: bytes) -> Any:
    """Inverse of :func:`encode_value`."""
    if ext == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    if ext == "npy.gz":
        return np.load(io.BytesIO(gzip.decompress(data)), allow_pickle=False)
    if ext == "json":
        return json.loads(data)
    if ext == "bin":
        return data
    raise ValueError(f"unknown member extension {ext!r}")


def split_member(name: str) -> tuple[str, str, str]:
    """``a/b.field.npy`` -> (key, field, ext)."""
    head, _, base = name.rpartition("/")
    stem, field, ext = base.split(".", 2) if base.count(".") >= 2 else (base, "", "")
    return (f"{head}/{stem}" if head else stem), field, ext

"""Record <-> tar members, WebDataset style: ``KEY.FIELD.npy`` for arrays (``.npy.gz`` when
compressed), ``.json`` for scalars, strings, lists and dicts, ``.bin`` for bytes. No pickle
anywhere."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import re
import struct
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from datapipe.errors import ItemError
from datapipe.store.tarformat import ustar_split

#: Keys are relative, slash-separated names without dots (WebDataset splits at the first dot).
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-@]+(/[A-Za-z0-9_\-@]+)*$")
MAX_KEY_LENGTH = 200
#: gzip level of compressed arrays: level 1 is within 10 % of the size of 6, several times faster
GZIP_LEVEL = 1


def check_key(key: str, *, item: bool = False) -> str:
    """Refuse keys that could name a path outside the output or confuse a tar reader.

    ``item=True`` checks an input key, which may not contain '@' (reserved for the samples
    an expanding stage derives from it: ``KEY@0003``)."""
    if item and isinstance(key, str) and "@" in key:
        raise ItemError("invalid", f"input key {key!r} contains '@', reserved for derived samples")
    if not isinstance(key, str) or not key:
        raise ItemError("security", f"empty or non-string sample key {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ItemError("security", f"sample key longer than {MAX_KEY_LENGTH} characters")
    if not KEY_PATTERN.match(key) or any(part in ("", ".", "..") for part in key.split("/")):
        raise ItemError("security", f"unsafe sample key {key!r}: use letters, digits, _ - and /")
    return key


def sanitize_key(relpath: str) -> str:
    """A stable key from a relative path: drop the suffix, map unsafe characters to '_'.

    When characters had to be replaced, a short hash of the original path is appended, so
    ``a b.jpg`` and ``a_b.jpg`` (or ``é.jpg`` and ``è.jpg``) still get different keys.
    """
    stem = relpath.rsplit(".", 1)[0] if "." in relpath.rsplit("/", 1)[-1] else relpath
    parts = [p for p in stem.split("/") if p not in ("", ".")]
    safe = [re.sub(r"[^A-Za-z0-9_\-]", "_", p) for p in parts]
    key = "/".join(safe)
    if safe != parts:
        key += "_" + hashlib.blake2b(relpath.encode(), digest_size=4).hexdigest()
    return key


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
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(value), allow_pickle=False)
        if compress:
            return "npy.gz", gzip_bytes(buf.getvalue())
        return "npy", buf.getvalue()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bin", bytes(value)
    if isinstance(value, np.generic):
        value = value.item()
    if _has_nonfinite(value):
        raise ItemError("nonfinite", f"field {name!r} holds NaN or infinity")
    try:
        return "json", json.dumps(value, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ItemError("invalid", f"field {name!r} cannot be stored: {exc}") from None


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


def item_key_of(sample_key: str) -> str:
    """The input key a sample came from: samples of an expanded item are ``KEY@NNNN``."""
    return sample_key.split("@", 1)[0]

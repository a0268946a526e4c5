"""Content digests of the files a pipeline names (model weights, TorchScript modules) and of
Fit states, for the fingerprint: what decides an output is hashed, not its name."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

_CHUNK = 1 << 20
#: (absolute path, size, mtime_ns) -> sha256, so an unchanged file is hashed once per process
_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's contents ("missing" when it cannot be read).

    Cached by (path, size, mtime_ns), so asking again about an unchanged file is a ``stat``.
    """
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    digest = _FILE_CACHE.get(key)
    if digest is None:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
        except OSError:
            return "missing"
        digest = _FILE_CACHE[key] = h.hexdigest()
    return digest


def state_digest(state: Any) -> str:
    """A stable hash of a Fit state: nested dicts/lists of numbers, strings and arrays.

    Arrays count by dtype, shape and bytes; dict order does not matter.
    """
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()[:20]


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, np.ndarray) or type(value).__module__.startswith("torch"):
        arr = np.ascontiguousarray(np.asarray(value))
        h.update(f"a{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    elif isinstance(value, Mapping):
        h.update(b"{")
        for k in sorted(value, key=str):
            h.update(json.dumps(str(k)).encode())
            _feed(h, value[k])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(value, (bytes, bytearray)):
        h.update(b"b%d:" % len(value) + bytes(value))
    elif isinstance(value, np.generic):
        _feed(h, value.item())
    else:
        h.update(json.dumps(value, sort_keys=True, default=repr).encode())

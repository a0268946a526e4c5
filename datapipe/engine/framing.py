"""A data-only framing for values that cross a trust boundary: never a pickle.

Children parse hostile media; what they hand back (results, records kept on disk) is read
with this framing, so a child that a crafted file has taken over cannot run code in the
reader. A message is::

    b"DPW1" | u32 little-endian header length | JSON header | buffer 0 | buffer 1 | ...

The header holds ``{"v": 1, "kind": ..., "buffers": [len, ...], ...}``. A value is a JSON
node: ``null``/bools/numbers/strings and JSON arrays (lists) stand for themselves; a JSON
object is always a tag: ``{"t": [...]}`` a tuple, ``{"d": [[k, v], ...]}`` a dict,
``{"b": i}`` the bytes of buffer ``i``, ``{"a": i, "dtype": descr, "shape": [...]}`` an array
and ``{"s": i, "dtype": descr}`` a numpy scalar (descr as ``np.lib.format.dtype_to_descr``).
Arrays are raw C-order buffers of plain dtypes (no object dtype); the decoder checks that
shape x itemsize matches each buffer and that the buffers fill the message exactly. Anything
off raises :class:`WireError`.
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from datapipe.errors import DatapipeError

MAGIC = b"DPW1"
VERSION = 1
#: nesting allowed in a value (a record field holding lists of dicts of ...)
MAX_DEPTH = 64
MAX_NDIM = 64
_PREFIX = struct.Struct("<4sI")
_DESCR = re.compile(r"^[<>|=][biufcmMSUV]\d+(\[\w+\])?$")
PLAIN = frozenset({type(None), bool, int, float, str})


class WireError(DatapipeError):
    """A message that does not follow the framing (or a value it cannot carry)."""


class Encoder:
    def __init__(self) -> None:
        self.buffers: list[Any] = []

    def _buffer(self, data: Any) -> int:
        self.buffers.append(data)
        return len(self.buffers) - 1

    def node(self, value: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
        if type(value) in PLAIN:
            return value
        if isinstance(value, (np.ndarray, np.generic)):  # before float: np.float64 is one
            return self._array(value)
        if isinstance(value, (bool, int, float, str)):  # subclasses (an IntEnum, np.str_)
            return value
        if isinstance(value, list):
            return [self.node(v, depth + 1) for v in value]
        if isinstance(value, tuple):
            return {"t": [self.node(v, depth + 1) for v in value]}
        if isinstance(value, dict):
            return {
                "d": [[self.node(k, depth + 1), self.node(v, depth + 1)] for k, v in value.items()]
            }
        if isinstance(value, (bytes, bytearray, memoryview)):
            return {"b": self._buffer(bytes(value) if isinstance(value, memoryview) else value)}
        raise WireError(f"a {type(value).__name__} value cannot be sent")

    def _array(self, value: np.ndarray | np.generic) -> dict[str, Any]:
        arr = np.asarray(value)  # not ascontiguousarray: it turns 0-d arrays into 1-d ones
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        if arr.dtype.hasobject:
            raise WireError(f"an array of dtype {arr.dtype} (object) cannot be sent")
        descr = npformat.dtype_to_descr(arr.dtype)
        if isinstance(value, np.generic):
            return {"s": self._buffer(_raw(arr)), "dtype": descr}
        return {"a": self._buffer(_raw(arr)), "dtype": descr, "shape": list(arr.shape)}


def _raw(arr: np.ndarray) -> Any:
    """The bytes of a C-contiguous array, without a copy where numpy allows it."""
    try:
        return arr.reshape(-1).view(np.uint8)
    except (ValueError, TypeError):
        return arr.tobytes()


def frame(header: dict[str, Any], buffers: list[Any]) -> bytes:
    header["buffers"] = [memoryview(b).nbytes for b in buffers]
    try:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    except ValueError as exc:  # an int too long to print, a circular list
        raise WireError(f"cannot write the header: {exc}") from None
    return b"".join([_PREFIX.pack(MAGIC, len(text)), text, *buffers])


def encode_value(value: Any) -> bytes:
    """Any value the wire carries (nested lists, dicts, tuples, arrays, bytes, scalars) as one
    message, e.g. records kept on disk between two passes; see :func:`decode_value`."""
    enc = Encoder()
    return frame({"v": VERSION, "kind": "value", "value": enc.node(value)}, enc.buffers)


def decode_value(data: bytes | bytearray | memoryview) -> Any:
    """The value of an :func:`encode_value` message; :class:`WireError` for anything else."""
    try:
        header, dec = parse(data)
        if header.get("kind") != "value" or set(header) != {"v", "kind", "value", "buffers"}:
            raise WireError(f"not a value message (kind {header.get('kind')!r})")
        return dec.node(header["value"])
    except (WireError, MemoryError):
        raise
    except Exception as exc:
        raise WireError(f"undecodable value: {exc!r}") from None


def is_int(value: Any) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


class Decoder:
    def __init__(self, view: memoryview, lengths: list[int], start: int) -> None:
        self.view = view
        self.spans = []
        for n in lengths:
            self.spans.append((start, start + n))
            start += n

    def _span(self, index: Any) -> memoryview:
        if not is_int(index) or not 0 <= index < len(self.spans):
            raise WireError(f"buffer index {index!r} out of range")
        a, b = self.spans[index]
        return self.view[a:b]

    def buffer(self, index: Any) -> bytes:
        """The bytes of buffer ``index`` (a ``{"b": index}`` node)."""
        return bytes(self._span(index))

    def node(self, node: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
        if type(node) in PLAIN:
            return node
        if isinstance(node, list):
            return [self.node(v, depth + 1) for v in node]
        if not isinstance(node, dict):
            raise WireError(f"unexpected JSON value {type(node).__name__}")
        keys = set(node)
        if keys == {"t"} and isinstance(node["t"], list):
            return tuple(self.node(v, depth + 1) for v in node["t"])
        if keys == {"d"} and isinstance(node["d"], list):
            out = {}
            for pair in node["d"]:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise WireError("a dict entry is not a [key, value] pair")
                key = self.node(pair[0], depth + 1)
                value = self.node(pair[1], depth + 1)
                try:
                    out[key] = value
                except TypeError:
                    raise WireError(f"unhashable dict key {type(key).__name__}") from None
            return out
        if keys == {"b"}:
            return bytes(self._span(node["b"]))
        if keys == {"a", "dtype", "shape"}:
            return self._array(node["a"], node["dtype"], node["shape"])
        if keys == {"s", "dtype"}:
            return self._array(node["s"], node["dtype"], [])[()]
        raise WireError(f"unknown tag {sorted(keys)}")

    def _array(self, index: Any, descr: Any, shape: Any) -> np.ndarray:
        dtype = _dtype(descr)
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise WireError(f"bad array shape {shape!r}")
        if not all(is_int(n) and n >= 0 for n in shape):
            raise WireError(f"bad array shape {shape!r}")
        buf = self._span(index)
        if dtype.itemsize == 0 and math.prod(shape) > 0:
            raise WireError(f"zero-size dtype {dtype} with elements")
        if math.prod(shape) * dtype.itemsize != buf.nbytes:
            raise WireError(
                f"array of shape {tuple(shape)} and dtype {dtype} does not fill its "
                f"{buf.nbytes}-byte buffer"
            )
        try:
            if buf.nbytes == 0:
                return np.zeros(shape, dtype)
            return np.frombuffer(buf, dtype=dtype).reshape(shape).copy()
        except (ValueError, TypeError, MemoryError) as exc:
            raise WireError(f"bad array: {exc}") from None


def _descr(descr: Any, depth: int = 0) -> Any:
    """JSON descr (lists) back to numpy's form (tuples), checking every leaf."""
    if depth > 8:
        raise WireError("dtype nested too deep")
    if isinstance(descr, str):
        if not _DESCR.match(descr):
            raise WireError(f"bad dtype {descr!r}")
        return descr
    if not isinstance(descr, list) or not descr:
        raise WireError(f"bad dtype {descr!r}")
    fields = []
    for f in descr:
        if not (isinstance(f, list) and len(f) in (2, 3) and isinstance(f[0], str)):
            raise WireError(f"bad structured dtype field {f!r}")
        if len(f) == 3 and not (
            isinstance(f[2], list) and all(is_int(n) and 0 <= n < 2**20 for n in f[2])
        ):
            raise WireError(f"bad structured dtype field {f!r}")
        sub = _descr(f[1], depth + 1)
        fields.append((f[0], sub, tuple(f[2])) if len(f) == 3 else (f[0], sub))
    return fields


def _dtype(descr: Any) -> np.dtype:
    checked = _descr(descr)
    try:
        dtype = npformat.descr_to_dtype(checked)
    except Exception as exc:  # numpy raises several types for a descr it cannot read
        raise WireError(f"bad dtype {descr!r}: {exc}") from None
    if dtype.hasobject:
        raise WireError(f"dtype {descr!r} holds Python objects")
    return dtype


def parse(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], Decoder]:
    view = memoryview(data).cast("B")
    if view.nbytes < _PREFIX.size:
        raise WireError(f"message of {view.nbytes} bytes is shorter than its prefix")
    magic, hlen = _PREFIX.unpack(view[: _PREFIX.size])
    if magic != MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r}")
    start = _PREFIX.size + hlen
    if start > view.nbytes:
        raise WireError(f"header of {hlen} bytes runs past the {view.nbytes}-byte message")
    try:
        header = json.loads(bytes(view[_PREFIX.size : start]).decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"bad header: {exc}") from None
    if not isinstance(header, dict) or not (is_int(header.get("v")) and header["v"] == VERSION):
        raise WireError("header is not a version-1 object")
    lengths = header.get("buffers")
    if not (isinstance(lengths, list) and all(is_int(n) and n >= 0 for n in lengths)):
        raise WireError(f"bad buffer lengths {lengths!r}")
    if start + sum(lengths) != view.nbytes:
        raise WireError(
            f"header declares {sum(lengths)} bytes of buffers, the message holds "
            f"{view.nbytes - start}"
        )
    return header, Decoder(view, lengths, start)

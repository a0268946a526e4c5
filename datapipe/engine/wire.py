"""What a worker child sends back to the parent: data only, never a pickle.

Children parse hostile media; a child that a crafted file has taken over must not be able to
run code in the parent. So child -> parent messages are a fixed framing, decoded without
pickle and validated field by field::

    b"DPW1" | u32 little-endian header length | JSON header | buffer 0 | buffer 1 | ...

The header holds ``{"v": 1, "kind": "ready" | "result", "buffers": [len, ...], ...}``. A
result carries the init fields of :class:`ItemResult` under ``"fields"`` (those holding their
plain default left out), each value a JSON node: ``null``/bools/numbers/strings and JSON
arrays (lists) stand for themselves; a JSON object is always a tag: ``{"t": [...]}`` a
tuple, ``{"d": [[k, v], ...]}`` a dict, ``{"b": i}`` the bytes of buffer ``i``, ``{"a": i,
"dtype": descr, "shape": [...]}`` an array and ``{"s": i, "dtype": descr}`` a numpy scalar
(descr as ``np.lib.format.dtype_to_descr``).
Arrays are raw C-order buffers of plain dtypes (no object dtype, as ``np.load(...,
allow_pickle=False)``); the decoder checks that shape x itemsize matches the buffer and that
the buffers fill the message exactly, then checks each field against ItemResult's
annotations. Anything off raises :class:`WireError`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
import types
import typing
from collections.abc import Callable
from typing import Any, Union

import numpy as np
from numpy.lib import format as npformat

from datapipe.engine.runner import ItemResult
from datapipe.errors import ERROR_CLASSES, DatapipeError

MAGIC = b"DPW1"
VERSION = 1
STATUSES = ("ok", "error", "filtered")
#: nesting allowed in a value (a record field holding lists of dicts of ...)
MAX_DEPTH = 64
MAX_NDIM = 64
_PREFIX = struct.Struct("<4sI")
_DESCR = re.compile(r"^[<>|=][biufcmMSUV]\d+(\[\w+\])?$")
_PLAIN = frozenset({type(None), bool, int, float, str})
_FIELDS = tuple(f for f in dataclasses.fields(ItemResult) if f.init)
_NAMES = tuple(f.name for f in _FIELDS)
_HINTS = typing.get_type_hints(ItemResult)
_NO_DEFAULT = object()
#: plain default values (None, 0, "", [], {}); a field holding its default is left out
_DEFAULTS = {
    f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
    for f in _FIELDS
    if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
}
_DEFAULTS = {k: v for k, v in _DEFAULTS.items() if type(v) in _PLAIN | {list, dict}}


class WireError(DatapipeError):
    """A message that does not follow the worker protocol (or a value it cannot carry)."""


@dataclasses.dataclass(frozen=True)
class Ready:
    """The handshake of a child that has built its runner and waits for tasks."""

    pid: int


# -- encoding (in the child) ----------------------------------------------------------------
class _Encoder:
    def __init__(self) -> None:
        self.buffers: list[Any] = []

    def _buffer(self, data: Any) -> int:
        self.buffers.append(data)
        return len(self.buffers) - 1

    def node(self, value: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
        if type(value) in _PLAIN:
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


def _frame(header: dict[str, Any], buffers: list[Any]) -> bytes:
    header["buffers"] = [memoryview(b).nbytes for b in buffers]
    try:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    except ValueError as exc:  # an int too long to print, a circular list
        raise WireError(f"cannot write the header: {exc}") from None
    return b"".join([_PREFIX.pack(MAGIC, len(text)), text, *buffers])


def encode_result(result: ItemResult) -> bytes:
    """``result`` as one message; :class:`WireError` for a value the wire cannot carry."""
    enc = _Encoder()
    fields = {}
    for name in _NAMES:
        value = getattr(result, name)
        default = _DEFAULTS.get(name, _NO_DEFAULT)
        if value is default or (type(value) is type(default) and value == default):
            continue  # the decoder fills it in: less to write and to read
        try:
            fields[name] = enc.node(value)
        except WireError as exc:
            raise WireError(f"field {name!r}: {exc}") from None
    return _frame({"v": VERSION, "kind": "result", "fields": fields}, enc.buffers)


def encode_ready(pid: int) -> bytes:
    """The handshake message."""
    return _frame({"v": VERSION, "kind": "ready", "pid": int(pid)}, [])


# -- decoding (in the parent) ---------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Decoder:
    def __init__(self, view: memoryview, lengths: list[int], start: int) -> None:
        self.view = view
        self.spans = []
        for n in lengths:
            self.spans.append((start, start + n))
            start += n

    def _span(self, index: Any) -> memoryview:
        if not _is_int(index) or not 0 <= index < len(self.spans):
            raise WireError(f"buffer index {index!r} out of range")
        a, b = self.spans[index]
        return self.view[a:b]

    def node(self, node: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
        if type(node) in _PLAIN:
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
        if not all(_is_int(n) and n >= 0 for n in shape):
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
            isinstance(f[2], list) and all(_is_int(n) and 0 <= n < 2**20 for n in f[2])
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


Check = Callable[[Any], bool]


def _checker(tp: Any) -> Check:
    """A function telling whether a value matches the annotation ``tp``, built once per field
    (the forms ItemResult uses; anything else must be an instance of a class)."""
    if tp is Any:
        return lambda v: True
    if tp is type(None):
        return lambda v: v is None
    if tp is float:
        return lambda v: type(v) is float or type(v) is int
    if tp in (int, str, bytes, bool):
        return lambda v: type(v) is tp
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        alts = [_checker(a) for a in args]
        return lambda v: any(c(v) for c in alts)
    if origin is list:
        item = _checker(args[0])
        return lambda v: type(v) is list and all(map(item, v))
    if origin is tuple and args[-1:] == (Ellipsis,):
        item = _checker(args[0])
        return lambda v: type(v) is tuple and all(map(item, v))
    if origin is tuple:
        items = [_checker(a) for a in args]
        return lambda v: (
            type(v) is tuple
            and len(v) == len(items)
            and all(c(x) for c, x in zip(items, v, strict=True))
        )
    if origin is dict:
        key, value = _checker(args[0]), _checker(args[1])
        return lambda v: type(v) is dict and all(key(k) and value(x) for k, x in v.items())
    if origin is typing.Literal:
        return lambda v: v in args
    if isinstance(tp, type):
        return lambda v: isinstance(v, tp)
    raise TypeError(f"ItemResult annotation {tp!r} has no wire check")


_CHECKS = {f.name: _checker(_HINTS[f.name]) for f in _FIELDS}


def _parse(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], _Decoder]:
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
    if not isinstance(header, dict) or not (_is_int(header.get("v")) and header["v"] == VERSION):
        raise WireError("header is not a version-1 object")
    lengths = header.get("buffers")
    if not (isinstance(lengths, list) and all(_is_int(n) and n >= 0 for n in lengths)):
        raise WireError(f"bad buffer lengths {lengths!r}")
    if start + sum(lengths) != view.nbytes:
        raise WireError(
            f"header declares {sum(lengths)} bytes of buffers, the message holds "
            f"{view.nbytes - start}"
        )
    return header, _Decoder(view, lengths, start)


def decode(data: bytes | bytearray | memoryview) -> Ready | ItemResult:
    """One message from a child; :class:`WireError` for anything malformed. Never unpickles."""
    try:
        return _decode(data)
    except (WireError, MemoryError):
        raise
    except Exception as exc:  # a case the checks missed must still not stop the run
        raise WireError(f"undecodable message: {exc!r}") from None


def _decode(data: bytes | bytearray | memoryview) -> Ready | ItemResult:
    header, dec = _parse(data)
    kind = header.get("kind")
    if kind == "ready":
        if set(header) != {"v", "kind", "pid", "buffers"} or not _is_int(header["pid"]):
            raise WireError("bad ready message")
        return Ready(header["pid"])
    if kind != "result" or set(header) != {"v", "kind", "fields", "buffers"}:
        raise WireError(f"unknown message kind {kind!r}")
    fields = header["fields"]
    if not isinstance(fields, dict):
        raise WireError("result fields are not an object")
    unknown = fields.keys() - _CHECKS.keys()
    if unknown:
        raise WireError(f"unknown result fields {sorted(unknown)}")
    kwargs = {}
    for name, node in fields.items():
        value = node if type(node) in _PLAIN else dec.node(node)
        if not _CHECKS[name](value):
            raise WireError(f"field {name!r}: {type(value).__name__} value does not fit")
        kwargs[name] = value
    try:
        result = ItemResult(**kwargs)
    except TypeError as exc:
        raise WireError(f"incomplete result: {exc}") from None
    if result.status not in STATUSES:
        raise WireError(f"unknown status {result.status!r}")
    if result.error_class is not None and result.error_class not in ERROR_CLASSES:
        raise WireError(f"unknown error class {result.error_class!r}")
    return result


def decode_result(data: bytes | bytearray | memoryview) -> ItemResult:
    """Like :func:`decode`, for a message that must be a result."""
    msg = decode(data)
    if not isinstance(msg, ItemResult):
        raise WireError("expected a result, got the ready message")
    return msg

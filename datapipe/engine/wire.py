"""What a worker child sends back to the parent: data only, never a pickle.

Children parse hostile media; a child that a crafted file has taken over must not be able to
run code in the parent. So child -> parent messages use the data-only framing of
:mod:`datapipe.engine.framing` (JSON header plus raw array buffers), and each is validated
field by field: the header holds ``{"kind": "ready" | "result", ...}``; a result carries the
init fields of :class:`ItemResult` under ``"fields"`` (those holding their plain default
left out), each checked against ItemResult's annotations, its status and error class
against the closed sets. Anything off raises :class:`WireError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Union

from datapipe.engine.framing import (
    PLAIN,
    VERSION,
    Encoder,
    WireError,
    frame,
    is_int,
    parse,
)
from datapipe.engine.runner import ItemResult
from datapipe.errors import ERROR_CLASSES

STATUSES = ("ok", "error", "filtered")
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
_DEFAULTS = {k: v for k, v in _DEFAULTS.items() if type(v) in PLAIN | {list, dict}}

__all__ = [
    "Ready",
    "ShardDone",
    "ShardFailed",
    "WireError",
    "decode",
    "decode_result",
    "encode_ready",
    "encode_result",
    "encode_shard",
    "encode_shard_failed",
]


@dataclasses.dataclass(frozen=True)
class Ready:
    """The handshake of a child that has built its runner and waits for tasks."""

    pid: int


@dataclasses.dataclass(frozen=True)
class ShardDone:
    """A child wrote shard ``name`` (renamed into place) holding the samples of every item it
    reported since its last shard; the parent checks the file before it records it."""

    name: str
    n_samples: int
    n_bytes: int


@dataclasses.dataclass(frozen=True)
class ShardFailed:
    """A child could not write its shard (the output's disk): the run stops."""

    message: str


def encode_result(result: ItemResult) -> bytes:
    """``result`` as one message; :class:`WireError` for a value the wire cannot carry."""
    enc = Encoder()
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
    return frame({"v": VERSION, "kind": "result", "fields": fields}, enc.buffers)


def encode_ready(pid: int) -> bytes:
    """The handshake message."""
    return frame({"v": VERSION, "kind": "ready", "pid": int(pid)}, [])


def encode_shard(name: str, n_samples: int, n_bytes: int) -> bytes:
    """A child's shard, written and renamed into place."""
    header = {"v": VERSION, "kind": "shard", "name": name, "n_samples": int(n_samples)}
    return frame({**header, "n_bytes": int(n_bytes)}, [])


def encode_shard_failed(message: str) -> bytes:
    return frame({"v": VERSION, "kind": "shard_failed", "message": str(message)}, [])


# -- decoding (in the parent) ---------------------------------------------------------------
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
        if len(args) == 2 and type(None) in args:  # ``X | None``, the common case: no loop
            inner = _checker(next(a for a in args if a is not type(None)))
            return lambda v: v is None or inner(v)
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


Message = Ready | ItemResult | ShardDone | ShardFailed


def decode(data: bytes | bytearray | memoryview) -> Message:
    """One message from a child; :class:`WireError` for anything malformed. Never unpickles."""
    try:
        return _decode(data)
    except (WireError, MemoryError):
        raise
    except Exception as exc:  # a case the checks missed must still not stop the run
        raise WireError(f"undecodable message: {exc!r}") from None


def _decode(data: bytes | bytearray | memoryview) -> Message:
    header, dec = parse(data)
    kind = header.get("kind")
    if kind == "ready":
        if set(header) != {"v", "kind", "pid", "buffers"} or not is_int(header["pid"]):
            raise WireError("bad ready message")
        return Ready(header["pid"])
    if kind == "shard":
        keys = {"v", "kind", "name", "n_samples", "n_bytes", "buffers"}
        n, size = header.get("n_samples"), header.get("n_bytes")
        if set(header) != keys or not isinstance(header["name"], str):
            raise WireError("bad shard message")
        if not (is_int(n) and n > 0 and is_int(size) and size > 0):
            raise WireError("bad shard message")
        return ShardDone(header["name"], n, size)
    if kind == "shard_failed":
        if set(header) != {"v", "kind", "message", "buffers"}:
            raise WireError("bad shard_failed message")
        if not isinstance(header["message"], str):
            raise WireError("bad shard_failed message")
        return ShardFailed(header["message"][:1000])
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
        if name == "samples":
            value = _samples(node, dec)
            if value is not None:  # built to fit the annotation: no check needed
                kwargs[name] = value
                continue
        value = node if type(node) in PLAIN else dec.node(node)
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


def _tag(node: Any, tag: str) -> Any:
    """The content of a one-key ``{tag: ...}`` node, or None."""
    return node.get(tag) if type(node) is dict and len(node) == 1 else None


def _samples(node: Any, dec: Any) -> list[tuple[str, list[tuple[str, bytes]]]] | None:
    """The ``samples`` field read directly, every sample ``(key, [(member, bytes), ...])``
    (what every result that carries data holds): a third of the generic decode's time. None
    for anything of another shape, which the generic decode and its check then judge."""
    if type(node) is not list:
        return None
    out = []
    for sample in node:
        pair = _tag(sample, "t")
        if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str:
            return None
        if type(pair[1]) is not list:
            return None
        members = []
        for member in pair[1]:
            named = _tag(member, "t")
            if type(named) is not list or len(named) != 2 or type(named[0]) is not str:
                return None
            index = _tag(named[1], "b")
            if index is None:
                return None
            members.append((named[0], dec.buffer(index)))
        out.append((pair[0], members))
    return out


def decode_result(data: bytes | bytearray | memoryview) -> ItemResult:
    """Like :func:`decode`, for a message that must be a result."""
    msg = decode(data)
    if not isinstance(msg, ItemResult):
        raise WireError("expected a result, got the ready message")
    return msg

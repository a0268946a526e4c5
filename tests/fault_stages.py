"""Stages that misbehave on purpose, for the isolation, resume and conformance tests.

They live in an importable module (not a test file) so that worker processes can unpickle them.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import struct
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field as PField

from datapipe import registry
from datapipe.engine.runner import ItemResult
from datapipe.engine.wire import encode_result, encode_shard
from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, Fit, Map, Params, Record, Sink, Source
from datapipe.store.tarformat import TarStream


class FaultyParams(Params):
    sleep_s: float = PField(0.0, ge=0)


class Faulty(Map):
    """Behaves by the file name: 'segv' segfaults, 'hang' sleeps forever, 'hog' allocates
    without bound, 'boom' raises; anything else yields the file's size as an array."""

    name = "test.faulty"
    description = "Misbehaves on purpose, by file name."
    Params = FaultyParams
    CONSUMES = (Field("path", "str", ""),)
    PRODUCES = (Field("value", "int64", "1"),)
    isolate = True

    def process(self, record: Record, ctx: Context) -> Record:
        key = record["key"]
        if "segv" in key:
            ctypes.string_at(0)
        if "hang" in key:
            time.sleep(10_000)
        if "hog" in key:
            held = []
            while True:
                held.append(np.ones(32 * 2**20, dtype=np.uint8))
        if "boom" in key:
            raise ValueError("boom on purpose")
        if self.params.sleep_s:
            time.sleep(self.params.sleep_s)
        with open(record["path"], "rb") as fh:
            return {"value": np.array([len(fh.read())], dtype=np.int64)}


class FaultyInline(Faulty):
    """Like test.faulty but trusted (not isolated): a crash takes its process down."""

    name = "test.faulty_inline"
    description = "Misbehaves on purpose, in the worker process itself."
    isolate = False


class CountParams(Params):
    n: int = PField(5, ge=0)


class Counter(Source):
    """Keys item_000 .. item_{n-1}, no files (for engine tests)."""

    name = "test.counter"
    description = "Numbered keys with no files behind them."
    Params = CountParams
    PRODUCES = (Field("index", "int", ""), Field("label", "str", ""))

    def list_items(self, ctx: Context) -> Iterator[Record]:
        for i in range(self.params.n):
            yield {"key": f"item_{i:03d}", "index": i, "label": "even" if i % 2 == 0 else "odd"}


class Square(Map):
    name = "test.square"
    description = "index squared, as float32 array."
    CONSUMES = (Field("index", "int", ""),)
    PRODUCES = (Field("square", "float32", "1"),)

    def process(self, record: Record, ctx: Context) -> Record:
        return {"square": np.array([record["index"] ** 2], dtype=np.float32)}


class Split(Map):
    """Expands one record into ``index % 3 + 1`` samples."""

    name = "test.split"
    description = "Expands a record into several samples."
    CONSUMES = (Field("index", "int", ""),)
    PRODUCES = (Field("part", "int", ""),)

    def process(self, record: Record, ctx: Context) -> list[Record]:
        return [{"part": i} for i in range(record["index"] % 3 + 1)]


class Size(Map):
    """The file size from the listing, as an array (no file access, runs inline)."""

    name = "test.size"
    description = "File size as an int64 array."
    CONSUMES = (Field("size", "int", ""),)
    PRODUCES = (Field("nbytes", "int64", "1"),)

    def process(self, record: Record, ctx: Context) -> Record:
        return {"nbytes": np.array([record["size"]], dtype=np.int64)}


class Root(Map):
    """The square root of ``square``, tagged with the epoch; an error for ``square == 25``."""

    name = "test.root"
    description = "Square root of square, with ctx.epoch; fails on 25."
    CONSUMES = (Field("square", "float32", "1"),)
    PRODUCES = (Field("root", "float32", "1"), Field("epoch", "int", ""))

    def process(self, record: Record, ctx: Context) -> Record:
        if float(record["square"][0]) == 25:
            raise ItemError("invalid", "25 refused on purpose")
        return {"root": np.sqrt(record["square"]).astype(np.float32), "epoch": ctx.epoch}


class MeanFit(Fit):
    """Learns the mean of ``square``; a downstream stage reads it from ctx.fitted."""

    name = "test.mean_fit"
    description = "Fits the mean of a field."
    CONSUMES = (Field("square", "float32", "1"),)

    def fit(self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context) -> dict:
        return {"mean": float(np.mean([v[0] for v in view["square"]]))}


class CenterParams(Params):
    fit_node: str = "fit"


class Center(Map):
    name = "test.center"
    description = "Subtracts the fitted mean."
    Params = CenterParams
    CONSUMES = (Field("square", "float32", "1"),)
    PRODUCES = (Field("centered", "float32", "1"),)

    def process(self, record: Record, ctx: Context) -> Record:
        mean = ctx.fitted[self.params.fit_node]["mean"]
        return {"centered": (record["square"] - mean).astype(np.float32)}


class Collect(Sink):
    name = "test.collect"
    description = "Counts the committed samples."

    def consume(self, records: Iterator[Record], ctx: Context) -> dict:
        keys = sorted(r["key"] for r in records)
        return {"n": len(keys), "keys": keys}


class LargeParams(Params):
    nbytes: int = PField(1, ge=0)


class Large(Map):
    """A ``blob`` of ``nbytes`` bytes, each ``index % 251``; sleeps forever for 'hang' keys.
    With large task records too, both pipes between parent and child fill up."""

    name = "test.large"
    description = "Returns a large array."
    Params = LargeParams
    CONSUMES = (Field("index", "int", ""),)
    PRODUCES = (Field("blob", "uint8", "N"),)
    isolate = True

    def process(self, record: Record, ctx: Context) -> Record:
        if "hang" in record["key"]:
            time.sleep(10_000)
        return {"blob": np.full(self.params.nbytes, record["index"] % 251, dtype=np.uint8)}


class _Touch:
    """Unpickling this creates the file ``path``: proof that a pickle ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _wire(header: dict[str, Any], body: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return b"DPW1" + struct.pack("<I", len(text)) + text + body


def hostile_message(kind: str, key: str, marker: str) -> bytes:
    """What a child taken over by a crafted file might write on its result pipe, by kind."""
    fields = {"key": key, "status": "ok"}
    if kind == "garbage":
        return b"\x00\xffnot a datapipe message" * 3
    if kind == "pickle":
        return pickle.dumps(ItemResult(key, "ok", light={"x": _Touch(marker)}))
    if kind == "liar":  # declares a 1 MB buffer, sends 3 bytes
        return _wire({"v": 1, "kind": "result", "fields": fields, "buffers": [2**20]}, b"abc")
    if kind == "objdtype":
        arr = {"a": 0, "dtype": "|O", "shape": [1]}
        rec = {"t": [key, {"d": [["x", arr]]}]}
        body = {"v": 1, "kind": "result", "fields": {**fields, "records": [rec]}, "buffers": [8]}
        return _wire(body, bytes(8))
    if kind == "status":
        return _wire(
            {"v": 1, "kind": "result", "fields": {**fields, "status": "owned"}, "buffers": []}
        )
    if kind == "wrongkey":  # a well-formed result for another item
        return encode_result(ItemResult(key.replace("wrongkey", "good"), "ok", light={}))
    if kind == "escape":  # a well-formed result whose sample belongs to another item
        return encode_result(ItemResult(key, "ok", samples=[("x/good_0@0000", [("a.bin", b"")])]))
    raise ValueError(kind)


SHARD_ATTACKS = ("forge", "shardname", "shardlie")


def shard_attack(kind: str, key: str, shard_dir: str, prefix: str) -> list[bytes]:
    """An ok result for ``key`` said to be in a shard, and a shard message that lies: a shard
    holding another item's sample ('forge'), a name outside the child's own ('shardname'),
    a shard of the right item with the wrong byte count ('shardlie')."""
    result = encode_result(ItemResult(key, "ok", shard_samples=1))
    name = f"{prefix}-900.tar"
    member = "x/good_0" if kind == "forge" else key
    path = Path(shard_dir) / name
    with open(path, "wb") as fh:
        stream = TarStream(fh)
        stream.add(f"{member}.value.npy", b"\x93NUMPY")
        stream.finish()
    size = path.stat().st_size + (512 if kind == "shardlie" else 0)
    if kind == "shardname":
        name = "../escaped.tar"
    return [result, encode_shard(name, 1, size)]


class HostileParams(Params):
    marker: str = ""
    #: where the run's shards go (for the attacks on shards the children write)
    shard_dir: str = ""


class Hostile(Map):
    """Writes crafted bytes straight onto the worker's result pipe, as a decoder taken over by
    a hostile file could, then sleeps; keys name the attack (see :func:`hostile_message`, plus
    'huge': a 2 GB length prefix, 'stall': half a message, 'close': closes the pipe). Other
    keys yield ``value`` as test.faulty does."""

    name = "test.hostile"
    description = "Breaks the worker protocol on purpose, by file name."
    Params = HostileParams
    CONSUMES = (Field("path", "str", ""),)
    PRODUCES = (Field("value", "int64", "1"),)
    isolate = True

    def process(self, record: Record, ctx: Context) -> Record:
        key = record["key"]
        kind = key.rsplit("/", 1)[-1].split("_", 1)[0]
        if kind == "good":
            return {"value": np.array([len(key)], dtype=np.int64)}
        fd = int(sys.argv[2])  # python -m datapipe.engine.worker TASK_FD RESULT_FD MEMORY_MB
        if kind == "close":
            os.close(fd)
        elif kind == "huge":
            os.write(fd, struct.pack("!i", 2**31 - 1))
        elif kind == "stall":
            os.write(fd, struct.pack("!i", 1000) + b"DPW1")
        elif kind in SHARD_ATTACKS:
            for data in shard_attack(kind, key, self.params.shard_dir, sys.argv[4]):
                os.write(fd, struct.pack("!i", len(data)) + data)
        else:
            data = hostile_message(kind, key, self.params.marker)
            os.write(fd, struct.pack("!i", len(data)) + data)
        time.sleep(10_000)
        raise AssertionError("unreachable")


ALL = [
    Faulty,
    FaultyInline,
    Counter,
    Square,
    Split,
    Size,
    Root,
    MeanFit,
    Center,
    Collect,
    Large,
    Hostile,
]


def register_all() -> None:
    for cls in ALL:
        registry.register(cls)

"""Child -> parent messages cross as data only: round trips of real results, every malformed
message refused, and a child that writes crafted bytes (a pickle included) on its result pipe
becomes an error row without running anything in the parent."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import struct
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datapipe.engine import pool as pool_module
from datapipe.engine.channel import BIG_MESSAGE, Inbox
from datapipe.engine.pool import ProcessPool
from datapipe.engine.runner import ItemResult, ItemTask
from datapipe.engine.wire import (
    Ready,
    WireError,
    decode,
    decode_result,
    encode_ready,
    encode_result,
)
from datapipe.engine.worker import _message
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stages.io.files import Files
from datapipe.store.codec import encode_sample
from datapipe.store.manifest import Manifest
from fault_stages import Hostile, _Touch


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types, arrays by dtype, shape and content (NaN == NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def same_result(a: ItemResult, b: ItemResult) -> bool:
    return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(ItemResult))


def _deep(n: int) -> Any:
    node: Any = 1
    for _ in range(n):
        node = [node]
    return node


def record() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "key": "cat/cat_000@0001",
        "image": rng.integers(0, 255, (24, 32, 3), dtype=np.uint8),
        "mask": rng.random((4, 5)) > 0.5,
        "half": rng.standard_normal(7).astype(np.float16),
        "ids": np.arange(-3, 3, dtype=np.int64),
        "big_endian": np.arange(4, dtype=">i4"),
        "complex": np.array([1 + 2j, -0.5j], dtype=np.complex64),
        "scalar0d": np.array(3.5, dtype=np.float32),
        "bool0d": np.array(True),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "strided": np.arange(24, dtype=np.int16).reshape(4, 6)[:, ::2],
        "fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
        "labels": np.array(["cat", "dog"]),
        "when": np.array(["2024-01-02"], dtype="datetime64[ns]"),
        "vectors": np.zeros(3, dtype=[("dx", "<i2"), ("dy", "<i2"), ("w", "<f4", (2,))]),
        "np_float": np.float32(0.25),
        "np_int": np.int64(-7),
        "np_bool": np.bool_(False),
        "raw": b"\x00\x01\xff",
        "label": "caf\udce9",  # a surrogate-escaped file name
        "count": 2**70,
        "ratio": float("nan"),
        "inf": float("-inf"),
        "none": None,
        "meta": {"frames": [1, 2, (3, "x")], "nested": {"a": {"b": [np.int8(1), None]}}, 7: True},
    }


def results() -> list[ItemResult]:
    rec = record()
    stored = {k: v for k, v in rec.items() if k not in ("ratio", "inf", "meta")}  # storable
    return [
        ItemResult(
            "cat/cat_000",
            "ok",
            samples=[("cat/cat_000", encode_sample("cat/cat_000", stored, compress=True))],
            hash="ab" * 16,
            elapsed_s=0.125,
            notes={"frame_damage": 2},
            stage_s={"decode": 0.1, "resize": 0.02},
        ),
        ItemResult("cat/cat_000", "ok", records=[(rec["key"], rec), ("cat/cat_000", {})]),
        ItemResult("cat/cat_000", "ok", light={"label": "cat", "emb": [0.5, 1.0], "n": 3}),
        ItemResult.error("a/b", "decode", "corrupt", "bad marker \u00e9", "ValueError", attempt=2),
        ItemResult("a/b", "filtered", stage="select", message="not selected"),
        ItemResult("a/b", "error", error_class="crash", signal="SIGSEGV", shard_samples=0),
    ]


@pytest.mark.parametrize("index", range(len(results())))
def test_results_round_trip(index: int) -> None:
    original = results()[index]
    back = decode_result(encode_result(original))
    assert same_result(back, original), (back, original)


def test_decoded_arrays_are_writable_copies_and_dict_keys_keep_their_order() -> None:
    rec = record()
    msg = encode_result(ItemResult("k", "ok", records=[("k", rec)]))
    back = decode_result(msg).records[0][1]
    assert list(back) == list(rec)
    image = back["image"]
    assert image.flags.writeable and image.flags.owndata and image.flags.c_contiguous
    image[0, 0, 0] ^= 1  # writing to it leaves the message alone
    assert same(decode_result(msg).records[0][1]["image"], rec["image"])


def sample_value(tp: Any) -> Any:
    """A value of the annotation ``tp`` unlike any default, built from the annotation alone."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return sample_value(next(a for a in args if a is not type(None)))
    if origin is list:
        return [sample_value(args[0])]
    if origin is tuple:
        return tuple(sample_value(a) for a in args)
    if origin is dict:
        return {sample_value(args[0]): sample_value(args[1])}
    examples = {str: "s\u00e9", int: 7, float: 0.5, bytes: b"\x00b", bool: True}
    return examples.get(tp, np.arange(3, dtype=np.int16))  # Any: an array


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(ItemResult)])
def test_every_field_of_item_result_crosses(name: str) -> None:
    """The codec follows ItemResult's fields: one added later crosses without a change."""
    closed_sets = {"status": "filtered", "error_class": "corrupt"}  # checked against a set
    value = closed_sets.get(name, sample_value(typing.get_type_hints(ItemResult)[name]))
    original = dataclasses.replace(ItemResult("k", "ok"), **{name: value})
    msg = encode_result(original)
    assert name in _header(msg)["fields"]
    assert same_result(decode_result(msg), original)


def test_ready_message() -> None:
    assert decode(encode_ready(4242)) == Ready(4242)
    with pytest.raises(WireError, match="ready"):
        decode_result(encode_ready(1))


@pytest.mark.parametrize(
    "value",
    [np.array([None], dtype=object), object(), {1, 2}, Path("/tmp"), _deep(80)],
    ids=["object_array", "object", "set", "path", "too_deep"],
)
def test_values_the_wire_cannot_carry_are_refused(value: Any) -> None:
    with pytest.raises(WireError, match="records"):
        encode_result(ItemResult("k", "ok", records=[("k", {"x": value})]))


def test_worker_sends_an_error_row_for_a_result_it_cannot_encode() -> None:
    task = ItemTask("x/a", "files", {"key": "x/a"})
    bad = ItemResult("x/a", "ok", records=[("x/a", {"x": object()})], hash="h", attempt=1)
    row = decode_result(_message(bad, task))
    assert (row.key, row.status, row.error_class, row.error_type) == (
        "x/a",
        "error",
        "invalid",
        "WireError",
    )
    assert row.hash == "h" and "object" in row.message


# -- malformed messages ---------------------------------------------------------------------
def _header(msg: bytes) -> dict[str, Any]:
    (n,) = struct.unpack_from("<I", msg, 4)
    return json.loads(msg[8 : 8 + n])


def raw(header: Any, body: bytes = b"", magic: bytes = b"DPW1") -> bytes:
    """A message in the documented framing, written independently of the encoder."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return magic + struct.pack("<I", len(text)) + text + body


def result(fields: dict[str, Any], buffers: list[int] | None = None, body: bytes = b"") -> bytes:
    base = {"key": "k", "status": "ok"}
    header = {"v": 1, "kind": "result", "fields": {**base, **fields}}
    return raw({**header, "buffers": buffers or []}, body)


def array(node: dict[str, Any], nbytes: int) -> bytes:
    rec = {"t": ["k", {"d": [["x", {"a": 0, **node}]]}]}
    return result({"records": [rec]}, [nbytes], bytes(nbytes))


VALID = encode_result(ItemResult("k", "ok", records=[("k", {"x": np.arange(4)})]))

MALFORMED = {
    "empty": b"",
    "short_prefix": b"DPW1\x00",
    "bad_magic": VALID.replace(b"DPW1", b"DPW2", 1),
    "header_past_end": b"DPW1" + struct.pack("<I", 10_000) + b"{}",
    "header_not_json": raw(b"{not json"),
    "header_not_ascii": raw('{"v": 1, "k": "\u00e9"}'.encode()),
    "header_a_list": raw([1, 2]),
    "version_2": raw({"v": 2, "kind": "result", "fields": {}, "buffers": []}),
    "version_true": raw({"v": True, "kind": "ready", "pid": 1, "buffers": []}),
    "unknown_kind": raw({"v": 1, "kind": "exec", "buffers": []}),
    "ready_extra_field": raw({"v": 1, "kind": "ready", "pid": 1, "x": 1, "buffers": []}),
    "ready_pid_str": raw({"v": 1, "kind": "ready", "pid": "1", "buffers": []}),
    "buffers_missing": raw({"v": 1, "kind": "ready", "pid": 1}),
    "buffers_negative": result({}, [-4], b""),
    "buffers_claim_more": result({}, [2**20], b"abc"),
    "trailing_bytes": result({}, [], b"extra"),
    "truncated": VALID[:-3],
    "fields_a_list": raw({"v": 1, "kind": "result", "fields": [], "buffers": []}),
    "unknown_field": result({"exec": "x"}),
    "missing_key": raw({"v": 1, "kind": "result", "fields": {"status": "ok"}, "buffers": []}),
    "unknown_status": result({"status": "owned"}),
    "unknown_error_class": result({"status": "error", "error_class": "rm -rf"}),
    "key_not_str": result({"key": 5}),
    "attempt_str": result({"attempt": "1"}),
    "attempt_bool": result({"attempt": True}),
    "elapsed_str": result({"elapsed_s": "0"}),
    "hash_int": result({"hash": 5}),  # ``str | None`` fields take None or a str only
    "message_list": result({"message": ["x"]}),
    "notes_value_str": result({"notes": {"d": [["x_damage", "1"]]}}),
    "samples_not_pairs": result({"samples": [["k", []]]}),
    "sample_member_not_bytes": result({"samples": [{"t": ["k", [{"t": ["a.bin", "text"]}]]}]}),
    # the direct read of ``samples``: each shape it does not take goes to the generic check
    "samples_a_dict": result({"samples": {"t": []}}),
    "sample_key_not_str": result({"samples": [{"t": [5, []]}]}),
    "sample_triple": result({"samples": [{"t": ["k", [], []]}]}, [1], b"a"),
    "sample_members_not_list": result({"samples": [{"t": ["k", {"b": 0}]}]}, [1], b"a"),
    "sample_member_name_bytes": result(
        {"samples": [{"t": ["k", [{"t": [{"b": 0}, {"b": 0}]}]]}]}, [1], b"a"
    ),
    "sample_member_index_out_of_range": result(
        {"samples": [{"t": ["k", [{"t": ["a.bin", {"b": 1}]}]]}]}, [1], b"a"
    ),
    "sample_member_index_bool": result(
        {"samples": [{"t": ["k", [{"t": ["a.bin", {"b": True}]}]]}]}, [1], b"a"
    ),
    "sample_member_index_negative": result(
        {"samples": [{"t": ["k", [{"t": ["a.bin", {"b": -1}]}]]}]}, [1], b"a"
    ),
    "sample_member_extra_tag": result(
        {"samples": [{"t": ["k", [{"t": ["a.bin", {"b": 0}], "x": 1}]]}]}, [1], b"a"
    ),
    "records_not_a_list": result({"records": {"t": []}}),
    "light_a_list": result({"light": [1]}),
    "buffer_index_out_of_range": result({"light": {"d": [["x", {"b": 3}]]}}, [1], b"a"),
    "buffer_index_bool": result({"light": {"d": [["x", {"b": True}]]}}, [1], b"a"),
    "unknown_tag": result({"light": {"d": [["x", {"exec": "os.system"}]]}}),
    "tag_with_extra_keys": result({"light": {"d": [["x", {"t": [], "b": 0}]]}}),
    "dict_entry_not_a_pair": result({"light": {"d": [["x"]]}}),
    "unhashable_key": result({"light": {"d": [[[1], 2]]}}),
    "too_deep": result({"light": {"d": [["x", _deep(200)]]}}),
    "dtype_f3": array({"dtype": "<f3", "shape": [2]}, 6),
    "dtype_nonsense": array({"dtype": "float", "shape": [1]}, 8),
    "dtype_comma": array({"dtype": "<i4,<i4", "shape": [1]}, 8),
    "dtype_object": array({"dtype": "|O", "shape": [1]}, 8),
    "dtype_number": array({"dtype": 8, "shape": [1]}, 8),
    "dtype_struct_object": array({"dtype": [["a", "<i8"], ["b", "|O"]], "shape": [1]}, 16),
    "dtype_struct_bad_field": array({"dtype": [["a"]], "shape": [1]}, 8),
    "zero_size_dtype_with_elements": array({"dtype": "|S0", "shape": [10**12]}, 0),
    "shape_not_list": array({"dtype": "<i8", "shape": 4}, 32),
    "shape_negative": array({"dtype": "<i8", "shape": [-4]}, 32),
    "shape_float": array({"dtype": "<i8", "shape": [4.0]}, 32),
    "shape_absurd": array({"dtype": "<i8", "shape": [2**40, 2**40]}, 64),
    "shape_absurd_with_zero": array({"dtype": "<i8", "shape": [0, 2**62, 2**62]}, 0),
    "shape_too_many_dims": array({"dtype": "|u1", "shape": [1] * 65}, 1),
    "shape_buffer_mismatch": array({"dtype": "<f8", "shape": [3]}, 16),
    "scalar_wrong_size": result({"light": {"d": [["x", {"s": 0, "dtype": "<f8"}]]}}, [4], b"abcd"),
    "pickle": pickle.dumps(ItemResult("k", "ok")),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_message_is_refused(name: str) -> None:
    with pytest.raises(WireError) as info:
        decode(MALFORMED[name])
    assert not str(info.value).startswith("undecodable")  # an explicit check caught it


def test_a_pickle_is_never_loaded(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(ItemResult("k", "ok", light={"x": _Touch(str(marker))}))
    with pytest.raises(WireError):
        decode(payload)
    with pytest.raises(WireError):  # nor when it hides in a buffer of a valid frame
        decode(result({"light": {"d": [["x", {"a": 0, "dtype": "|O", "shape": [1]}]]}}, [8]))
    assert not marker.exists()
    pickle.loads(payload)  # the oracle: loading it would have created the file
    assert marker.exists()


def test_damaged_messages_decode_or_raise_wire_error() -> None:
    """Random truncations and byte flips of a real message: WireError or a valid result."""
    rng = np.random.default_rng(1)
    msg = encode_result(results()[0])
    msg2 = encode_result(results()[1])
    refused = 0
    for i in range(400):
        data = bytearray(msg if i % 2 else msg2)
        if i % 3 == 0:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[pos] = int(rng.integers(0, 256))
        try:
            assert isinstance(decode(bytes(data)), (ItemResult, Ready))
        except WireError as exc:  # by an explicit check, not by the catch-all behind them
            assert not str(exc).startswith("undecodable"), exc
            refused += 1
    assert refused > 100


# -- the result pipe ------------------------------------------------------------------------
def _pipe_inbox(max_message: int | None = None) -> tuple[Inbox, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    return Inbox(r, bytearray(1 << 16), max_message), w


def test_inbox_reassembles_messages_split_anywhere() -> None:
    """Small and large (read into their own buffer) messages, in both length framings,
    arriving in pieces of every size: each comes out whole, in order, once."""
    rng = np.random.default_rng(2)
    payloads = [b"a", b"", rng.bytes(BIG_MESSAGE * 3 + 5), b"bc" * 100, rng.bytes(70_000)]
    stream = b"".join(
        (struct.pack("!iQ", -1, len(p)) if i % 2 else struct.pack("!i", len(p))) + p
        for i, p in enumerate(payloads)
    )
    inbox, w = _pipe_inbox()
    try:
        pos = 0
        while pos < len(stream):
            step = int(rng.choice([1, 3, 4, 11, 5000, 60_000]))
            os.write(w, stream[pos : pos + step])
            pos += step
            inbox.read(1 << 20)
        os.close(w)
        inbox.read(1 << 20)
        assert [bytes(m) for m in inbox.messages] == payloads
        assert isinstance(inbox.messages[2], bytearray)  # the large one had its own buffer
        assert inbox.eof and inbox.error is None
    finally:
        os.close(inbox.fd)


@pytest.mark.parametrize(
    "prefix", [struct.pack("!i", -5), struct.pack("!i", 2**31 - 1), struct.pack("!iQ", -1, 2**40)]
)
def test_inbox_refuses_impossible_lengths(prefix: bytes) -> None:
    inbox, w = _pipe_inbox(max_message=1 << 20)
    try:
        os.write(w, prefix + b"xyz")
        inbox.read(1 << 20)
        assert inbox.error and not inbox.messages
    finally:
        os.close(w)
        os.close(inbox.fd)


# -- hostile children end to end ------------------------------------------------------------
HOSTILE = {
    "garbage": "crash",
    "pickle": "crash",
    "liar": "crash",
    "objdtype": "crash",
    "status": "crash",
    "wrongkey": "crash",
    "escape": "crash",
    "huge": "crash",  # a 2 GB length prefix: more than the child's memory cap
    "close": "crash",  # closes its result pipe and lives on
    "stall": "timeout",  # half a message, then nothing: the parent must not wait for the rest
}


def _tree(root: Path, names: list[str]) -> None:
    (root / "x").mkdir(parents=True)
    for name in names:
        (root / "x" / f"{name}.jpg").write_bytes(b"\xff\xd8" + name.encode())


def test_hostile_children_become_error_rows(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(pool_module, "_EXIT_GRACE_S", 0.5)
    marker = tmp_path / "pwned"
    good = [f"good_{i}" for i in range(4)]
    _tree(tmp_path / "in", [f"{k}_1" for k in HOSTILE] + good)
    p = Pipeline.chain(
        Files(root=str(tmp_path / "in"), kinds=["image"]), Hostile(marker=str(marker))
    )
    tasks = [
        ItemTask(r["key"], "files", r)
        for r in Files(root=str(tmp_path / "in")).list_items(p.context("files"))
    ]
    with ProcessPool(p, workers=2, timeout_s=4, memory_mb=512) as pool:
        got = {r.key: r for r in pool.imap_unordered(tasks)}
        assert pool.replaced == len(HOSTILE)
    assert not marker.exists()
    assert sorted(got) == sorted(t.key for t in tasks)
    for kind, error_class in HOSTILE.items():
        row = got[f"x/{kind}_1"]
        assert (row.status, row.error_class) == ("error", error_class), (kind, row)
        if error_class == "crash" and kind != "close":
            assert row.error_type == "WorkerProtocolError" and "malformed" in row.message
    for name in good:
        row = got[f"x/{name}"]
        assert row.status == "ok", row
        members = dict(row.samples[0][1])
        assert members[f"x/{name}.value.npy"].endswith(np.int64(len(f"x/{name}")).tobytes())


def test_run_goes_on_past_a_hostile_child(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    good = [f"good_{i}" for i in range(3)]
    _tree(tmp_path / "in", ["garbage_1", "pickle_1", *good])
    p = Pipeline.chain(
        Files(root=str(tmp_path / "in"), kinds=["image"]), Hostile(marker=str(marker))
    )
    report = run_local(p, tmp_path / "out", workers=1, timeout_s=10, memory_mb=512)
    rows = {r.key: r for r in Manifest(tmp_path / "out" / "manifest.sqlite").iter_rows()}
    assert not marker.exists()
    assert rows["x/garbage_1"].error_class == rows["x/pickle_1"].error_class == "crash"
    assert all(rows[f"x/{name}"].status == "ok" for name in good)
    assert report.counts["ok"] == len(good) and report.errors_by_class == {"crash": 2}

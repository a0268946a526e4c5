"""datapipe.stream: exactly once per epoch over real DataLoader workers and simulated ranks,
deterministic epochs, contents equal to the shards, skip-and-replace, crashes, collation."""

from __future__ import annotations

import copy
import functools
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_image_tree
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from datapipe import registry
from datapipe.errors import ConfigError, ItemError, StoreError
from datapipe.executors.local import run_local
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.stage import Context, Map, Params, Record
from datapipe.store.codec import decode_value, split_member
from datapipe.stream import collate, from_pipeline, from_shards
from datapipe.stream.npy import decode_npy
from datapipe.stream.split import epoch_order, rank_length, rank_positions, worker_positions
from fault_stages import MeanFit, Root, Size, Split, Square

N = 12
KEYS = [f"item_{i:03d}" for i in range(N)]
COUNTER = {
    "src": {"stage": "test.counter", "params": {"n": N}},
    "sq": {"stage": "test.square", "inputs": "src"},
}


def _pipeline(nodes: dict[str, Any], **extra: Any) -> Pipeline:
    return Pipeline.from_dict({"name": "t", "nodes": nodes, "output": {"shard_size": 5}, **extra})


def _run(nodes: dict[str, Any], out: Path, **extra: Any) -> Path:
    report = run_local(_pipeline(nodes, **extra), out)
    assert report.counts["error"] == 0
    return out


def _loader(ds: Any, workers: int = 0, **kw: Any) -> DataLoader:
    kw.setdefault("batch_size", 3)
    return DataLoader(
        ds, num_workers=workers, collate_fn=collate, timeout=60 if workers else 0, **kw
    )


def _keys(ds: Any, workers: int = 0, **kw: Any) -> list[str]:
    loader = _loader(ds, workers, **kw)
    if kw.get("batch_size", 3) is None:
        return [s["key"] for s in loader]
    return [k for batch in loader for k in batch["key"]]


@pytest.fixture(scope="module")
def counter_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _run(COUNTER, tmp_path_factory.mktemp("counter") / "out")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("img")
    make_image_tree(root / "photos", per_class=5)
    nodes = {
        "photos": {"stage": "files", "params": {"root": str(root / "photos"), "kinds": ["image"]}},
        "resize": {"stage": "image.resize", "inputs": "photos", "params": {"size": 16}},
    }
    return nodes, _run(nodes, root / "out")


def _tar_samples(out: Path) -> dict[str, dict[str, Any]]:
    """Independent read: every member of every shard, via tarfile + np.load / json."""
    samples: dict[str, dict[str, Any]] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar.getmembers():
                key, field, ext = split_member(info.name)
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                samples.setdefault(key, {"key": key})[field] = decode_value(ext, data)
    return samples


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b


# -- exactly once, ranks, workers ---------------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_every_sample_exactly_once_per_epoch(counter_out: Path, workers: int, world: int) -> None:
    seen: list[str] = []
    for rank in range(world):
        ds = from_shards(counter_out, seed=3, rank=rank, world_size=world)
        ds.set_epoch(1)
        keys = _keys(ds, workers)
        assert len(keys) == len(ds) == N // world
        seen += keys
    assert Counter(seen) == Counter(KEYS)


@pytest.mark.parametrize(
    ("even", "lengths", "distinct"),
    [("pad", [3] * 5, N), ("drop", [2] * 5, 10), ("none", [3, 3, 2, 2, 2], N)],
)
def test_uneven_world_pad_drop_none(
    counter_out: Path, even: str, lengths: list[int], distinct: int
) -> None:
    per_rank = []
    for rank in range(5):
        ds = from_shards(counter_out, rank=rank, world_size=5, even=even)
        per_rank.append(_keys(ds))
        assert len(ds) == len(per_rank[-1])
    seen = Counter(k for keys in per_rank for k in keys)
    assert [len(k) for k in per_rank] == lengths
    assert len(seen) == distinct and set(seen) <= set(KEYS)
    if even != "pad":
        assert max(seen.values()) == 1


def test_order_is_fixed_by_seed_and_epoch(counter_out: Path) -> None:
    ds = from_shards(counter_out, seed=7)
    first = _keys(ds)
    assert _keys(ds) == first and _keys(from_shards(counter_out, seed=7)) == first
    ds.set_epoch(1)
    assert _keys(ds) != first and sorted(_keys(ds)) == KEYS
    assert _keys(from_shards(counter_out, seed=8)) != first
    assert _keys(from_shards(counter_out, shuffle=False)) == KEYS


def test_set_epoch_reaches_persistent_workers(counter_out: Path) -> None:
    ds = from_shards(counter_out, seed=1)
    loader = _loader(ds, 2, batch_size=None, persistent_workers=True)
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        expected = [ds.keys[i] for i in ds.rank_units(epoch)]
        assert [s["key"] for s in loader] == expected  # one sample per fetch: rank order


# -- contents -------------------------------------------------------------------------------------
def test_samples_equal_the_shards(images: tuple[dict[str, Any], Path]) -> None:
    _, out = images
    truth = _tar_samples(out)
    got = list(from_shards(out, seed=5))
    assert sorted(s["key"] for s in got) == sorted(truth)
    for sample in got:
        want = truth[sample["key"]]
        assert set(sample) == set(want)
        assert isinstance(sample["image"], torch.Tensor) and sample["image"].dtype == torch.uint8
        assert isinstance(sample["label_id"], int) and isinstance(sample["label"], str)
        assert all(_equal(sample[f], want[f]) for f in want)
    only = next(iter(from_shards(out, fields=["image"])))
    assert set(only) == {"key", "image"}


def test_from_pipeline_yields_what_a_run_writes(images: tuple[dict[str, Any], Path]) -> None:
    nodes, out = images
    shards = list(from_shards(out, shuffle=False))
    live = _keys(from_pipeline(_pipeline(nodes), shuffle=False), 2, batch_size=None)
    assert live == [s["key"] for s in shards]
    for a, b in zip(from_pipeline(_pipeline(nodes), shuffle=False), shards, strict=True):
        assert set(a) == set(b) and all(_equal(a[f], b[f]) for f in a)


def test_from_pipeline_yaml_with_barriers_matches_run(tmp_path: Path) -> None:
    nodes = {
        **COUNTER,
        "sel": {"stage": "select.random", "inputs": "sq", "params": {"fraction": 0.5}},
        "fit": {"stage": "test.mean_fit", "inputs": "sel"},
        "center": {"stage": "test.center", "inputs": "fit", "params": {"fit_node": "fit"}},
    }
    out = _run(nodes, tmp_path / "out", seed=4)
    yaml_path = tmp_path / "p.yaml"
    spec = {"name": "t", "seed": "${s}", "nodes": nodes}
    yaml_path.write_text(json.dumps(spec))  # JSON is YAML
    ds = from_pipeline(yaml_path, variables={"s": "4"}, shuffle=False)
    assert len(ds) == N // 2 and len(ds.excluded) == N // 2
    assert all(r.startswith("filtered by sel") for r in ds.excluded.values())
    live, stored = list(ds), list(from_shards(out, shuffle=False))
    assert [s["key"] for s in live] == [s["key"] for s in stored]
    assert all(torch.equal(a["centered"], b["centered"]) for a, b in zip(live, stored, strict=True))


class EpochTag(Map):
    name = "test.epoch_tag"
    description = "Records ctx.epoch."
    PRODUCES = (Field("epoch", "int", ""),)

    def process(self, record: Record, ctx: Context) -> Record:
        return {"epoch": ctx.epoch}


def test_from_pipeline_fields_are_what_samples_carry() -> None:
    ds = from_pipeline(_pipeline(COUNTER), fields=["square"], shuffle=False)
    samples = list(ds)
    assert [sorted(s) for s in samples] == [["key", "square"]] * N
    assert [float(s["square"][0]) for s in samples] == [float(i * i) for i in range(N)]


def test_set_epoch_changes_order_and_stage_epoch() -> None:
    registry.register(EpochTag)
    try:
        ds = from_pipeline(_pipeline({**COUNTER, "tag": {"stage": EpochTag.name, "inputs": "sq"}}))
        first = list(ds)
        ds.set_epoch(3)
        third = list(ds)
    finally:
        registry.unregister(EpochTag.name)
    assert {s["epoch"] for s in first} == {0} and {s["epoch"] for s in third} == {3}
    assert [s["key"] for s in first] != [s["key"] for s in third]
    assert sorted(s["key"] for s in third) == KEYS


# -- Map stages over stored samples ----------------------------------------------------------------
def test_from_shards_runs_map_stages_with_the_epoch(counter_out: Path) -> None:
    ds = from_shards(counter_out, shuffle=False, stages=[Root(), Split()])
    ds.set_epoch(2)
    samples = list(ds)
    assert [k for k, _ in ds.skipped] == ["item_005"] and ds.known_bad == ["item_005"]
    assert ds.skipped[0][1] == "invalid in test.root: 25 refused on purpose"
    r = int(samples[sum(i % 3 + 1 for i in range(5))]["key"][5:8])  # what took item_005's place
    assert r != 5
    want = []  # item_005's samples are replaced by all of item r's
    for i in [*range(5), r, *range(6, N)]:
        want += [(f"item_{i:03d}@{j:04d}", float(i), j) for j in range(i % 3 + 1)]
    got = [(s["key"], float(s["root"][0]), s["part"]) for s in samples]
    assert got == want and {s["epoch"] for s in samples} == {2}
    assert [s["key"] for s in ds] == [s["key"] for s in samples]  # deterministic
    assert len(ds.skipped) == 1  # a known-bad sample is not reported again
    assert isinstance(samples[0]["root"], torch.Tensor)
    # the stages reach persistent DataLoader workers, and follow set_epoch there
    ds = from_shards(counter_out, seed=1, stages=[Root()])
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True, timeout=60)
    for epoch in (1, 4):
        ds.set_epoch(epoch)
        out = list(loader)
        assert len(out) == N and {s["epoch"] for s in out} == {epoch}
        assert all(float(s["root"][0]) ** 2 == float(s["square"][0]) for s in out)


def test_from_shards_stages_expand_expanded_samples(tmp_path: Path) -> None:
    out = _run({**COUNTER, "split": {"stage": "test.split", "inputs": "sq"}}, tmp_path / "out")
    keys = [s["key"] for s in from_shards(out, shuffle=False, stages=[Split()])]
    want = [
        f"item_{i:03d}@{j:04d}_{k:04d}"
        for i in range(N)
        for j in range(i % 3 + 1)
        for k in range(i % 3 + 1)
    ]
    assert keys == want


def test_from_shards_stages_are_checked(counter_out: Path) -> None:
    with pytest.raises(ConfigError, match=r"consume \['size'\], which no sample holds"):
        from_shards(counter_out, stages=[Size()])
    with pytest.raises(TypeError, match="takes Map stages"):
        from_shards(counter_out, stages=[MeanFit()])
    # a field produced by an earlier stage need not be stored; fields= is what samples carry,
    # while what the stages consume is read as well
    ds = from_shards(counter_out, fields=["index"], stages=[Square(), Root()], shuffle=False)
    assert sorted(next(iter(ds))) == ["index", "key"]
    # fields= may name what the stages make, and the key, which every sample has
    ds = from_shards(counter_out, fields=["key", "root"], stages=[Root()], shuffle=False)
    sample = next(iter(ds))
    assert len(ds.keys) == N and sorted(sample) == ["key", "root"]
    assert float(sample["root"][0]) == 0.0


# -- bad samples and crashes ----------------------------------------------------------------------
def _corrupt(out: Path, key: str, field: str) -> None:
    for shard in (out / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            hit = [m for m in tar.getmembers() if m.name == f"{key}.{field}.npy"]
        if hit:
            with open(shard, "r+b") as fh:
                fh.seek(hit[0].offset_data)
                fh.write(b"garbage!")
            return
    raise AssertionError(f"{key} not found")


def test_corrupt_sample_is_skipped_replaced_and_reported(tmp_path: Path) -> None:
    out = _run(COUNTER, tmp_path / "out")
    _corrupt(out, "item_005", "square")
    log = tmp_path / "errors.jsonl"
    seen, skipped = [], []
    for rank in range(2):
        ds = from_shards(out, seed=2, rank=rank, world_size=2, errors_path=log)
        keys = _keys(ds)
        assert len(keys) == len(ds) == N // 2  # the rank keeps its length
        seen += keys
        skipped += ds.skipped
    assert [k for k, _ in skipped] == ["item_005"] and "square" in skipped[0][1]
    counts = Counter(seen)
    assert "item_005" not in counts and set(counts) == set(KEYS) - {"item_005"}
    assert sorted(counts.values()) == [1] * 10 + [2]  # the replacement appears twice
    ds = from_shards(out, seed=2, errors_path=log)
    assert len(_keys(ds, 2)) == N and ds.skipped == []  # recorded in the worker, not here
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["key"] for x in lines] == ["item_005", "item_005"]
    assert lines[-1]["worker"] in (0, 1) and lines[-1]["replaced_by"] in KEYS


class DecodeParams(Params):
    log: str
    bad: list[int] = []


class LoggedDecode(Map):
    """Appends ``key pid`` to ``log`` per call (so calls count across worker processes);
    items whose index is in ``bad`` fail as a corrupt file would."""

    name = "test.logged_decode"
    description = "Counts its calls in a file; fails the listed indices."
    Params = DecodeParams
    CONSUMES = (Field("index", "int", ""),)
    PRODUCES = (Field("decoded", "int", ""),)

    def process(self, record: Record, ctx: Context) -> Record:
        with open(self.params.log, "a", encoding="utf-8") as fh:
            fh.write(f"{record['key']} {os.getpid()}\n")
        if record["index"] in self.params.bad:
            raise ItemError("invalid", "corrupt on purpose")
        return {"decoded": record["index"]}


def _decoding(n: int, bad: list[int], log: Path, **kw: Any) -> Any:
    params = {"log": str(log), "bad": bad}
    nodes = {
        "src": {"stage": "test.counter", "params": {"n": n}},
        "dec": {"stage": LoggedDecode.name, "inputs": "src", "params": params},
    }
    registry.register(LoggedDecode)
    try:
        return from_pipeline(_pipeline(nodes), **kw)
    finally:
        registry.unregister(LoggedDecode.name)


@pytest.mark.parametrize(("workers", "persistent"), [(0, False), (2, False), (2, True)])
def test_bad_items_are_decoded_once_for_the_dataset_life(
    tmp_path: Path, workers: int, persistent: bool
) -> None:
    bad = [3, 4, 10, 17]  # 3, 4: a bad neighbour is not tried as a replacement either
    bad_keys = {f"item_{i:03d}" for i in bad}
    log, errors = tmp_path / "calls.txt", tmp_path / "errors.jsonl"
    ds = _decoding(24, bad, log, seed=1, errors_path=errors)
    extra = {"persistent_workers": True} if persistent else {}
    loader = _loader(ds, workers, batch_size=None, **extra)
    for epoch in range(3):  # without persistent workers, each epoch starts new processes
        ds.set_epoch(epoch)
        counts = Counter(s["key"] for s in loader)
        assert sum(counts.values()) == 24 and not set(counts) & bad_keys
        assert set(counts) == {f"item_{i:03d}" for i in range(24)} - bad_keys
        assert sum(c - 1 for c in counts.values()) == len(bad)  # one replacement per bad item
    calls = Counter(tuple(line.split()) for line in log.read_text().splitlines())
    per_key = Counter(key for key, _ in calls.elements())
    for key in bad_keys:  # at most once per process; the processes share what they found
        assert all(calls[key, pid] == 1 for k, pid in calls if k == key)
        assert 1 <= per_key[key] <= max(workers, 1)
    assert ds.known_bad == sorted(bad_keys)  # seen from the main process too
    reported = Counter(json.loads(x)["key"] for x in errors.read_text().splitlines())
    assert set(reported) == bad_keys and max(reported.values()) <= max(workers, 1)
    if workers == 0:
        assert sorted(k for k, _ in ds.skipped) == sorted(bad_keys)  # not again per epoch
    twin = copy.deepcopy(ds)  # a copy keeps what was found
    before = len(log.read_text().splitlines())
    assert twin.known_bad == sorted(bad_keys) and len(list(twin)) == 24
    assert not {line.split()[0] for line in log.read_text().splitlines()[before:]} & bad_keys


def test_replacements_are_spread_and_deterministic(tmp_path: Path) -> None:
    n, bad = 40, [5, 6, 12, 20, 21, 22, 30, 39]
    good = [i for i in range(n) if i not in bad]

    def neighbour(i: int) -> int:  # the next good item in key order (cyclically)
        return next(j % n for j in range(i + 1, i + n) if j % n in good)

    ds = _decoding(n, bad, tmp_path / "calls.txt", seed=3, shuffle=False)
    runs = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        keys = [s["key"] for s in ds]  # shuffle=False: position p holds item p or its stand-in
        assert [k for p, k in enumerate(keys) if p not in bad] == [f"item_{p:03d}" for p in good]
        runs.append([int(keys[p][5:]) for p in bad])
    stand_ins = [r for run in runs for r in run]
    assert not set(stand_ins) & set(bad)
    near = sum(r == neighbour(b) for run in runs for b, r in zip(bad, run, strict=True))
    assert near <= len(stand_ins) // 4  # the next good item would give all 24
    assert len(set(stand_ins)) >= len(stand_ins) // 2  # the next good item: 5 distinct
    assert runs[0] != runs[1] or runs[1] != runs[2]  # drawn per epoch
    again = _decoding(n, bad, tmp_path / "calls2.txt", seed=3, shuffle=False)
    again.set_epoch(1)
    assert [int(k[5:]) for p, k in enumerate(s["key"] for s in again) if p in bad] == runs[1]
    again.set_epoch(2)  # the same whatever the number of workers and what they found before
    keys = _keys(again, 2, batch_size=None)
    assert [int(keys[p][5:]) for p in bad] == runs[2]


def test_no_good_item_is_an_error_without_decoding_again(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    ds = _decoding(4, [0, 1, 2, 3], log)
    with pytest.raises(RuntimeError, match="no unit of rank 0's 4 can be read in epoch 0"):
        list(ds)
    assert len(log.read_text().splitlines()) == 4 and len(ds.known_bad) == 4
    ds.set_epoch(1)
    with pytest.raises(RuntimeError, match="all were found bad before"):
        list(ds)
    assert len(log.read_text().splitlines()) == 4


def _exit_on(key: str, sample: dict[str, Any]) -> dict[str, Any]:
    if sample["key"] == key:
        os._exit(7)
    return sample


@pytest.mark.timeout(120)
def test_crashing_worker_is_a_clear_error(counter_out: Path, tmp_path: Path) -> None:
    ds = from_shards(counter_out, transform=functools.partial(_exit_on, "item_003"))
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        _keys(ds, 2)
    (tmp_path / "in").mkdir()
    for name in ("a", "b", "segv"):
        (tmp_path / "in" / f"{name}.jpg").write_bytes(b"x")
    nodes = {
        "src": {"stage": "files", "params": {"root": str(tmp_path / "in"), "kinds": ["image"]}},
        "f": {"stage": "test.faulty", "inputs": "src"},
    }
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        _keys(from_pipeline(_pipeline(nodes)), 1)


def test_bad_arguments_and_missing_output(counter_out: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="both 'rank' and 'world_size'"):
        from_shards(counter_out, rank=0)
    with pytest.raises(ValueError, match="'rank' parameter must be an int in \\[0, 2\\)"):
        from_shards(counter_out, rank=2, world_size=2)
    with pytest.raises(ValueError, match="'even' parameter of from_shards"):
        from_shards(counter_out, even="balanced")
    with pytest.raises(ValueError, match="epoch"):
        from_shards(counter_out).set_epoch(-1)
    with pytest.raises(StoreError, match="no datapipe output"):
        from_shards(tmp_path)


@pytest.mark.parametrize(
    ("array", "version"),
    [
        (np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)), (1, 0)),
        (np.array(7, dtype=">i4"), (1, 0)),
        (np.zeros((0, 3), dtype=bool), (2, 0)),
        (np.array(["ab", "c"]), (3, 0)),
    ],
)
def test_npy_members_decode_like_np_load(array: np.ndarray, version: tuple[int, int]) -> None:
    fp = io.BytesIO()
    np.lib.format.write_array(fp, array, version=version, allow_pickle=False)
    buf = bytearray(b"pad" + fp.getvalue() + b"tail")
    got = decode_npy(buf, 3, len(fp.getvalue()))
    assert got.dtype == array.dtype and np.array_equal(got, array)
    with pytest.raises(ValueError, match="bytes"):
        decode_npy(buf, 3, len(fp.getvalue()) - 1)


# -- collation ------------------------------------------------------------------------------------
def test_collate_pads_every_varying_dim_and_masks() -> None:
    batch = [
        {"key": "a", "pts": torch.ones(2, 3), "img": torch.tensor([[[1], [2]]]), "y": 1,
         "meta": {"n": 1}, "fix": torch.zeros(2)},
        {"key": "b", "pts": torch.full((1, 3), 2.0), "img": torch.tensor([[[3]], [[4]]]),
         "y": 0, "meta": {"n": 2}, "fix": torch.ones(2)},
    ]  # fmt: skip
    out = collate(batch)
    assert out["key"] == ["a", "b"] and out["meta"] == [{"n": 1}, {"n": 2}]
    assert torch.equal(out["y"], torch.tensor([1, 0]))
    assert torch.equal(out["fix"], torch.tensor([[0.0, 0.0], [1.0, 1.0]])) and "fix_mask" not in out
    pts = torch.tensor([[[1.0, 1, 1], [1, 1, 1]], [[2, 2, 2], [0, 0, 0]]])
    assert torch.equal(out["pts"], pts)
    assert torch.equal(out["pts_mask"], torch.tensor([[True, True], [True, False]]))
    img = torch.tensor([[[[1], [2]], [[0], [0]]], [[[3], [0]], [[4], [0]]]])
    assert torch.equal(out["img"], img)
    mask = torch.tensor([[[True, True], [False, False]], [[True, False], [True, False]]])
    assert torch.equal(out["img_mask"], mask)
    assert collate(batch, pad_value=-1)["pts"][1, 1].tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="only sizes may differ"):
        collate([{"x": torch.ones(2)}, {"x": torch.ones(2, 1)}])


# -- the split, as a property ---------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 200),
    world=st.integers(1, 9),
    workers=st.integers(1, 4),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 1000),
    even=st.sampled_from(["pad", "drop", "none"]),
)
def test_split_property(n: int, world: int, workers: int, seed: int, epoch: int, even: str):
    order = epoch_order(n, seed, epoch)
    assert sorted(order.tolist()) == list(range(n))
    assert np.array_equal(order, epoch_order(n, seed, epoch))
    ranks = [rank_positions(order, r, world, even) for r in range(world)]
    lengths = [len(r) for r in ranks]
    assert lengths == [rank_length(n, world, even, r) for r in range(world)]
    counts = Counter(int(i) for r in ranks for i in r)
    if even == "pad":
        assert set(lengths) <= {-(-n // world)} and set(counts) == set(range(n))
    elif even == "drop":
        assert set(lengths) <= {n // world} and max(counts.values(), default=1) == 1
    else:
        assert max(lengths, default=0) - min(lengths, default=0) <= 1
        assert counts == Counter(range(n))
    if n % world == 0:
        assert counts == Counter(range(n))
    for r in ranks:
        parts = [list(worker_positions(len(r), w, workers)) for w in range(workers)]
        assert sorted(p for part in parts for p in part) == list(range(len(r)))

"""datapipe.stream: exactly once per epoch over real DataLoader workers and simulated ranks,
deterministic epochs, contents equal to the shards, skip-and-replace, crashes, collation."""

from __future__ import annotations

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
from datapipe.errors import ConfigError, StoreError
from datapipe.executors.local import run_local
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.stage import Context, Map, Record
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
    assert [k for k, _ in ds.skipped] == ["item_005"]
    assert ds.skipped[0][1] == "invalid in test.root: 25 refused on purpose"
    want = []  # item_005 is replaced by the next item of the rank's list, item_006
    for i in [*range(5), 6, *range(6, N)]:
        want += [(f"item_{i:03d}@{j:04d}", float(i), j) for j in range(i % 3 + 1)]
    got = [(s["key"], float(s["root"][0]), s["part"]) for s in samples]
    assert got == want and {s["epoch"] for s in samples} == {2}
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

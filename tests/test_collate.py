"""datapipe.stream.collate: masks follow the declared field shapes, not the batch at hand;
the datasets hand out the collate for their fields."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from datapipe import registry
from datapipe.executors.local import run_local
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.stage import Context, Map, Record
from datapipe.stream import Collate, collate, from_pipeline, from_shards
from fault_stages import Square

T, F = True, False


def _t(*shape: int, value: float = 1.0) -> torch.Tensor:
    return torch.full(shape, float(value))


# -- the rule, hand-computed ------------------------------------------------------------------
def test_variable_fields_get_their_mask_even_when_shapes_agree() -> None:
    c = Collate({"pts": "N 3", "img": Field("img", "uint8", "H W 1"), "fix": "2", "y": ""})
    batch = [{"pts": _t(2, 3), "img": _t(1, 2, 1), "fix": _t(2), "y": 1}] * 3
    out = c(batch)
    assert sorted(out) == ["fix", "img", "img_mask", "pts", "pts_mask", "y"]
    assert out["pts"].shape == (3, 2, 3) and out["pts_mask"].tolist() == [[T, T]] * 3
    assert out["img_mask"].tolist() == [[[T, T]]] * 3  # (B, H, W)
    assert out["fix"].shape == (3, 2) and out["y"].tolist() == [1, 1, 1]
    assert c.variable == {"pts", "img"}


def test_padding_and_masks_over_the_declared_dims() -> None:
    a = {"pts": _t(2, 3), "clip": _t(2, 1, 2, 1), "any": _t(1, 2)}
    b = {"pts": _t(1, 3, value=2), "clip": _t(1, 1, 2, 1, value=2), "any": _t(2, 1, value=2)}
    out = Collate({"pts": "N 3", "clip": "T H W 1"}, pad_value=-1)([a, b])
    want = [[[1.0, 1, 1], [1, 1, 1]], [[2, 2, 2], [-1, -1, -1]]]
    assert out["pts"].tolist() == want
    assert out["pts_mask"].tolist() == [[T, T], [T, F]]
    # only T differs, but H and W are declared variable: the mask is (B, T, H, W)
    assert out["clip_mask"].shape == (2, 2, 1, 2)
    assert out["clip_mask"].tolist() == [[[[T, T]], [[T, T]]], [[[T, T]], [[F, F]]]]
    assert out["clip"][1, 1].flatten().tolist() == [-1, -1]
    # a field the specs do not name counts as "*": every dimension is masked
    assert out["any"].tolist() == [[[1.0, 1], [-1, -1]], [[2, -1], [2, -1]]]
    assert out["any_mask"].tolist() == [[[T, T], [F, F]], [[T, F], [T, F]]]


def test_star_patterns_and_scalars() -> None:
    zero_d = [{"s": torch.tensor(1.0)}, {"s": torch.tensor(2.0)}]
    out = Collate({"s": "*"})(zero_d)
    assert out["s"].tolist() == [1.0, 2.0] and out["s_mask"].tolist() == [T, T]
    assert "s_mask" not in Collate({"s": ""})(zero_d)
    out = Collate({"v": "* 2"})([{"v": _t(1, 2)}, {"v": _t(3, 2)}])
    assert out["v_mask"].tolist() == [[T, F, F], [T, T, T]]
    out = Collate({"v": "* 2"})([{"v": _t(2)}, {"v": _t(2)}])  # no dim left to vary: (B,)
    assert out["v_mask"].tolist() == [T, T]


def test_shapes_that_break_the_declaration_are_errors() -> None:
    with pytest.raises(ValueError, match=r"declared \(2\), but dimension 0 differs"):
        Collate({"x": "2"})([{"x": _t(2)}, {"x": _t(3)}])
    with pytest.raises(ValueError, match=r"declared \(H W 3\), but dimension 2 differs"):
        Collate({"x": "H W 3"})([{"x": _t(1, 1, 3)}, {"x": _t(1, 1, 4)}])
    with pytest.raises(ValueError, match=r"declared \(N 3\), a sample has shape \(3,\)"):
        Collate({"x": "N 3"})([{"x": _t(3)}])
    with pytest.raises(ValueError, match="only sizes may differ"):
        Collate({"x": "*"})([{"x": _t(2)}, {"x": _t(2, 1)}])
    for bad in ("N  **", "* *", "N-1"):
        with pytest.raises(ValueError, match="shape pattern"):
            Collate({"x": bad})


def test_strings_numbers_and_lists_are_unaffected() -> None:
    batch = [
        {"key": "a", "y": 1, "meta": {"n": 1}, "s": np.array(["ab"])},
        {"key": "b", "y": 2.5, "meta": {"n": 2}, "s": np.array(["c"])},
    ]
    out = Collate({"key": "", "y": "", "meta": "*", "s": "N"})(batch)
    assert out["key"] == ["a", "b"] and out["meta"] == [{"n": 1}, {"n": 2}]
    assert out["y"].dtype == torch.float32 and out["y"].tolist() == [1.0, 2.5]
    assert [x.tolist() for x in out["s"]] == [["ab"], ["c"]] and "s_mask" not in out
    assert Collate({})({"key": "a"}) == {"key": "a"} and Collate({})([]) == {}


def test_without_specs_the_batch_decides_as_before() -> None:
    a, b = {"p": _t(2, 3)}, {"p": _t(1, 3)}
    assert "p_mask" not in collate([a, a]) and "p_mask" in collate([a, b])
    assert collate([a, b])["p_mask"].shape == (2, 2)
    assert collate([a, a], fields={"p": "N 3"})["p_mask"].tolist() == [[T, T], [T, T]]


def test_collate_pickles() -> None:
    c = Collate({"pts": Field("pts", "float32", "N 3")}, pad_value=-1)
    again = pickle.loads(pickle.dumps(c))
    assert again == c and again.fields == {"pts": "N 3"} and again.pad_value == -1


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 4), min_size=1, max_size=5), same=st.booleans())
def test_mask_keys_and_shapes_never_depend_on_the_batch(sizes: list[int], same: bool) -> None:
    if same:
        sizes = [sizes[0]] * len(sizes)
    batch = [{"p": _t(n, 3, value=i + 1), "f": _t(2, value=i)} for i, n in enumerate(sizes)]
    out = Collate({"p": "N 3", "f": "2"})(batch)
    assert sorted(out) == ["f", "p", "p_mask"]
    assert out["p"].shape == (len(sizes), max(sizes), 3)
    assert out["p_mask"].tolist() == [[j < n for j in range(max(sizes))] for n in sizes]
    for i, n in enumerate(sizes):
        assert out["p"][i, :n].eq(i + 1).all() and out["p"][i, n:].eq(0).all()


# -- what the datasets hand out -----------------------------------------------------------------
class Points(Map):
    """``index % 3 + 1`` points, and a fixed-size pair."""

    name = "test.points"
    description = "A variable-size cloud and a fixed pair per item."
    CONSUMES = (Field("index", "int", ""),)
    PRODUCES = (Field("cloud", "float32", "N 3"), Field("pair", "int64", "2"))

    def process(self, record: Record, ctx: Context) -> Record:
        i = record["index"]
        return {
            "cloud": np.full((i % 3 + 1, 3), i, dtype=np.float32),
            "pair": np.array([i, -i], dtype=np.int64),
        }


NODES = {
    "src": {"stage": "test.counter", "params": {"n": 9}},
    "pts": {"stage": Points.name, "inputs": "src"},
}


@pytest.fixture(scope="module")
def points() -> Any:
    registry.register(Points)
    try:
        yield Pipeline.from_dict({"name": "t", "nodes": NODES})
    finally:
        registry.unregister(Points.name)


def _check_batches(loader: DataLoader, sizes: dict[str, int]) -> int:
    seen = 0
    for batch in loader:
        assert {"cloud_mask", "cloud", "pair"} <= set(batch) and "pair_mask" not in batch
        longest = max(sizes[k] for k in batch["key"])
        assert batch["cloud_mask"].tolist() == [
            [j < sizes[k] for j in range(longest)] for k in batch["key"]
        ]
        seen += len(batch["key"])
    return seen


def test_from_pipeline_collates_by_the_leaf_specs(points: Pipeline) -> None:
    ds = from_pipeline(points, seed=2)
    assert ds.collate.fields["cloud"] == "N 3" and ds.collate.variable >= {"cloud"}
    assert ds.collate.fields["pair"] == "2" and ds.collate.fields["index"] == ""
    sizes = {f"item_{i:03d}": i % 3 + 1 for i in range(9)}
    for batch_size in (1, 3):  # a batch of 1 has one shape, and still its mask
        loader = DataLoader(ds, batch_size=batch_size, num_workers=2, collate_fn=ds.collate)
        assert _check_batches(loader, sizes) == 9


def test_from_shards_learns_the_specs(points: Pipeline, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_local(points, out).counts["error"] == 0
    sizes = {f"item_{i:03d}": i % 3 + 1 for i in range(9)}
    recorded = from_shards(out)  # the run recorded its fields in index.json
    assert recorded.collate.fields == {"cloud": "N 3", "index": "", "label": "", "pair": "2"}
    batch = next(iter(DataLoader(recorded, batch_size=3, collate_fn=recorded.collate)))
    assert batch["cloud_mask"].shape == (3, 3) and "pair_mask" not in batch
    bare = tmp_path / "bare"  # an output whose index.json names no fields
    shutil.copytree(out, bare)
    index = json.loads((bare / "index.json").read_text())
    del index["fields"]
    (bare / "index.json").write_text(json.dumps(index))
    plain = from_shards(bare)  # nothing recorded: every array counts as "*"
    assert plain.collate.fields == {}
    batch = next(iter(DataLoader(plain, batch_size=3, collate_fn=plain.collate)))
    assert batch["cloud_mask"].shape == (3, 3, 3) and batch["pair_mask"].shape == (3, 2)
    ds = from_shards(out, specs=points)
    assert ds.collate == from_pipeline(points).collate
    assert _check_batches(DataLoader(ds, batch_size=1, collate_fn=ds.collate), sizes) == 9
    yaml_path = tmp_path / "p.yaml"
    yaml_path.write_text(json.dumps({"name": "t", "nodes": NODES}))
    registry.register(Points)
    try:
        assert from_shards(out, specs=yaml_path).collate == ds.collate
    finally:
        registry.unregister(Points.name)
    given = from_shards(out, specs={"cloud": "N C", "pair": Field("pair", "int64", "P")})
    assert given.collate.fields == {"cloud": "N C", "pair": "P", "index": "", "label": ""}
    # stages declare what they produce; an explicit mapping has the last word
    staged = from_shards(out, specs=points, stages=[Square()])
    assert staged.collate.fields["square"] == "1" and staged.collate.fields["cloud"] == "N 3"
    given = from_shards(out, stages=[Square()], specs={"square": "*"})
    assert given.collate.fields["square"] == "*"
    # what a run records in index.json ("fields": a list of Field.to_dict())
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    index = json.loads((copy / "index.json").read_text())
    index["fields"] = [Field("cloud", "float32", "N 3").to_dict(), Field("pair").to_dict()]
    (copy / "index.json").write_text(json.dumps(index))
    assert from_shards(copy).collate.fields == {"cloud": "N 3", "pair": "*"}
    given = from_shards(copy, specs={"pair": "2"}, stages=[Square()])
    assert given.collate.fields == {"cloud": "N 3", "pair": "2", "square": "1"}

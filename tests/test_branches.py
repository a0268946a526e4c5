"""Branches of one item meet without losing anything: joins are total, two nodes producing
one field is a validation problem (``rename`` resolves it), and a failing branch fails its
whole item, named (an item is written with every declared field or not at all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datapipe.engine.join import JoinError, join_branches
from datapipe.errors import ConfigError
from datapipe.executors.local import run_local
from datapipe.graph import Node, Pipeline
from datapipe.store import iter_samples
from datapipe.store.manifest import Manifest
from fault_stages import Counter, Root, Split, Square


def _samples(out: Path) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in iter_samples(sorted((out / "shards").glob("*.tar")))}


def test_an_unexpanded_branch_joins_every_sample_of_an_expanded_one() -> None:
    clips = [("@0000", {"clip": 0}), ("@0001", {"clip": 1})]
    whole = [("", {"label": "cat"})]
    assert join_branches([whole, clips]) == [
        ("@0000", {"label": "cat", "clip": 0}),
        ("@0001", {"label": "cat", "clip": 1}),
    ]


def test_a_sample_joins_the_samples_derived_from_it() -> None:
    clips = [("@0000", {"clip": 0}), ("@0001", {"clip": 1})]
    frames = [("@0000_0000", {"f": 0}), ("@0000_0001", {"f": 1}), ("@0001_0000", {"f": 2})]
    got = join_branches([clips, frames])
    assert [s for s, _ in got] == ["@0000_0000", "@0000_0001", "@0001_0000"]
    assert [(r["clip"], r["f"]) for _, r in got] == [(0, 0), (0, 1), (1, 2)]


def test_branches_expanded_differently_are_an_error_not_a_loss() -> None:
    two = [("@0000", {"a": 0}), ("@0001", {"a": 1})]
    three = [("@0000", {"b": 0}), ("@0001", {"b": 1}), ("@0002", {"b": 2})]
    with pytest.raises(JoinError, match=r"'left' has no record for sample '@0002' that 'right'"):
        join_branches([two, three], ["left", "right"])


def test_leaves_of_different_expansion_write_every_sample(tmp_path: Path) -> None:
    p = Pipeline(
        [
            Node("src", Counter(n=4)),
            Node("split", Split(), ("src",)),
            Node("square", Square(), ("src",)),
        ]
    )
    report = run_local(p, tmp_path / "out")
    samples = _samples(tmp_path / "out")
    # item i expands into i % 3 + 1 parts; each carries the square of the unexpanded branch
    assert report.counts["samples"] == 1 + 2 + 3 + 1 == len(samples)
    assert samples["item_002@0002"]["part"] == 2
    np.testing.assert_array_equal(samples["item_002@0002"]["square"], [4.0])


def _two_squares(rename: dict[str, str] | None = None) -> Pipeline:
    return Pipeline(
        [
            Node("src", Counter(n=3)),
            Node("a", Square(), ("src",)),
            Node("b", Square(), ("src",), tuple((rename or {}).items())),
        ]
    )


def test_two_branches_producing_one_field_fail_validation() -> None:
    with pytest.raises(ConfigError) as info:
        _two_squares()
    (problem,) = info.value.problems
    assert problem.path == "output"
    assert "nodes 'a' and 'b' both produce field 'square'" in problem.message


def test_rename_lets_the_branches_meet(tmp_path: Path) -> None:
    p = _two_squares({"square": "square_b"})
    assert [f.name for f in p.nodes_by_id["b"].produces()] == ["square_b"]
    run_local(p, tmp_path / "out")
    sample = _samples(tmp_path / "out")["item_002"]
    np.testing.assert_array_equal(sample["square"], [4.0])
    np.testing.assert_array_equal(sample["square_b"], [4.0])


@pytest.mark.parametrize(
    ("rename", "message"),
    [
        ({"nope": "x"}, "test.square produces no field 'nope' (it produces: square)"),
        ({"square": "Bad-Name"}, "'Bad-Name' is not a field name"),
    ],
)
def test_rename_problems_are_named(rename: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _two_squares(rename)
    assert any(message in p.message for p in info.value.problems), info.value.problems


def test_a_failing_branch_fails_its_item_by_name_and_nothing_else(tmp_path: Path) -> None:
    # item 5: square 25 makes test.root fail; the split branch alone would succeed
    p = Pipeline(
        [
            Node("src", Counter(n=7)),
            Node("square", Square(), ("src",)),
            Node("root", Root(), ("square",)),
            Node("split", Split(), ("src",)),
        ]
    )
    report = run_local(p, tmp_path / "out")
    rows = {r.key: r for r in Manifest(tmp_path / "out" / "manifest.sqlite").iter_rows()}
    assert (rows["item_005"].status, rows["item_005"].stage) == ("error", "root")
    assert "25 refused on purpose" in rows["item_005"].message
    samples = _samples(tmp_path / "out")
    assert not [k for k in samples if k.startswith("item_005")]
    assert all({"root", "part", "square"} <= set(s) for s in samples.values())
    assert report.counts["ok"] == 6


def test_rename_in_a_pipeline_file() -> None:
    p = Pipeline.from_dict(
        {
            "nodes": {
                "src": {"stage": "test.counter"},
                "a": {"stage": "test.square", "inputs": "src"},
                "b": {"stage": "test.square", "inputs": "src", "rename": {"square": "sq_b"}},
            }
        }
    )
    assert p.describe()["nodes"][2]["rename"] == {"square": "sq_b"}
    assert set(p.fields_at("b")) >= {"sq_b"} and "square" not in p.fields_at("b")


def test_the_run_records_the_fields_samples_carry(tmp_path: Path) -> None:
    import json

    from datapipe.stream import from_shards

    p = Pipeline([Node("src", Counter(n=3)), Node("sq", Square(), ("src",))])
    run_local(p, tmp_path / "out")
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert sorted((f["name"], f["shape"]) for f in index["fields"]) == [
        ("index", ""),
        ("label", ""),
        ("square", "1"),
    ]
    ds = from_shards(tmp_path / "out")
    batch = ds.collate([s for s in ds])
    assert "square_mask" not in batch and tuple(batch["square"].shape) == (3, 1)


def test_leaves_of_different_sources_never_meet(tmp_path: Path) -> None:
    # two sources list items of their own: their leaves both carry `index` but never meet
    p = Pipeline(
        [
            Node("a", Counter(n=2)),
            Node("a_sq", Square(), ("a",)),
            Node("b", Counter(n=3)),
            Node("b_sq", Square(), ("b",)),
        ]
    )
    assert sorted(p.leaves()) == ["a_sq", "b_sq"]


def test_a_record_missing_a_consumed_field_is_a_named_error() -> None:
    from datapipe.engine.runner import MapFailure, apply_map
    from datapipe.stage import Context

    with pytest.raises(MapFailure) as info:
        apply_map(Square(), [("", {"key": "k", "label": "x"})], Context())
    assert info.value.error_class == "invalid"
    assert "test.square needs field(s) 'index', which the record lacks" in info.value.message

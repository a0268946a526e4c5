"""The engine without media: validation messages, ordering, fingerprints, barrier, fit,
expand and sink semantics, with the test stages of fault_stages.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datapipe import registry
from datapipe.errors import ConfigError
from datapipe.executors.local import run_local
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.stage import Map, Record
from datapipe.stages.subset.random_subset import key_uniform
from datapipe.store import iter_samples
from datapipe.store.manifest import Manifest


def _p(nodes: dict[str, Any], **extra: Any) -> Pipeline:
    return Pipeline.from_dict({"name": "t", "nodes": nodes, **extra}, source="t.yaml")


def _problems(nodes: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        _p(nodes)
    return [str(p) for p in info.value.problems]


class Pixels(Map):
    """Produces a field named like test.center's input, with the wrong dtype and shape."""

    name = "test.pixels"
    description = "Wrong-typed 'square'."
    PRODUCES = (Field("square", "uint8", "H W 3"),)

    def process(self, record: Record, ctx: Any) -> Record:
        return {"square": np.zeros((2, 2, 3), np.uint8)}


@pytest.fixture
def pixels_stage():
    registry.register(Pixels)
    yield
    registry.unregister(Pixels.name)


# -- validation -------------------------------------------------------------------------------
def test_all_problems_reported_at_once_with_paths_and_hints() -> None:
    problems = _problems(
        {
            "src": {"stage": "test.counter", "params": {"nn": 3}},
            "sq": {"stage": "test.sqare", "inputs": ["src"]},
            "sel": {"stage": "select.random", "inputs": ["srcc"], "params": {"fraction": "half"}},
        }
    )
    text = "\n".join(problems)
    assert "nodes.src.params.nn: unknown parameter of test.counter; did you mean 'n'?" in text
    assert "nodes.sq.stage: unknown stage 'test.sqare'; did you mean 'test.square'?" in text
    assert "nodes.sel.params.fraction" in text and "'half'" in text
    assert "nodes.sel.inputs[0]: no node named 'srcc'; did you mean 'src'?" in text
    assert len(problems) == 4


def test_message_names_file_and_counts_problems() -> None:
    with pytest.raises(ConfigError) as info:
        _p({"a": {"stage": "nope"}, "b": {"stage": "nope2"}})
    assert str(info.value).startswith("2 problems in t.yaml:")


def test_cycle_is_reported() -> None:
    problems = _problems(
        {
            "src": {"stage": "test.counter"},
            "a": {"stage": "test.square", "inputs": ["src", "b"]},
            "b": {"stage": "test.square", "inputs": ["a"]},
        }
    )
    assert any("cycle" in p and "a" in p and "b" in p for p in problems)


def test_missing_field_names_what_the_inputs_provide() -> None:
    problems = _problems(
        {
            "src": {"stage": "test.counter"},
            "c": {"stage": "test.center", "inputs": "src"},
        }
    )
    assert problems == [
        "nodes.c: test.center consumes field 'square' (float32, shape '1') but its inputs "
        "provide: index, label"
    ]


def test_dtype_and_shape_mismatch(pixels_stage: None) -> None:
    problems = _problems(
        {
            "src": {"stage": "test.counter"},
            "px": {"stage": "test.pixels", "inputs": "src"},
            "c": {"stage": "test.center", "inputs": "px"},
        }
    )
    assert len(problems) == 1
    assert "node 'px' produces it with dtype uint8 where float32 is expected" in problems[0]


def test_source_with_inputs_and_map_without() -> None:
    problems = _problems(
        {
            "src": {"stage": "test.counter", "inputs": ["sq"]},
            "sq": {"stage": "test.square"},
        }
    )
    assert any("is a source and takes no inputs" in p for p in problems)
    assert any("needs at least one input node" in p for p in problems)


def test_spec_errors_name_key_paths() -> None:
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict(
            {
                "nodes": {"src": {"stage": "test.counter"}},
                "output": {"shard_size": 0},
                "colour": "red",
            }
        )
    text = str(info.value)
    assert "output.shard_size" in text and "colour: unknown key" in text


def test_undefined_variable() -> None:
    with pytest.raises(ConfigError, match=r"nodes.src.params.root: undefined variable \$\{nope\}"):
        Pipeline.from_dict({"nodes": {"src": {"stage": "files", "params": {"root": "${nope}"}}}})


# -- order and identity -------------------------------------------------------------------------
def test_topological_order_ignores_declaration_order() -> None:
    p = _p(
        {
            "c": {"stage": "test.center", "inputs": "f"},
            "f": {"stage": "test.mean_fit", "inputs": "s"},
            "s": {"stage": "test.square", "inputs": "src"},
            "src": {"stage": "test.counter"},
        }
    )
    assert p.order == ["src", "s", "f", "c"]


def test_fingerprint_tracks_what_changes_outputs() -> None:
    def fp(**kw: Any) -> str:
        nodes = {
            "src": {"stage": "test.counter", "params": {"n": kw.pop("n", 5)}},
            "s": {"stage": "test.square", "inputs": "src"},
        }
        return _p(nodes, **kw).fingerprint()

    base = fp()
    assert fp() == base
    assert fp(output={"shard_size": 7}) == base  # layout is not identity
    assert fp(run={"workers": 2}) == base
    assert fp(n=6) != base
    assert fp(seed=1) != base
    assert fp(output={"exclude": []}) != base


# -- barriers, fit, expand, sinks -----------------------------------------------------------------
def _rows(out: Path) -> dict[str, Any]:
    return {r.key: r for r in Manifest(out / "manifest.sqlite").iter_rows()}


def _samples(out: Path) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in iter_samples(sorted((out / "shards").glob("*.tar")))}


def test_fit_state_reaches_downstream_maps(tmp_path: Path) -> None:
    p = _p(
        {
            "src": {"stage": "test.counter", "params": {"n": 7}},
            "s": {"stage": "test.square", "inputs": "src"},
            "fit": {"stage": "test.mean_fit", "inputs": "s"},
            "c": {"stage": "test.center", "inputs": "fit"},
        }
    )
    run_local(p, tmp_path / "out")
    mean = np.mean([i * i for i in range(7)])
    samples = _samples(tmp_path / "out")
    for i in range(7):
        np.testing.assert_allclose(samples[f"item_{i:03d}"]["centered"], [i * i - mean], rtol=1e-6)


def test_expansion_writes_derived_keys_and_counts(tmp_path: Path) -> None:
    p = _p(
        {
            "src": {"stage": "test.counter", "params": {"n": 5}},
            "sp": {"stage": "test.split", "inputs": "src"},
        }
    )
    report = run_local(p, tmp_path / "out")
    expected = {f"item_{i:03d}@{j:04d}" for i in range(5) for j in range(i % 3 + 1)}
    samples = _samples(tmp_path / "out")
    assert set(samples) == expected
    assert all(samples[k]["part"] == int(k[-4:]) for k in expected)
    assert report.counts["samples"] == len(expected)
    assert _rows(tmp_path / "out")["item_004"].n_samples == 2


def test_report_times_each_map_node(tmp_path: Path) -> None:
    from datapipe.cli.commands import summary_text

    p = _p(
        {
            "src": {"stage": "test.counter", "params": {"n": 30}},
            "sq": {"stage": "test.square", "inputs": "src"},
            "root": {"stage": "test.root", "inputs": "sq"},  # fails on item_005 (25)
            "sp": {"stage": "test.split", "inputs": "root"},
        }
    )
    report = run_local(p, tmp_path / "out")
    # every item runs sq and root (item_005 fails there), and only the others reach sp
    items = {node: s["items"] for node, s in report.stages.items()}
    assert items == {"sq": 30, "root": 30, "sp": 29}
    assert all(s["seconds"] > 0 for s in report.stages.values())
    assert "ms per item: sq " in summary_text(report)
    again = run_local(p, tmp_path / "out")  # nothing to do: nothing timed
    assert again.stages == {} and "ms per item" not in summary_text(again)


def test_sink_sees_every_committed_sample(tmp_path: Path) -> None:
    p = _p(
        {
            "src": {"stage": "test.counter", "params": {"n": 6}},
            "s": {"stage": "test.square", "inputs": "src"},
            "col": {"stage": "test.collect", "inputs": "s"},
        }
    )
    report = run_local(p, tmp_path / "out")
    assert report.sinks["col"] == {"n": 6, "keys": [f"item_{i:03d}" for i in range(6)]}


def _expected_kept(keys: list[str], fraction: float, seed: int) -> set[str]:
    ranked = sorted(keys, key=lambda k: (key_uniform(k, seed), k))
    return set(ranked[: round(fraction * len(keys))])


def test_select_barrier_is_incremental_and_compacts(tmp_path: Path) -> None:
    root = tmp_path / "in" / "a"
    root.mkdir(parents=True)

    def add(lo: int, hi: int) -> list[str]:
        for i in range(lo, hi):
            (root / f"item_{i:03d}.jpg").write_bytes(bytes(i + 1))
        return [f"a/item_{i:03d}" for i in range(hi)]

    p = _p(
        {
            "src": {"stage": "files", "params": {"root": str(tmp_path / "in")}},
            "sel": {"stage": "select.random", "inputs": "src", "params": {"fraction": 0.5}},
            "s": {"stage": "test.size", "inputs": "sel"},
        },
        seed=3,
        output={"shard_size": 3},
    )
    out = tmp_path / "out"
    keys20 = add(0, 20)
    run_local(p, out)
    kept20 = _expected_kept(keys20, 0.5, 3)
    assert set(_samples(out)) == kept20
    rows = _rows(out)
    assert {k for k, r in rows.items() if r.status == "filtered"} == set(keys20) - kept20
    assert all(
        rows[k].stage == "sel" and "random draw" in rows[k].message for k in set(keys20) - kept20
    )

    # more inputs: the barrier decides again over all keys; only keys whose outcome changed
    # are processed, and the shards then hold exactly the kept set
    keys30 = add(20, 30)
    kept30 = _expected_kept(keys30, 0.5, 3)
    report = run_local(p, out)
    assert set(_samples(out)) == kept30
    new = set(keys30) - set(keys20)
    assert report.counts["processed"] == len(new) + len(kept30 - kept20 - new)
    assert report.counts["newly_filtered"] == len(kept20 - kept30)
    rows = _rows(out)
    assert {k for k, r in rows.items() if r.status == "ok"} == kept30
    again = run_local(p, out)
    assert again.counts["processed"] == 0


class EpochTag(Map):
    """Writes the epoch it ran in."""

    name = "test.epoch_tag"
    description = "The epoch, as a field."
    epoch_dependent = True
    PRODUCES = (Field("epoch", "int", ""),)

    def process(self, record: Record, ctx: Any) -> Record:
        return {"epoch": ctx.epoch}


def test_epoch_dependent_pipelines_are_redone_per_epoch(tmp_path: Path) -> None:
    registry.register(EpochTag)
    try:
        p = _p(
            {
                "src": {"stage": "test.counter", "params": {"n": 3}},
                "e": {"stage": "test.epoch_tag", "inputs": "src"},
            }
        )
        plain = _p({"src": {"stage": "test.counter", "params": {"n": 3}}})
        assert p.fingerprint(epoch=0) != p.fingerprint(epoch=1)
        assert plain.fingerprint(epoch=0) == plain.fingerprint(epoch=1)
        out = tmp_path / "out"
        assert run_local(p, out, epoch=0).counts["processed"] == 3
        assert run_local(p, out, epoch=0).counts["processed"] == 0
        assert run_local(p, out, epoch=1).counts["processed"] == 3
        assert {s["epoch"] for s in _samples(out).values()} == {1}
    finally:
        registry.unregister(EpochTag.name)

"""A re-run never reuses an output its inputs no longer justify, and redoes nothing else:
Fit states, per-item labels and files named by params are part of what decides an output;
failures before a barrier are recorded once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datapipe.errors import ConfigError
from datapipe.executors.local import run_local
from datapipe.graph import Node, Pipeline
from datapipe.stages.io.files import Files, unique_keys
from datapipe.stages.subset.random_subset import RandomSubset
from datapipe.store import iter_samples
from datapipe.store.manifest import Manifest
from engine_stages import AddOffset, CenterBytes, MeanBytes, ReadBytes


def _tree(root: Path, sizes: dict[str, int]) -> None:
    for rel, n in sizes.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * n)


def _samples(out: Path) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in iter_samples(sorted((out / "shards").glob("*.tar")))}


def _rows(out: Path) -> dict[str, Any]:
    return {r.key: r for r in Manifest(out / "manifest.sqlite").iter_rows()}


def _fit_pipeline(root: Path, log: Path | None = None) -> Pipeline:
    return Pipeline(
        [
            Node("files", Files(root=str(root), kinds=["image"])),
            Node("read", ReadBytes(log=str(log or "")), ("files",)),
            Node("fit", MeanBytes(), ("read",)),
            Node("center", CenterBytes(), ("fit",)),
        ]
    )


def test_a_changed_fit_state_redoes_every_item_after_it(tmp_path: Path) -> None:
    sizes = {"c/a.jpg": 10, "c/b.jpg": 20, "c/d.jpg": 30}
    _tree(tmp_path / "in", sizes)
    run_local(_fit_pipeline(tmp_path / "in"), tmp_path / "out")
    (tmp_path / "in/c/a.jpg").write_bytes(b"x" * 40)  # the mean moves from 20 to 30
    report = run_local(_fit_pipeline(tmp_path / "in"), tmp_path / "out")
    assert report.counts["processed"] == 3
    got = {k: float(s["centered"][0]) for k, s in _samples(tmp_path / "out").items()}
    assert got == {"c/a": 10.0, "c/b": -10.0, "c/d": 0.0}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_first_run_decodes_each_input_once_through_a_fit(tmp_path: Path, workers: int) -> None:
    _tree(tmp_path / "in", {"c/a.jpg": 10, "c/b.jpg": 20, "c/d.jpg": 30})
    log = tmp_path / "calls.log"
    run_local(_fit_pipeline(tmp_path / "in", log), tmp_path / "out", workers=workers)
    assert sorted(log.read_text().split()) == ["c/a", "c/b", "c/d"]
    got = {k: float(s["centered"][0]) for k, s in _samples(tmp_path / "out").items()}
    assert got == {"c/a": -10.0, "c/b": 0.0, "c/d": 10.0}


def test_a_malformed_stash_is_recomputed_not_trusted(tmp_path: Path) -> None:
    from datapipe.engine import stash
    from datapipe.engine.runner import ItemRunner, ItemTask

    _tree(tmp_path / "in", {"a.jpg": 4})
    log = tmp_path / "calls.log"
    p = _fit_pipeline(tmp_path / "in", log)
    ((source, rec),) = [
        ("files", r) for r in p.nodes_by_id["files"].stage.list_items(p.context("files"))
    ]
    path = str(tmp_path / "a.stash")
    runner = ItemRunner(p, {"fit": {"mean": 1.0}})
    light = runner.run(ItemTask("a", source, rec, light_for="fit", stash=path))
    assert light.light == {"nbytes": [4]}
    assert stash.load(path)["read"][0][1]["nbytes"].tolist() == [4]
    main = runner.run(ItemTask("a", source, rec, stash=path, encode=False))
    assert main.records[0][1]["centered"].tolist() == [3.0] and log.read_text().split() == ["a"]
    open(path, "wb").write(b"\x80\x04garbage")  # not the framing: ignored, recomputed
    main = runner.run(ItemTask("a", source, rec, stash=path, encode=False))
    assert main.records[0][1]["centered"].tolist() == [3.0] and log.read_text().split() == [
        "a",
        "a",
    ]


def test_an_unchanged_fit_state_redoes_only_the_changed_item(tmp_path: Path) -> None:
    _tree(tmp_path / "in", {"c/a.jpg": 10, "c/b.jpg": 20, "c/d.jpg": 30})
    first = run_local(_fit_pipeline(tmp_path / "in"), tmp_path / "out")
    (tmp_path / "in/c/a.jpg").write_bytes(b"y" * 10)  # new bytes, same size: same mean
    again = run_local(_fit_pipeline(tmp_path / "in"), tmp_path / "out")
    assert again.counts["processed"] == 1 and again.fingerprint == first.fingerprint


def _labelled(root: Path, labels: dict[str, str]) -> Pipeline:
    csv = root.parent / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in labels.items()))
    return Pipeline(
        [
            Node("files", Files(root=str(root), kinds=["image"], labels=str(csv))),
            Node("read", ReadBytes(), ("files",)),
        ]
    )


def test_relabelling_one_file_redoes_that_item_only(tmp_path: Path) -> None:
    _tree(tmp_path / "in", {"a.jpg": 1, "b.jpg": 2, "c.jpg": 3, "d.jpg": 4})
    labels = {"a.jpg": "cat", "b.jpg": "dog", "c.jpg": "cat", "d.jpg": "dog"}
    run_local(_labelled(tmp_path / "in", labels), tmp_path / "out")
    labels["a.jpg"] = "dog"  # the class list stays [cat, dog]
    report = run_local(_labelled(tmp_path / "in", labels), tmp_path / "out")
    assert report.counts["processed"] == 1
    samples = _samples(tmp_path / "out")
    assert (samples["a"]["label"], samples["a"]["label_id"]) == ("dog", 1)
    assert _rows(tmp_path / "out")["a"].label == "dog"


def test_labels_csv_listing_a_path_twice_is_a_config_error(tmp_path: Path) -> None:
    _tree(tmp_path / "in", {"a.jpg": 1})
    (tmp_path / "labels.csv").write_text("path,label\na.jpg,cat\nb.jpg,dog\n./a.jpg,dog\n")
    p = Pipeline(
        [Node("files", Files(root=str(tmp_path / "in"), labels=str(tmp_path / "labels.csv")))]
    )
    with pytest.raises(ConfigError, match=r"line 4: './a.jpg' is already listed on line 2"):
        run_local(p, tmp_path / "out")


def test_labels_csv_naming_a_missing_file_gives_its_error_row(tmp_path: Path) -> None:
    _tree(tmp_path / "in", {"a.jpg": 1, "b.jpg": 2})
    p = _labelled(tmp_path / "in", {"a.jpg": "cat", "gone.jpg": "dog", "b.jpg": "dog"})
    report = run_local(p, tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert rows["gone"].status == "error"
    assert "'gone.jpg' is listed in the labels CSV but does not exist" in rows["gone"].message
    assert {k for k, r in rows.items() if r.status == "ok"} == {"a", "b"}
    assert report.counts["error"] == 1


def _offset_pipeline(root: Path, table: Path) -> Pipeline:
    return Pipeline(
        [
            Node("files", Files(root=str(root), kinds=["image"])),
            Node("read", ReadBytes(), ("files",)),
            Node("shift", AddOffset(table=str(table)), ("read",)),
        ]
    )


def test_replacing_a_file_named_by_a_param_redoes_the_items(tmp_path: Path) -> None:
    _tree(tmp_path / "in", {"a.jpg": 1, "b.jpg": 2})
    table = tmp_path / "offset.txt"
    table.write_text("100")
    run_local(_offset_pipeline(tmp_path / "in", table), tmp_path / "out")
    same = run_local(_offset_pipeline(tmp_path / "in", table), tmp_path / "out")
    assert same.counts["processed"] == 0
    table.write_text("200")
    report = run_local(_offset_pipeline(tmp_path / "in", table), tmp_path / "out")
    assert report.counts["processed"] == 2
    got = {k: int(s["shifted"][0]) for k, s in _samples(tmp_path / "out").items()}
    assert got == {"a": 201, "b": 202}


def test_file_params_are_declared_by_type() -> None:
    assert AddOffset.Params.file_params() == ("table",)
    assert ReadBytes.Params.file_params() == ()
    from datapipe.stages.subset.embed import TorchEmbed

    assert set(TorchEmbed.Params.file_params()) == {"script", "weights"}


@pytest.mark.parametrize("workers", [0, 2])
def test_failures_before_a_barrier_are_decoded_once(tmp_path: Path, workers: int) -> None:
    _tree(tmp_path / "in", {"a.jpg": 1, "b.jpg": 2, "bad_1.jpg": 3, "c.jpg": 4, "bad_2.jpg": 5})
    log = tmp_path / "calls.log"
    p = Pipeline(
        [
            Node("files", Files(root=str(tmp_path / "in"), kinds=["image"])),
            Node("read", ReadBytes(log=str(log)), ("files",)),
            Node("sel", RandomSubset(fraction=0.99), ("read",)),
        ]
    )
    first = run_local(p, tmp_path / "out", workers=workers)
    calls = log.read_text().split()  # the light pass kept what the main pass needs
    assert sorted(calls) == ["a", "b", "bad_1", "bad_2", "c"]
    assert not (tmp_path / "out" / ".stash").exists()
    assert first.counts["error"] == 2
    rows = _rows(tmp_path / "out")
    assert rows["bad_1"].error_class == "corrupt" and rows["bad_1"].stage == "read"
    log.write_text("")
    again = run_local(p, tmp_path / "out", workers=workers)
    assert log.read_text() == ""
    assert again.counts["processed"] == 0
    retried = run_local(p, tmp_path / "out", workers=workers, retry_errors=True)
    assert sorted(log.read_text().split()) == ["bad_1", "bad_2"]
    assert retried.counts["error"] == 2


def test_stems_that_collide_keep_their_extension() -> None:
    assert unique_keys(["m/cloud.ply", "m/cloud.xyz", "m/one.ply", "n/cloud.pcd"]) == [
        "m/cloud_ply",
        "m/cloud_xyz",
        "m/one",
        "n/cloud",
    ]


def test_files_sharing_a_stem_are_all_written(tmp_path: Path) -> None:
    _tree(tmp_path / "in", {"m/cloud.ply": 3, "m/cloud.xyz": 4, "m/solo.ply": 5})
    p = Pipeline(
        [
            Node("files", Files(root=str(tmp_path / "in"), kinds=["pointcloud"])),
            Node("read", ReadBytes(), ("files",)),
        ]
    )
    report = run_local(p, tmp_path / "out")
    assert report.counts["error"] == 0
    got = {k: int(s["nbytes"][0]) for k, s in _samples(tmp_path / "out").items()}
    assert got == {"m/cloud_ply": 3, "m/cloud_xyz": 4, "m/solo": 5}
    again = run_local(p, tmp_path / "out")
    assert again.counts["processed"] == 0 and again.counts["error"] == 0
    np.testing.assert_array_equal(sorted(got), sorted(_rows(tmp_path / "out")))


def test_the_stream_excludes_a_missing_csv_file_with_its_reason(tmp_path: Path) -> None:
    from datapipe.stream import from_pipeline

    _tree(tmp_path / "in", {"a.jpg": 1, "b.jpg": 2})
    ds = from_pipeline(
        _labelled(tmp_path / "in", {"a.jpg": "cat", "gone.jpg": "dog", "b.jpg": "dog"})
    )
    assert sorted(s["key"] for s in ds) == ["a", "b"]
    assert "'gone.jpg' is listed in the labels CSV but does not exist" in ds.excluded["gone"]


def test_a_sinks_params_rerun_the_sink_not_the_items(tmp_path: Path) -> None:
    from engine_stages import Tally

    _tree(tmp_path / "in", {"a.jpg": 1, "b.jpg": 2, "c.jpg": 3})

    def pipeline(note: str) -> Pipeline:
        return Pipeline(
            [
                Node("files", Files(root=str(tmp_path / "in"), kinds=["image"])),
                Node("read", ReadBytes(), ("files",)),
                Node("tally", Tally(note=note), ("read",)),
            ]
        )

    first = run_local(pipeline("one"), tmp_path / "out")
    again = run_local(pipeline("two"), tmp_path / "out")  # only the sink's params changed
    assert again.counts["processed"] == 0 and again.fingerprint == first.fingerprint
    assert again.sinks["tally"]["n"] == 3 and again.sinks["tally"]["shards"] == 1
    assert again.sinks["tally"]["digest"] == first.sinks["tally"]["digest"]
    out_dir = tmp_path / "out" / "sinks" / "tally"
    assert again.sinks["tally"]["out_dir"] == str(out_dir)
    assert (out_dir / "seen.txt").read_text().split() == ["a", "b", "c"]
    (tmp_path / "in" / "b.jpg").write_bytes(b"yy")  # one sample changes: so does the digest
    changed = run_local(pipeline("two"), tmp_path / "out")
    assert changed.counts["processed"] == 1
    assert changed.sinks["tally"]["digest"] != first.sinks["tally"]["digest"]


def test_a_rerun_decodes_only_what_the_barrier_keeps(tmp_path: Path) -> None:
    """A change after the barrier redoes the kept items; the ones it removed are recorded
    as filtered without being decoded (their light view is cached)."""
    _tree(tmp_path / "in", {f"p{i}.jpg": i + 1 for i in range(8)})
    log, table = tmp_path / "calls.log", tmp_path / "offset.txt"
    table.write_text("1")
    p = Pipeline(
        [
            Node("files", Files(root=str(tmp_path / "in"), kinds=["image"])),
            Node("read", ReadBytes(log=str(log)), ("files",)),
            Node("sel", RandomSubset(fraction=0.5), ("read",)),
            Node("shift", AddOffset(table=str(table)), ("sel",)),
        ]
    )
    run_local(p, tmp_path / "out")
    kept = sorted(_samples(tmp_path / "out"))
    log.write_text("")
    table.write_text("2")  # every item's output changes; the barrier's inputs do not
    again = run_local(p, tmp_path / "out")
    assert sorted(log.read_text().split()) == kept
    assert again.counts["filtered"] == 8 - len(kept) and again.counts["ok"] == len(kept)
    assert {k: int(s["shifted"][0]) for k, s in _samples(tmp_path / "out").items()} == {
        k: int(k[1:]) + 1 + 2 for k in kept
    }


def test_touched_inputs_a_barrier_removed_are_not_redone(tmp_path: Path) -> None:
    _tree(tmp_path / "in", {f"p{i}.jpg": i + 1 for i in range(6)})
    p = Pipeline(
        [
            Node("files", Files(root=str(tmp_path / "in"), kinds=["image"])),
            Node("read", ReadBytes(), ("files",)),
            Node("sel", RandomSubset(fraction=0.5), ("read",)),
        ]
    )
    first = run_local(p, tmp_path / "out")
    assert 0 < first.counts["filtered"] < 6
    for f in (tmp_path / "in").glob("*.jpg"):  # same bytes, new mtime
        f.write_bytes(f.read_bytes())
    again = run_local(p, tmp_path / "out")
    assert again.counts["processed"] == 0 and again.counts["touched"] == 6

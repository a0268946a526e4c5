"""Untrusted decoding runs in child processes: a segfault, a hang or a memory hog in one item
becomes that item's error row; the child is replaced; every other item is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from datapipe.engine.pool import ProcessPool
from datapipe.engine.runner import ItemTask
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stages.io.files import Files
from datapipe.store.manifest import Manifest
from fault_stages import Faulty


def _tree(root: Path, names: list[str]) -> None:
    (root / "x").mkdir(parents=True)
    for i, name in enumerate(names):
        (root / "x" / f"{name}.jpg").write_bytes(b"\xff\xd8" + bytes(10 + i))


def _pipeline(root: Path) -> Pipeline:
    return Pipeline.chain(Files(root=str(root), kinds=["image"]), Faulty())


@pytest.mark.parametrize("workers", [0, 2])
def test_crash_hang_and_hog_become_error_rows(tmp_path: Path, workers: int) -> None:
    good = [f"good_{i}" for i in range(6)]
    _tree(tmp_path / "in", ["segv_1", "hang_1", "hog_1", "boom_1", *good])
    report = run_local(
        _pipeline(tmp_path / "in"), tmp_path / "out", workers=workers, timeout_s=3, memory_mb=1024
    )
    m = Manifest(tmp_path / "out" / "manifest.sqlite")
    rows = {r.key: r for r in m.iter_rows()}
    assert rows["x/segv_1"].error_class == "crash"
    assert rows["x/segv_1"].signal == "SIGSEGV"
    assert rows["x/hang_1"].error_class == "timeout"
    assert rows["x/hog_1"].error_class == "oom"
    assert rows["x/boom_1"].error_class == "failed"
    assert rows["x/boom_1"].error_type == "ValueError"
    assert "boom on purpose" in rows["x/boom_1"].message
    for name in good:
        assert rows[f"x/{name}"].status == "ok", rows[f"x/{name}"]
    assert report.counts["ok"] == len(good)
    assert report.counts["error"] == 4
    assert report.errors_by_class == {"crash": 1, "timeout": 1, "oom": 1, "failed": 1}


def test_pool_replaces_dead_children_and_retries(tmp_path: Path) -> None:
    _tree(tmp_path / "in", ["segv_a", "good_a", "good_b"])
    p = _pipeline(tmp_path / "in")
    tasks = [
        ItemTask(r["key"], "files", r)
        for r in Files(root=str(tmp_path / "in")).list_items(p.context("files"))
    ]
    with ProcessPool(p, workers=1, timeout_s=5, retries=1) as pool:
        results = {r.key: r for r in pool.imap_unordered(tasks)}
        # one crash, retried once (attempt 2), then reported; the child was replaced twice
        assert pool.replaced == 2
    assert results["x/segv_a"].error_class == "crash"
    assert results["x/segv_a"].attempt == 2
    assert results["x/good_a"].status == results["x/good_b"].status == "ok"


def test_inline_run_of_isolated_stage_still_uses_a_child(tmp_path: Path) -> None:
    """workers=0 must not run a crashing decoder in the driver process."""
    _tree(tmp_path / "in", ["segv_only"])
    report = run_local(_pipeline(tmp_path / "in"), tmp_path / "out", workers=0, timeout_s=5)
    assert report.counts["error"] == 1
    assert report.errors_by_class == {"crash": 1}

"""Untrusted decoding runs in child processes: a segfault, a hang or a memory hog in one item
becomes that item's error row; the child is replaced; every other item is written."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from datapipe.engine.pool import ProcessPool
from datapipe.engine.runner import ItemResult, ItemTask
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stages.io.files import Files
from datapipe.store.codec import decode_value
from datapipe.store.manifest import Manifest
from fault_stages import Counter, Faulty, Large

#: larger than a pipe's buffer, also when the pool grows it (1 MiB on Linux)
BIG = 3 << 20
#: generous: only a pool that stopped making progress runs into it
HUNG_AFTER_S = 90.0


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
        # a small cap: 'hog' reaches it (oom) well before its time limit on a loaded machine
        _pipeline(tmp_path / "in"),
        tmp_path / "out",
        workers=workers,
        timeout_s=3,
        memory_mb=256,
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


def test_deep_queues_of_quick_items_survive_a_crash_exactly_once(tmp_path: Path) -> None:
    """Quick items are queued many to a child; a crash mid-queue requeues the rest, and every
    item still gets exactly one result. Slow items are queued two deep."""
    names = [f"good_{i:03d}" for i in range(80)]
    names.insert(50, "segv_mid")
    _tree(tmp_path / "in", names)
    p = _pipeline(tmp_path / "in")
    tasks = [
        ItemTask(r["key"], "files", r)
        for r in Files(root=str(tmp_path / "in")).list_items(p.context("files"))
    ]
    with ProcessPool(p, workers=2, timeout_s=30) as pool:
        assert pool._depth() == pool.slow_prefetch  # nothing timed yet
        keys = [r.key for r in pool.imap_unordered(tasks)]
        assert pool._depth() == pool.prefetch > pool.slow_prefetch  # quick items
        assert pool.replaced == 1
    assert sorted(keys) == sorted(t.key for t in tasks)  # each once, none lost
    slow = Pipeline.chain(Files(root=str(tmp_path / "in"), kinds=["image"]), Faulty(sleep_s=0.05))
    with ProcessPool(slow, workers=2, timeout_s=30) as pool:
        assert len(list(pool.imap_unordered(tasks[:6]))) == 6
        assert pool._depth() == pool.slow_prefetch


def test_inline_run_of_isolated_stage_still_uses_a_child(tmp_path: Path) -> None:
    """workers=0 must not run a crashing decoder in the driver process."""
    _tree(tmp_path / "in", ["segv_only"])
    report = run_local(_pipeline(tmp_path / "in"), tmp_path / "out", workers=0, timeout_s=5)
    assert report.counts["error"] == 1
    assert report.errors_by_class == {"crash": 1}


def _drain(pool: ProcessPool, tasks: list[ItemTask]) -> dict[str, ItemResult]:
    """Every result of ``pool``, by key; fails (rather than hangs) when the pool deadlocks."""
    results: dict[str, ItemResult] = {}
    raised: list[BaseException] = []

    def consume() -> None:
        try:
            for res in pool.imap_unordered(tasks):
                results[res.key] = res
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    thread.join(HUNG_AFTER_S)
    if thread.is_alive():
        for child in pool.children:  # frees a parent blocked on a pipe
            child.proc.kill()
        thread.join(10)
        pytest.fail(f"the pool hung with {len(results)} of {len(tasks)} results")
    if raised:
        raise raised[0]
    return results


def _big_tasks(names: list[str], encode: bool) -> list[ItemTask]:
    """Tasks whose records alone are larger than a pipe's buffer."""
    return [
        ItemTask(name, "test_counter", {"key": name, "index": i, "pad": "p" * BIG}, encode=encode)
        for i, name in enumerate(names)
    ]


@pytest.mark.parametrize("encode", [True, False])
def test_large_tasks_and_results_do_not_deadlock(encode: bool) -> None:
    """The parent writes the prefetched task while the child writes a large result: neither
    may wait for the other (both records are larger than any pipe buffer)."""
    names = [f"item_{i}" for i in range(5)]
    p = Pipeline.chain(Counter(n=0), Large(nbytes=BIG))
    with ProcessPool(p, workers=1, timeout_s=60, memory_mb=0) as pool:
        assert pool.prefetch >= 2
        results = _drain(pool, _big_tasks(names, encode))
    assert sorted(results) == names
    for i, name in enumerate(names):
        res = results[name]
        assert res.status == "ok", res.message
        if encode:
            (key, members) = res.samples[0]
            blob = decode_value("npy", dict(members)[f"{name}.blob.npy"])
            assert key == name and dict(members)[f"{name}.pad.json"] == b'"' + b"p" * BIG + b'"'
        else:
            blob = res.records[0][1]["blob"]
            assert res.records[0][1]["pad"] == "p" * BIG
        assert blob.shape == (BIG,) and blob.dtype == np.uint8
        assert int(blob.min()) == int(blob.max()) == i


def test_child_hung_with_a_large_task_waiting_still_times_out() -> None:
    """A child that hangs leaves the next (large) task unread in its pipe: the parent must
    not block writing it, or the time limit would never fire."""
    names = ["hang_0", "good_1", "good_2"]
    p = Pipeline.chain(Counter(n=0), Large(nbytes=16))
    with ProcessPool(p, workers=1, timeout_s=2, memory_mb=0) as pool:
        results = _drain(pool, _big_tasks(names, encode=False))
        assert pool.replaced == 1
    assert results["hang_0"].error_class == "timeout"
    assert results["good_1"].status == results["good_2"].status == "ok"
    assert int(results["good_2"].records[0][1]["blob"][0]) == 2

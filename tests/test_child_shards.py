"""Worker children write their samples into shards themselves; the parent reads every shard
back and checks it against what the child reported before anything counts. tarfile is the
oracle for the archive format; hostile children try to slip in what they should not."""

from __future__ import annotations

import io
import mmap
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datapipe.config import OutputSpec
from datapipe.engine.child_shards import verify_shard
from datapipe.engine.runner import ItemResult
from datapipe.engine.wire import WireError
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.hooks import RunHooks
from datapipe.stages.io.files import Files
from datapipe.store.manifest import Manifest
from datapipe.store.shards import iter_samples
from datapipe.store.tarformat import TarStream, walk_members
from fault_stages import Faulty, Hostile

segment = st.text(alphabet="abcXYZ019_-", min_size=1, max_size=60)
member_names = st.lists(segment, min_size=1, max_size=4).map("/".join)
archives = st.lists(st.tuples(member_names, st.binary(max_size=1500)), max_size=8)


def _archive(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    stream = TarStream(buf)
    stream.add_many(members)
    stream.finish()
    return buf.getvalue()


@settings(max_examples=200, deadline=None)
@given(archives)
def test_walk_reads_what_tarfile_reads(members: list[tuple[str, bytes]]) -> None:
    data = _archive(members)
    walked = [(name, data[start : start + size]) for name, start, size in walk_members(data)]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
        assert walked == [(m.name, tar.extractfile(m).read()) for m in tar]


def test_walk_refuses_damaged_archives() -> None:
    data = _archive([("k/a.x.bin", b"abc" * 300), ("k/a.y.json", b"1")])
    rng = np.random.default_rng(3)
    refused = 0
    for _ in range(300):
        damaged = bytearray(data)
        if rng.random() < 0.5:
            damaged = damaged[: int(rng.integers(0, len(data)))]
        else:  # a flipped byte in a header (data bytes are the child's own business)
            damaged[int(rng.choice([0, 100, 124, 130, 150, 156, 257, 1536]))] ^= 0x40
        try:
            walk_members(bytes(damaged))
        except ValueError:
            refused += 1
            continue
        # what is accepted must be what tarfile reads too
        with tarfile.open(fileobj=io.BytesIO(bytes(damaged)), mode="r|") as tar:
            assert len(list(tar)) == 2
    assert refused > 250


def _shard(tmp_path: Path, members: list[tuple[str, bytes]]) -> tuple[Path, int]:
    path = tmp_path / "s.tar"
    path.write_bytes(_archive(members))
    return path, path.stat().st_size


def _pending(*keys: str, samples: int = 1) -> dict[str, ItemResult]:
    return {k: ItemResult(k, "ok", shard_samples=samples) for k in keys}


def test_a_true_shard_is_accepted_in_its_order(tmp_path: Path) -> None:
    path, size = _shard(
        tmp_path,
        [("x/b.v.npy", b"1"), ("x/b.w.json", b"2"), ("x/a@0000.v.npy", b"3"),
         ("x/a@0001.v.npy", b"4")],
    )  # fmt: skip
    pending = {"x/a": ItemResult("x/a", "ok", shard_samples=2), **_pending("x/b")}
    assert [r.key for r in verify_shard(path, 3, size, pending)] == ["x/b", "x/a"]


LIES = {
    "another item": ([("x/c.v.npy", b"1")], _pending("x/a"), 1),
    "an item missing": ([("x/a.v.npy", b"1")], _pending("x/a", "x/b"), 1),
    "samples not together": (
        [("x/a.v.npy", b"1"), ("x/b.v.npy", b"2"), ("x/a@1.v.npy", b"3")],
        {"x/a": ItemResult("x/a", "ok", shard_samples=2), **_pending("x/b")},
        3,
    ),
    "wrong sample count": ([("x/a.v.npy", b"1")], _pending("x/a", samples=2), 2),
    "wrong total": ([("x/a.v.npy", b"1")], _pending("x/a"), 5),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_shard_that_lies_is_refused(tmp_path: Path, lie: str) -> None:
    members, pending, n_samples = LIES[lie]
    path, size = _shard(tmp_path, members)
    with pytest.raises(WireError):
        verify_shard(path, n_samples, size, pending)


def test_a_wrong_size_or_a_broken_archive_is_refused(tmp_path: Path) -> None:
    path, size = _shard(tmp_path, [("x/a.v.npy", b"1" * 700)])
    with pytest.raises(WireError, match="bytes"):
        verify_shard(path, 1, size + 512, _pending("x/a"))
    path.write_bytes(path.read_bytes()[:-1024])  # no end-of-archive blocks
    with pytest.raises(WireError):
        verify_shard(path, 1, size - 1024, _pending("x/a"))
    with pytest.raises(WireError):
        verify_shard(tmp_path / "missing.tar", 1, size, _pending("x/a"))


def _tree(root: Path, names: list[str]) -> None:
    (root / "x").mkdir(parents=True)
    for i, name in enumerate(names):
        (root / "x" / f"{name}.jpg").write_bytes(b"\xff\xd8" + bytes(10 + i))


def _stored(out: Path) -> list[str]:
    """The keys of every sample in the shards on disk (each must be a recorded one)."""
    on_disk = sorted((out / "shards").glob("*.tar"))
    assert {p.name for p in on_disk} == set(Manifest(out / "manifest.sqlite").shards())
    return [s["key"] for s in iter_samples(on_disk)]


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "shards").iterdir() if p.name.startswith("."))


def test_layout_is_full_shards_and_one_partly_filled(tmp_path: Path) -> None:
    """Two children each end with a partly filled shard; they are merged, so the layout is
    the one a single writer leaves, and every item is stored once."""
    names = [f"good_{i:03d}" for i in range(47)]
    _tree(tmp_path / "in", names)
    p = Pipeline.chain(
        Files(root=str(tmp_path / "in"), kinds=["image"]), Faulty(),
        output=OutputSpec(shard_size=10),
    )  # fmt: skip
    report = run_local(p, tmp_path / "out", workers=2)
    assert report.counts["ok"] == 47
    shards = Manifest(tmp_path / "out" / "manifest.sqlite").shards()
    assert sorted(n for n, _ in shards.values()) == [7, 10, 10, 10, 10]
    assert sorted(p.name for p in (tmp_path / "out/shards").glob("*.tar")) == sorted(shards)
    assert sorted(_stored(tmp_path / "out")) == [f"x/{n}" for n in names]
    assert _leftovers(tmp_path / "out") == []


def test_a_crash_loses_nothing_a_child_had_written(tmp_path: Path) -> None:
    """A child crashes with answered items in its open shard: they run again, and each item
    is stored exactly once."""
    names = [f"good_{i:03d}" for i in range(60)]
    names.insert(40, "segv_mid")
    _tree(tmp_path / "in", names)
    p = Pipeline.chain(Files(root=str(tmp_path / "in"), kinds=["image"]), Faulty())
    report = run_local(p, tmp_path / "out", workers=2, timeout_s=30)
    assert report.counts["ok"] == 60 and report.errors_by_class == {"crash": 1}
    assert sorted(_stored(tmp_path / "out")) == [f"x/{n}" for n in names if n != "segv_mid"]
    assert _leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("attack", ["forge", "shardname", "shardlie"])
def test_a_child_that_lies_about_its_shard_is_caught(tmp_path: Path, attack: str) -> None:
    """The lying item becomes an error row (after running once more alone); the items that
    shared its child's shard are stored once; the forged file is gone."""
    good = [f"good_{i}" for i in range(12)]
    _tree(tmp_path / "in", [*good[:5], f"{attack}_1", *good[5:]])
    out = tmp_path / "out"
    p = Pipeline.chain(
        Files(root=str(tmp_path / "in"), kinds=["image"]),
        Hostile(shard_dir=str(out / "shards")),
    )
    hooks = _Seen(out / "shards")
    report = run_local(p, out, workers=1, timeout_s=20, memory_mb=512, hooks=hooks)
    # progress hears of each item once, the liar too (answered first, an error row at last)
    assert sorted(hooks.items) == sorted(f"x/{n}" for n in [*good, f"{attack}_1"])
    rows = {r.key: r for r in Manifest(out / "manifest.sqlite").iter_rows()}
    assert rows[f"x/{attack}_1"].error_class == "crash"
    assert rows[f"x/{attack}_1"].error_type == "WorkerProtocolError"
    assert report.counts["ok"] == len(good)
    assert sorted(_stored(out)) == sorted(f"x/{n}" for n in good)
    assert not (tmp_path / "escaped.tar").exists()
    assert all("-900" not in p.name for p in (out / "shards").iterdir())


class _Seen(RunHooks):
    """The items the hooks heard of, and how many of them before any shard was closed."""

    def __init__(self, shard_dir: Path) -> None:
        self.shard_dir = shard_dir
        self.items: list[str] = []
        self.before_any_shard = 0

    def on_item(self, key: str, status: str) -> None:
        self.items.append(key)
        self.before_any_shard += not any(self.shard_dir.glob("*.tar"))


def test_progress_hears_of_each_item_once(tmp_path: Path) -> None:
    """Items are announced as their child answers (not when its shard closes at the end),
    once each, also when a crash makes answered items run again."""
    names = [f"good_{i:03d}" for i in range(30)]
    names.insert(20, "segv_mid")
    _tree(tmp_path / "in", names)
    p = Pipeline.chain(Files(root=str(tmp_path / "in"), kinds=["image"]), Faulty())
    hooks = _Seen(tmp_path / "out" / "shards")
    run_local(p, tmp_path / "out", workers=2, timeout_s=30, hooks=hooks)
    assert sorted(hooks.items) == [f"x/{n}" for n in sorted(names)]
    # 30 items fit in one shard per child, closed only when the work is done
    assert hooks.before_any_shard == len(names)


def test_a_damaged_mapped_archive_raises_its_own_error(tmp_path: Path) -> None:
    """The walk's numpy view of a mapped file is gone before it raises, so closing the map
    does not replace the real error with a BufferError."""
    data = bytearray(_archive([("k/a.x.bin", b"abc" * 300)]))
    data[150] ^= 0x01  # the checksum field
    path = tmp_path / "bad.tar"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            walk_members(view)

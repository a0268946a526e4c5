"""The output store through the Python API: WebDataset interop, manifest completeness,
incremental runs, select.random, bad inputs, path safety, atomic writes and the lock.

Shards are read back with ``tarfile`` and the real ``webdataset`` package and the manifest
with ``sqlite3``, not through datapipe's own readers.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import shutil
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from datapipe.config import OutputSpec
from datapipe.errors import ItemError, StoreBusyError, StoreError
from datapipe.executors.local import run_local
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.stage import Map, Record
from datapipe.stages.io.files import Files
from datapipe.stages.io.image_resize import ImageResize
from datapipe.stages.subset.random_subset import key_uniform
from datapipe.store import OutputStore, check_key, sanitize_key

CLASSES = {"cat": 3, "dog": 3, "bird": 2}
SIZES = [(16, 16), (32, 24), (48, 64), (64, 40)]


def make_images(root: Path, classes: dict[str, int] = CLASSES, seed: int = 0) -> list[str]:
    """Small JPEGs in one folder per class; returns their keys (relative path, no suffix)."""
    rng = np.random.default_rng(seed)
    keys = []
    for cls, n in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = SIZES[(i + len(keys)) % len(SIZES)]
            base = rng.integers(0, 256, 3)
            noise = rng.integers(-40, 40, (h, w, 3))
            arr = np.clip(base + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"{cls}_{i}.jpg", quality=85)
            keys.append(f"{cls}/{cls}_{i}")
    return sorted(keys)


def pipeline(
    root: Path, size: int = 8, shard_size: int = 3, select: dict | None = None, seed: int = 0
) -> Pipeline:
    nodes: dict[str, Any] = {"src": {"stage": "files", "params": {"root": str(root)}}}
    if select is not None:
        nodes["pick"] = {"stage": "select.random", "inputs": "src", "params": select}
    upstream = "pick" if select is not None else "src"
    nodes["resize"] = {"stage": "image.resize", "inputs": upstream, "params": {"size": size}}
    spec = {"name": "t", "seed": seed, "nodes": nodes, "output": {"shard_size": shard_size}}
    return Pipeline.from_dict(spec, base_dir=root.parent)


def split_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def shard_samples(out: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    """key -> (shard name, {field.ext: bytes}); fails on a key present twice anywhere."""
    samples: dict[str, tuple[str, dict[str, bytes]]] = {}
    for path in sorted((out / "shards").glob("*.tar")):
        seen_here: set[str] = set()
        with tarfile.open(path) as tar:
            for info in tar:
                assert info.isfile(), f"{path.name}: {info.name} is not a regular file"
                key, ext = split_name(info.name)
                if key not in seen_here:
                    assert key not in samples, f"{key} in {samples[key][0]} and {path.name}"
                    seen_here.add(key)
                    samples[key] = (path.name, {})
                fields = samples[key][1]
                assert ext not in fields, f"{path.name}: member {info.name} written twice"
                fields[ext] = tar.extractfile(info).read()  # type: ignore[union-attr]
    return samples


def manifest_rows(out: Path) -> dict[str, dict[str, Any]]:
    db = sqlite3.connect(out / "manifest.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return {r["key"]: dict(r) for r in db.execute("SELECT * FROM items")}
    finally:
        db.close()


def check_consistent(out: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    """Manifest ok rows and shard contents describe the same samples, once each."""
    samples = shard_samples(out)
    rows = manifest_rows(out)
    assert set(samples) == {k for k, r in rows.items() if r["status"] == "ok"}
    for key, (shard, _) in samples.items():
        assert rows[key]["shard"] == shard
    assert not list(out.rglob(".*.tmp-*")), "temporary files left behind"
    return samples


def image_of(sample: dict[str, bytes]) -> np.ndarray:
    return np.load(io.BytesIO(sample["image.npy"]), allow_pickle=False)


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "data"
    return root, make_images(root)


@pytest.fixture
def first_run(tmp_path: Path, data: tuple[Path, list[str]]) -> tuple[Path, Path, list[str]]:
    root, keys = data
    out = tmp_path / "out"
    report = run_local(pipeline(root), out)
    assert report.counts["processed"] == len(keys) == report.counts["ok"]
    return root, out, keys


# -- format -----------------------------------------------------------------------------------
def test_shards_are_webdataset_readable_without_pickle(first_run: tuple[Path, Path, list[str]]):
    import webdataset as wds

    _, out, keys = first_run
    samples = check_consistent(out)
    assert sorted(samples) == keys
    for _, fields in samples.values():
        assert set(fields) >= {"image.npy", "label.json", "label_id.json", "relpath.json"}
        assert "path.json" not in fields and "mtime_ns.json" not in fields
        for ext, raw in fields.items():
            assert ext.endswith((".npy", ".json")), f"unexpected member type {ext}"
            assert not raw.startswith(b"\x80"), f"{ext} looks like a pickle"
            if ext.endswith(".npy"):
                assert raw.startswith(b"\x93NUMPY")
                np.load(io.BytesIO(raw), allow_pickle=False)
            else:
                json.loads(raw)
    urls = [str(p) for p in sorted((out / "shards").glob("*.tar"))]
    raw_seen = {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False)}
    assert sorted(raw_seen) == keys
    for key, s in raw_seen.items():
        assert s["image.npy"] == samples[key][1]["image.npy"]
    decoded = list(wds.WebDataset(urls, shardshuffle=False).decode())
    assert sorted(s["__key__"] for s in decoded) == keys
    for s in decoded:
        ref = image_of(samples[s["__key__"]][1])
        np.testing.assert_array_equal(s["image.npy"], ref)
        assert ref.shape == (8, 8, 3) and ref.dtype == np.uint8
        cls = s["__key__"].split("/")[0]
        assert s["label.json"] == cls
        assert s["label_id.json"] == sorted(CLASSES).index(cls)


def test_every_key_once_and_shard_size_respected(tmp_path: Path, data: tuple[Path, list[str]]):
    root, keys = data
    p = Pipeline.chain(
        Files(root=str(root)),
        ImageResize(size=8),
        base_dir=tmp_path,
        output=OutputSpec(shard_size=3),
    )
    report = run_local(p, tmp_path / "out")
    out = tmp_path / "out"
    samples = check_consistent(out)
    assert sorted(manifest_rows(out)) == keys
    per_shard: dict[str, int] = {}
    for shard, _ in samples.values():
        per_shard[shard] = per_shard.get(shard, 0) + 1
    assert max(per_shard.values()) <= 3
    assert len(per_shard) == math.ceil(len(keys) / 3) == report.shards
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(per_shard)
    index = json.loads((out / "index.json").read_text())
    assert sorted(index["shards"]) == sorted(f"shards/{s}" for s in per_shard)


# -- incremental runs -------------------------------------------------------------------------
def test_second_identical_run_processes_nothing(first_run: tuple[Path, Path, list[str]]):
    root, out, keys = first_run
    before = shard_samples(out)
    report = run_local(pipeline(root), out)
    assert report.counts["processed"] == 0
    assert report.counts["unchanged"] == len(keys)
    assert shard_samples(out) == before
    db = sqlite3.connect(out / "manifest.sqlite")
    sql = "SELECT fingerprint, status, counts, versions FROM runs ORDER BY id"
    runs = db.execute(sql).fetchall()
    db.close()
    assert [(fp, st) for fp, st, _, _ in runs] == [(report.fingerprint, "ok")] * 2
    assert [json.loads(c)["processed"] for _, _, c, _ in runs] == [len(keys), 0]
    assert {"datapipe", "numpy", "pillow", "python"} <= set(json.loads(runs[-1][3]))


def test_touch_same_bytes_processes_nothing_and_updates_row(first_run):
    root, out, _ = first_run
    target = root / "cat" / "cat_0.jpg"
    old = target.stat().st_mtime_ns
    os.utime(target, ns=(old + 5 * 10**9, old + 5 * 10**9))
    before = shard_samples(out)
    report = run_local(pipeline(root), out)
    assert report.counts["processed"] == 0
    assert manifest_rows(out)["cat/cat_0"]["mtime_ns"] == target.stat().st_mtime_ns != old
    assert shard_samples(out) == before


def test_changed_bytes_reprocess_that_key_only(first_run: tuple[Path, Path, list[str]]):
    root, out, keys = first_run
    before = shard_samples(out)
    target = root / "dog" / "dog_1.jpg"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(target, quality=95)
    report = run_local(pipeline(root), out)
    assert report.counts["processed"] == 1 and report.counts["ok"] == 1
    after = check_consistent(out)
    assert sorted(after) == keys  # the old version was compacted away, not kept beside
    new = image_of(after["dog/dog_1"][1])
    assert np.abs(new.reshape(-1, 3).mean(0) - (200, 10, 10)).max() < 8
    assert json.loads(after["dog/dog_1"][1]["size.json"]) == target.stat().st_size
    assert not np.array_equal(new, image_of(before["dog/dog_1"][1]))
    for key in keys:
        if key != "dog/dog_1":
            assert after[key][1] == before[key][1]


def test_added_file_processes_exactly_one(first_run: tuple[Path, Path, list[str]]):
    root, out, keys = first_run
    Image.new("RGB", (20, 20), (0, 90, 0)).save(root / "bird" / "new.jpg")
    report = run_local(pipeline(root), out)
    assert report.counts["processed"] == 1
    assert sorted(check_consistent(out)) == sorted([*keys, "bird/new"])


def test_deleted_file_leaves_manifest_and_shards(first_run: tuple[Path, Path, list[str]]):
    root, out, keys = first_run
    before = shard_samples(out)
    gone = "cat/cat_1"
    neighbours = [k for k, (s, _) in before.items() if s == before[gone][0] and k != gone]
    assert neighbours, "the deleted key should share its shard with others"
    (root / "cat" / "cat_1.jpg").unlink()
    report = run_local(pipeline(root), out)
    assert report.counts["processed"] == 0 and report.counts["vanished"] == 1
    assert gone not in manifest_rows(out)
    after = check_consistent(out)
    assert sorted(after) == [k for k in keys if k != gone]
    for k in neighbours:
        assert after[k][1] == before[k][1]


def test_param_change_reprocesses_everything(first_run: tuple[Path, Path, list[str]]):
    root, out, keys = first_run
    old_fp = {r["fingerprint"] for r in manifest_rows(out).values()}
    report = run_local(pipeline(root, size=6), out)
    assert report.counts["processed"] == len(keys)
    after = check_consistent(out)
    assert sorted(after) == keys
    assert all(image_of(f).shape == (6, 6, 3) for _, f in after.values())
    fps = {r["fingerprint"] for r in manifest_rows(out).values()}
    assert len(fps) == 1 and fps != old_fp


# -- select.random ------------------------------------------------------------------------------
def expected_subset(keys: list[str], fraction: float, seed: int) -> set[str]:
    ranked = sorted(keys, key=lambda k: (key_uniform(k, seed), k))
    return set(ranked[: round(fraction * len(keys))])


def test_select_random_is_seeded_and_matches_oracle(tmp_path: Path):
    root = tmp_path / "data"
    keys = make_images(root, {"a": 5, "b": 5, "c": 4})
    kept = []
    for name, seed in (("o1", 7), ("o2", 7), ("o3", 8)):
        report = run_local(pipeline(root, select={"fraction": 0.4}, seed=seed), tmp_path / name)
        pick = report.selections["pick"]
        assert (pick["seen"], pick["kept"]) == (len(keys), round(0.4 * len(keys)))
        kept.append(set(check_consistent(tmp_path / name)))
    assert kept[0] == kept[1] == expected_subset(keys, 0.4, 7)
    assert kept[2] == expected_subset(keys, 0.4, 8) != kept[0]
    rows = manifest_rows(tmp_path / "o1")
    assert sorted(rows) == keys
    for key, row in rows.items():
        if key in kept[0]:
            assert row["status"] == "ok"
        else:
            assert row["status"] == "filtered" and row["stage"] == "pick"
            assert row["message"]

    # adding inputs re-decides the subset over every key; the shards follow the new decision
    for i in range(4):
        Image.new("RGB", (16, 16), (i * 60, 0, 0)).save(root / "a" / f"extra_{i}.jpg")
    grown = sorted([*keys, *(f"a/extra_{i}" for i in range(4))])
    run_local(pipeline(root, select={"fraction": 0.4}, seed=7), tmp_path / "o1")
    assert set(check_consistent(tmp_path / "o1")) == expected_subset(grown, 0.4, 7)
    assert sorted(manifest_rows(tmp_path / "o1")) == grown


# -- bad inputs -----------------------------------------------------------------------------------
def test_bad_inputs_become_error_rows_and_good_ones_are_unchanged(tmp_path: Path):
    root = tmp_path / "data"
    keys = make_images(root)
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    (root / "cat" / "zero.jpg").write_bytes(b"")
    rng = np.random.default_rng(3)
    (root / "cat" / "noise.jpg").write_bytes(b"\x01\x02" + rng.bytes(700))
    (root / "dog" / "notes.jpg").write_text("this is not an image\n" * 20)
    whole = (root / "dog" / "dog_2.jpg").read_bytes()
    (root / "dog" / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    Image.new("RGB", (24, 24), (5, 100, 200)).save(root / "bird" / "png.jpg", format="PNG")
    expected = {
        "cat/zero": {"empty"},
        "cat/noise": {"unsupported", "corrupt"},
        "dog/notes": {"unsupported", "corrupt"},
        "dog/cut": {"truncated"},
    }
    report = run_local(pipeline(root), tmp_path / "out")
    assert report.counts["error"] == len(expected)
    rows = manifest_rows(tmp_path / "out")
    assert sorted(rows) == sorted([*keys, *expected, "bird/png"])
    for key, classes in expected.items():
        row = rows[key]
        assert row["status"] == "error" and row["stage"] == "resize", row
        assert row["error_class"] in classes, (key, row["error_class"], row["message"])
        assert row["message"] and row["shard"] is None
    assert rows["bird/png"]["status"] == "ok"
    got = check_consistent(tmp_path / "out")
    run_local(pipeline(clean), tmp_path / "out_clean")
    ref = check_consistent(tmp_path / "out_clean")
    assert sorted(ref) == keys
    for key in keys:
        assert got[key][1] == ref[key][1], key


# -- path safety ----------------------------------------------------------------------------------
def snapshot(root: Path, skip: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p): (p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file() and skip not in p.parents
    }


def test_labels_csv_cannot_reach_outside_the_root(tmp_path: Path):
    root = tmp_path / "data"
    make_images(root)
    shutil.copy(root / "cat" / "cat_0.jpg", tmp_path / "outside.jpg")
    elsewhere = tmp_path / "elsewhere.jpg"
    shutil.copy(root / "dog" / "dog_0.jpg", elsewhere)
    (root / "cat" / "link.jpg").symlink_to(elsewhere)  # a link inside the root, pointing out
    rows_csv = ["cat/cat_0.jpg,cat", "dog/dog_0.jpg,dog", "../outside.jpg,cat", f"{elsewhere},dog"]
    (tmp_path / "labels.csv").write_text("\n".join(["path,label", *rows_csv, "cat/link.jpg,cat"]))
    spec = {
        "nodes": {
            "src": {"stage": "files", "params": {"root": "data", "labels": "labels.csv"}},
            "resize": {"stage": "image.resize", "inputs": "src", "params": {"size": 8}},
        }
    }
    out = tmp_path / "out"
    before = snapshot(tmp_path, out)
    report = run_local(Pipeline.from_dict(spec, base_dir=tmp_path), out)
    assert snapshot(tmp_path, out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["data", "outside.jpg", "elsewhere.jpg", "labels.csv", "out"]
    )
    rows = manifest_rows(out)
    unsafe = [r for r in rows.values() if r["status"] == "error"]
    assert len(unsafe) == 3 and report.counts["error"] == 3
    assert all(r["error_class"] == "security" for r in unsafe)
    assert {r["key"] for r in unsafe} == {"../outside.jpg", str(elsewhere), "cat/link.jpg"}
    assert set(check_consistent(out)) == {"cat/cat_0", "dog/dog_0"}
    for path in (out / "shards").glob("*.tar"):
        with tarfile.open(path) as tar:
            assert all(".." not in n.split("/") and not n.startswith("/") for n in tar.getnames())


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../b", "a.b", "", "a//b", "./a"])
def test_check_key_rejects_unsafe_keys(key: str):
    with pytest.raises(ItemError) as err:
        check_key(key)
    assert err.value.error_class == "security"


def test_sanitized_names_never_collide(tmp_path: Path):
    names = ["a b.jpg", "a_b.jpg", "\u00e9.jpg", "\u00e8.jpg", "x.y.jpg", "x_y.jpg"]
    keys = [sanitize_key(f"cls/{n}") for n in names]
    assert len(set(keys)) == len(names)
    for key in keys:
        assert check_key(key, item=True) == key
    assert sanitize_key("cls/a_b.jpg") == "cls/a_b"  # safe names stay readable


def test_check_key_accepts_plain_keys():
    assert check_key("a/b-c_d") == "a/b-c_d"
    assert check_key("cat/img_01@0003") == "cat/img_01@0003"


# -- atomic writes and recovery -------------------------------------------------------------------
def test_recover_removes_temporaries_and_orphan_shards(first_run):
    root, out, keys = first_run
    assert not list(out.rglob(".*.tmp-*"))
    with OutputStore(out) as store:
        committed = sorted(p.name for p in store.shard_paths())
        tmp = out / "shards" / ".shard-00009-00001.tar.tmp-4242"
        tmp.write_bytes(b"half a shard")
        orphan = out / "shards" / "shard-99999-00001.tar"
        shutil.copy(out / "shards" / committed[0], orphan)
        root_tmp = out / ".index.json.tmp-4242"
        root_tmp.write_text("{")
        result = store.recover()
        assert result["temporaries"] == 2 and result["orphans"] == 1
        assert not tmp.exists() and not orphan.exists() and not root_tmp.exists()
        assert sorted(p.name for p in (out / "shards").iterdir()) == committed
    assert sorted(check_consistent(out)) == keys
    assert run_local(pipeline(root), out).counts["processed"] == 0


# -- the lock and unusable outputs ----------------------------------------------------------------
def test_second_store_on_same_output_is_refused(tmp_path: Path, data):
    root, _ = data
    out = tmp_path / "out"
    with OutputStore(out):
        with pytest.raises(StoreBusyError) as err:
            OutputStore(out).open()
        msg = str(err.value)
        assert "another datapipe run" in msg and str(out) in msg and str(os.getpid()) in msg
        with pytest.raises(StoreBusyError):
            run_local(pipeline(root), out)
    assert run_local(pipeline(root), out).counts["ok"] == sum(CLASSES.values())


def test_output_under_a_file_is_a_store_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create output directory"):
        OutputStore(blocker / "out").open()


def test_unwritable_output_is_a_store_error(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("running as root: chmod does not make a directory unwritable")
        with pytest.raises(StoreError, match=r"not writable|cannot create"):
            OutputStore(out).open()
    finally:
        out.chmod(0o700)


# -- compressed arrays -----------------------------------------------------------------------------
def _resize_spec(root: Path, output: dict[str, Any]) -> dict[str, Any]:
    nodes = {
        "src": {"stage": "files", "params": {"root": str(root)}},
        "resize": {"stage": "image.resize", "inputs": "src", "params": {"size": 32}},
    }
    return {"name": "t", "nodes": nodes, "output": {"shard_size": 3, **output}}


def test_compressed_arrays_read_back_everywhere(tmp_path: Path, data: tuple[Path, list[str]]):
    import webdataset as wds

    from datapipe.stream import from_shards

    root, keys = data
    plain = Pipeline.from_dict(_resize_spec(root, {}))
    gz = Pipeline.from_dict(_resize_spec(root, {"compress": ["image"]}))
    run_local(plain, tmp_path / "plain")
    run_local(gz, tmp_path / "gz")
    run_local(gz, tmp_path / "gz2")
    want = {k: image_of(f) for k, (_, f) in shard_samples(tmp_path / "plain").items()}
    samples = shard_samples(tmp_path / "gz")
    for key, (_, fields) in samples.items():
        assert "image.npy" not in fields and fields["label.json"]  # only the listed field
        member = fields["image.npy.gz"]
        assert member[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x04\xff"  # no time, no OS
        raw = gzip.decompress(member)  # plain gzip around a plain .npy
        np.testing.assert_array_equal(np.load(io.BytesIO(raw), allow_pickle=False), want[key])
    urls = [str(p) for p in sorted((tmp_path / "gz" / "shards").glob("*.tar"))]
    for s in wds.WebDataset(urls, shardshuffle=False).decode():  # the peer reader
        np.testing.assert_array_equal(s["image.npy.gz"], want[s["__key__"]])
    streamed = {s["key"]: s["image"].numpy() for s in from_shards(tmp_path / "gz")}
    assert sorted(streamed) == keys
    assert all(np.array_equal(streamed[k], want[k]) for k in keys)
    # the same samples give the same bytes (no timestamp in the gzip header)
    again = shard_samples(tmp_path / "gz2")
    assert {k: f for k, (_, f) in again.items()} == {k: f for k, (_, f) in samples.items()}
    # compression is part of what a run writes: switching it redoes the items
    assert gz.fingerprint() != plain.fingerprint()
    assert run_local(plain, tmp_path / "gz").counts["processed"] == len(keys)


def test_compress_true_takes_every_array_and_corruption_is_skipped(tmp_path: Path):
    from datapipe.stream import from_shards

    nodes = {
        "src": {"stage": "test.counter", "params": {"n": 6}},
        "sq": {"stage": "test.square", "inputs": "src"},
    }
    p = Pipeline.from_dict({"nodes": nodes, "output": {"compress": True}})
    run_local(p, tmp_path / "out")
    samples = shard_samples(tmp_path / "out")
    assert all(set(f) == {"index.json", "label.json", "square.npy.gz"} for _, f in samples.values())
    # a corrupt compressed member is a skipped sample in the loader, not a crash
    shard = next((tmp_path / "out" / "shards").glob("*.tar"))
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name == "item_002.square.npy.gz")
    with open(shard, "r+b") as fh:
        fh.seek(member.offset_data + 12)
        fh.write(b"\xff" * 8)
    ds = from_shards(tmp_path / "out", shuffle=False)
    keys = [s["key"] for s in ds]
    assert "item_002" not in keys and len(keys) == 6
    assert ds.skipped[0][0] == "item_002" and "does not decode" in ds.skipped[0][1]


@pytest.mark.parametrize(
    ("compress", "match"),
    [(["imag"], "no leaf writes a field 'imag'"), (["label"], "'label' is not an array")],
)
def test_compress_names_written_arrays(data: tuple[Path, list[str]], compress, match) -> None:
    from datapipe.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        Pipeline.from_dict(_resize_spec(data[0], {"compress": compress}))


class _Sparse(Map):
    """A mostly-zero array its stage marks as compressible, and a plain one."""

    name = "test.sparse"
    description = "Marks one array compressible."
    CONSUMES = (Field("index", "int", ""),)
    PRODUCES = (
        Field("sparse", "int16", "64", compress=True),
        Field("dense", "int16", "64"),
    )

    def process(self, record: Record, ctx: Any) -> Record:
        sparse = np.zeros(64, np.int16)
        sparse[record["index"]] = 7
        return {"sparse": sparse, "dense": np.arange(64, dtype=np.int16)}


@pytest.mark.parametrize(
    ("compress", "gzipped"),
    [("auto", {"sparse"}), (False, set()), (["dense"], {"dense"}), (True, {"sparse", "dense"})],
)
def test_fields_a_stage_marks_compressible_are_gzipped_by_default(
    tmp_path: Path, compress: Any, gzipped: set[str]
) -> None:
    from datapipe.graph import Node
    from fault_stages import Counter

    p = Pipeline(
        [Node("src", Counter(n=3)), Node("sp", _Sparse(), ("src",))],
        output=OutputSpec(compress=compress),
    )
    run_local(p, tmp_path / "out")
    (shard,) = (tmp_path / "out" / "shards").glob("*.tar")
    with tarfile.open(shard) as tar:
        names = tar.getnames()
        member = tar.extractfile("item_002.sparse.npy" + (".gz" if "sparse" in gzipped else ""))
        raw = member.read()
    got = {n.split(".")[1] for n in names if n.endswith(".npy.gz")}
    assert got == gzipped
    data = gzip.decompress(raw) if "sparse" in gzipped else raw
    expect = np.zeros(64, np.int16)
    expect[2] = 7
    np.testing.assert_array_equal(np.load(io.BytesIO(data), allow_pickle=False), expect)

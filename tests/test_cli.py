"""The ``datapipe`` command line, through the real console script in a subprocess."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datapipe import registry
from datapipe.demo.demos import demo_pipelines, training_demo_pipelines
from datapipe.store import OutputStore
from runs import cli

GOOD = """\
name: t
nodes:
  src: {stage: files, params: {root: data}}
  resize: {stage: image.resize, inputs: src, params: {size: 8}}
  pick: {stage: select.random, inputs: resize, params: {fraction: 1.0}}
output: {shard_size: 4}
"""


def make_data(root: Path) -> list[str]:
    rng = np.random.default_rng(1)
    keys = []
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i, size in enumerate((16, 24, 32)):
            arr = rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.jpg", quality=80)
            keys.append(f"{cls}/{i}")
    return keys


def add_bad_files(root: Path) -> dict[str, str]:
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "text.jpg").write_text("hello\n" * 30)
    whole = (root / "dog" / "2.jpg").read_bytes()
    (root / "dog" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    return {"cat/empty": "empty", "dog/text": "unsupported", "dog/cut": "truncated"}


def shard_members(out: Path) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            for info in tar:
                assert info.name not in members, f"{info.name} written twice"
                members[info.name] = tar.extractfile(info).read()  # type: ignore[union-attr]
    return members


def shard_keys(out: Path) -> set[str]:
    return {name.split(".", 1)[0] for name in shard_members(out)}


def manifest(out: Path) -> dict[str, dict]:
    db = sqlite3.connect(out / "manifest.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return {r["key"]: dict(r) for r in db.execute("SELECT * FROM items")}
    finally:
        db.close()


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, list[str]]:
    keys = make_data(tmp_path / "data")
    (tmp_path / "p.yaml").write_text(GOOD)
    return tmp_path, keys


def assert_usage_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


# -- validate ----------------------------------------------------------------------------------
def test_validate_good_file(project: tuple[Path, list[str]]):
    root, _ = project
    proc = cli("validate", "p.yaml", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout and "src -> resize -> pick" in proc.stdout


BAD_FILES = {
    "malformed": (
        "name: t\nnodes:\n  src: {stage: files, params: {root: data}}\n"
        "  r: {stage: image.resize, inputs: src, params: {size: [8}\n",
        ["malformed YAML", "line 4", "bad.yaml"],
    ),
    "stage_typo": (
        GOOD.replace("stage: image.resize", "stage: image.resze"),
        ["nodes.resize.stage", "image.resze", "did you mean 'image.resize'"],
    ),
    "param_typo": (
        GOOD.replace("{size: 8}", "{sise: 8}"),
        ["nodes.resize.params.sise", "did you mean 'size'"],
    ),
    "dangling": (
        GOOD.replace("inputs: src", "inputs: scr"),
        ["nodes.resize.inputs[0]", "'scr'", "did you mean 'src'"],
    ),
    "cycle": (
        GOOD.replace("inputs: src", "inputs: [src, pick]"),
        ["cycle", "resize", "pick"],
    ),
    "wrong_type": (
        GOOD.replace("{size: 8}", "{size: big}"),
        ["nodes.resize.params.size", "'big'"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_validate_reports_bad_files_without_traceback(tmp_path: Path, case: str):
    text, needles = BAD_FILES[case]
    (tmp_path / "bad.yaml").write_text(text)
    proc = cli("validate", "bad.yaml", cwd=tmp_path)
    assert_usage_error(proc, *needles)
    assert proc.stdout == ""


def test_validate_reports_every_problem_in_one_message(tmp_path: Path):
    (tmp_path / "bad.yaml").write_text(
        "nodes:\n"
        "  src: {stage: files, params: {root: data, kinds: [audio]}}\n"
        "  a: {stage: image.resze, inputs: src}\n"
        "  b: {stage: image.resize, inputs: src, params: {size: 0, sise: 3}}\n"
        "  c: {stage: select.random, inputs: nope, params: {fraction: 0.5}}\n"
    )
    proc = cli("validate", "bad.yaml", cwd=tmp_path)
    paths = [
        "nodes.src.params.kinds",
        "nodes.a.stage",
        "nodes.b.params.size",
        "nodes.b.params.sise",
        "nodes.c.inputs[0]",
    ]
    assert_usage_error(proc, f"{len(paths)} problems in bad.yaml", *paths)
    assert proc.stderr.count("datapipe: error") == 1


# -- run -----------------------------------------------------------------------------------------
def test_run_clean_then_nothing_to_do(project: tuple[Path, list[str]]):
    root, keys = project
    first = cli("run", "p.yaml", "--out", "out", cwd=root)
    assert first.returncode == 0, first.stderr
    assert "nothing to do" not in first.stdout
    assert shard_keys(root / "out") == set(keys)
    before = shard_members(root / "out")
    second = cli("run", "p.yaml", "--out", "out", cwd=root)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout
    assert shard_members(root / "out") == before


def test_run_with_bad_items_exits_3_and_reports(project: tuple[Path, list[str]]):
    root, keys = project
    bad = add_bad_files(root / "data")
    proc = cli("run", "p.yaml", "--out", "out", "--report", "report.json", cwd=root)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    rows = manifest(root / "out")
    assert sorted(rows) == sorted([*keys, *bad])
    assert shard_keys(root / "out") == set(keys)  # every good item written
    for key, cls in bad.items():
        assert rows[key]["status"] == "error" and rows[key]["error_class"] == cls
    report = json.loads((root / "report.json").read_text())
    for status in ("ok", "error", "filtered"):
        assert report["counts"][status] == sum(r["status"] == status for r in rows.values())
    assert report["errors_by_class"] == {c: list(bad.values()).count(c) for c in bad.values()}
    assert sorted(f["key"] for f in report["failed"]) == sorted(bad)

    listing = cli("manifest", "out", "--limit", "50", cwd=root)
    assert listing.returncode == 0, listing.stderr
    assert f"ok {len(keys)}, error {len(bad)}" in listing.stdout
    assert parse_failed(listing.stdout) == {
        cls: sorted(k for k, c in bad.items() if c == cls) for cls in set(bad.values())
    }


def parse_failed(text: str) -> dict[str, list[str]]:
    """The 'failed items by error class' block of `datapipe manifest` as class -> keys."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "failed items by error class" in line)
    groups: dict[str, list[str]] = {}
    current = ""
    for line in lines[start + 1 :]:
        indent = len(line) - len(line.lstrip())
        if indent == 4:
            current, count = line.strip().rsplit(": ", 1)
            groups[current] = []
            expected = int(count)
        elif indent == 6:
            groups[current].append(line.split()[0])
        else:
            break
        if current:
            assert len(groups[current]) <= expected
    return {k: sorted(v) for k, v in groups.items()}


def test_run_missing_input_root_is_one_clear_line(project: tuple[Path, list[str]]):
    root, _ = project
    (root / "p.yaml").write_text(GOOD.replace("root: data", "root: nowhere"))
    proc = cli("run", "p.yaml", "--out", "out", cwd=root)
    assert_usage_error(proc, str(root / "nowhere"), "nodes.src.params.root")
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1
    assert not (root / "out").exists(), "a config problem must not touch the output"


def test_run_unknown_executor_is_usage_error(project: tuple[Path, list[str]]):
    root, _ = project
    proc = cli("run", "p.yaml", "--out", "out", "--executor", "nosuch", cwd=root)
    assert_usage_error(proc, "--executor", "nosuch")
    assert not (root / "out").exists()


def test_manifest_on_a_non_output_dir(tmp_path: Path):
    proc = cli("manifest", tmp_path, cwd=tmp_path)
    assert_usage_error(proc, "no datapipe manifest")


def test_concurrent_run_is_refused(project: tuple[Path, list[str]]):
    root, keys = project
    with OutputStore(root / "out"):
        proc = cli("run", "p.yaml", "--out", "out", cwd=root)
        assert_usage_error(proc, "another datapipe run")
        assert not list((root / "out" / "shards").glob("*.tar"))
    proc = cli("run", "p.yaml", "--out", "out", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert shard_keys(root / "out") == set(keys)


# -- describe and stages -----------------------------------------------------------------------
def test_describe_draws_png_svg_and_dot(project: tuple[Path, list[str]]):
    root, _ = project
    for name in ("dag.png", "dag.svg", "dag.dot"):
        proc = cli("describe", "p.yaml", "--out", name, cwd=root)
        assert proc.returncode == 0, proc.stderr
        assert (root / name).stat().st_size > 0
    assert "resize [image.resize, map] <- src" in proc.stdout
    with Image.open(root / "dag.png") as img:
        assert img.format == "PNG" and img.width > 0 and img.height > 0
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 2  # boxes drawn, not a blank canvas
    svg = ET.parse(root / "dag.svg").getroot()
    texts = " ".join(t.text or "" for t in svg.iter() if t.tag.endswith("text"))
    for node in ("src", "resize", "pick"):
        assert node in texts
    dot = (root / "dag.dot").read_text()
    assert '"src" -> "resize"' in dot and '"resize" -> "pick"' in dot


def test_stages_lists_builtins_with_descriptions(tmp_path: Path):
    proc = cli("stages", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    for name in ("files", "image.resize", "select.random"):
        description = registry.get(name).description
        assert description and description in lines[name]
    # python -m datapipe is the same command
    module = subprocess.run(
        [sys.executable, "-m", "datapipe", "stages"], capture_output=True, text=True, timeout=120
    )
    assert module.returncode == 0 and module.stdout == proc.stdout


# -- demo ------------------------------------------------------------------------------------------
def test_demo_runs_and_is_repeatable(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    first = cli("demo", "--out", a, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    names = [path.stem for path in demo_pipelines()]
    assert {"images", "inventory", "videos", "pointclouds"} <= set(names)
    for pipeline in names:
        assert str(a / pipeline) in first.stdout
        assert list((a / pipeline / "shards").glob("*.tar"))
        assert (a / pipeline / "manifest.sqlite").exists()
    snap = {p: shard_members(a / p) for p in names}
    assert any(name.endswith(".image.npy") for name in snap["images"])
    # one short training run per trainer family, each printing its validation accuracy
    trainers = [path.stem for path in training_demo_pipelines()]
    assert {"train_image", "train_dct", "train_points", "train_video"} <= set(trainers)
    assert "train_points_learned" in trainers  # sampler -> PointNet, and its picture
    assert (a / "learned_sampler.png").stat().st_size > 0
    for pipeline in trainers:
        report = json.loads((a / pipeline / "train/classifier/report.json").read_text())
        line = f"classifier: val_accuracy {report['val_accuracy']:.3f}, trained"
        assert line in first.stdout

    again = cli("demo", "--out", a, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("nothing to do") == len(names) + len(trainers)
    # nothing changed: no training, no compression
    assert again.stdout.count(": val_accuracy") == again.stdout.count(", reused, ")
    assert "classifier compressed (prune 50% l1 + distill teacher + int8 qat)" in again.stdout
    assert {p: shard_members(a / p) for p in snap} == snap

    fresh = cli("demo", "--out", b, "--no-train", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert {p: shard_members(b / p) for p in snap} == snap

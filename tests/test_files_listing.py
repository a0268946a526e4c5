"""The ``files`` source skips nothing without a word: the video containers PyAV opens are
listed, ``extensions`` overrides a kind's list, and hidden entries, links and other extensions
are counted in the listing, the run report, the manifest and both CLI summaries."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from datapipe.errors import ConfigError
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.schemas import load_schema
from datapipe.stage import Context
from datapipe.stages.io.files import Files
from datapipe.store.manifest import Manifest
from runs import cli

#: the containers a newcomer's folder of clips holds, none of which used to be listed
NEW_VIDEO = (".mpg", ".mpeg", ".ts", ".m2ts", ".m4v", ".mts", ".wmv", ".flv", ".3gp")


def listing(root: Path, **params: Any) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """``{relpath: record}`` and the skipped counts of ``files`` over ``root``."""
    found = Files(root=str(root), **params).listing(Context(base_dir=root.parent, node="src"))
    return {r["relpath"]: r for r in found.records}, found.skipped


def listed(root: Path, **params: Any) -> dict[str, dict[str, Any]]:
    """``{relpath: record}`` through ``list_items`` (what the streaming loader calls)."""
    stage = Files(root=str(root), **params)
    return {r["relpath"]: r for r in stage.list_items(Context(base_dir=root.parent, node="src"))}


def touch(path: Path, data: bytes = b"not decoded when listing\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def mixed_tree(root: Path) -> None:
    """3 listed files, 2 hidden entries (one a folder of 2), 2 links, 2 other extensions."""
    touch(root / "cat" / "a.jpg")
    touch(root / "cat" / "b.JPEG")
    touch(root / "clips" / "c.ts")
    touch(root / "cat" / ".d.jpg")
    touch(root / ".cache" / "e.jpg")
    touch(root / ".cache" / "f.jpg")
    (root / "cat" / "link.jpg").symlink_to("a.jpg")
    (root / "dirlink").symlink_to("cat")
    touch(root / "notes.txt")
    touch(root / "clips" / "c.srt")


def test_every_video_container_pyav_opens_is_listed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for ext in NEW_VIDEO:
        touch(root / "clips" / f"clip{ext.replace('.', '_')}{ext}")
    touch(root / "clips" / "LOUD.MPG")
    records = listed(root, kinds=["video"])
    assert sorted(records) == sorted(
        [f"clips/clip{e.replace('.', '_')}{e}" for e in NEW_VIDEO] + ["clips/LOUD.MPG"]
    )
    assert {r["kind"] for r in records.values()} == {"video"}
    assert listing(root, kinds=["video"])[1] == {"hidden": 0, "symlink": 0, "unknown_ext": 0}


def test_a_real_transport_stream_is_listed_as_video(tmp_path: Path) -> None:
    import av
    import numpy as np

    path = tmp_path / "data" / "walk" / "clip.ts"
    path.parent.mkdir(parents=True)
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("mpeg2video", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 40 * i, np.uint8), "rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    records = listed(tmp_path / "data")
    assert records["walk/clip.ts"]["kind"] == "video"
    assert (
        records["walk/clip.ts"]["label"] == "walk" and records["walk/clip.ts"]["key"] == "walk/clip"
    )


def test_extensions_override_one_kind_and_compare_lowercase(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("a.mp4", "b.TS", "c.mpg", "d.jpg", "e.y4m"):
        touch(root / name)
    records, skipped = listing(root, extensions={"video": [".MP4", ".ts"]})
    assert sorted(records) == ["a.mp4", "b.TS", "d.jpg"]  # images keep their defaults
    assert records["b.TS"]["kind"] == "video" and records["d.jpg"]["kind"] == "image"
    assert skipped["unknown_ext"] == 2  # c.mpg and e.y4m: not in the video list given


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"extensions": {"video": ["ts"]}}, "'ts' is not an extension like '.ts'"),
        ({"extensions": {"video": [".tar.gz"]}}, "'.tar.gz' is not an extension"),
        ({"extensions": {"video": [".ts"], "image": [".TS"]}}, "'.TS' is listed for both"),
        ({"kinds": ["image"], "extensions": {"video": [".ts"]}}, "'video' is not one of the kinds"),
        ({"extensions": {"video": []}}, "no extension for 'video'"),
        ({"extensions": {"audio": [".wav"]}}, "nodes.src.params.extensions.audio"),
    ],
)
def test_bad_extensions_are_validation_problems(params: dict[str, Any], needle: str) -> None:
    spec = {"nodes": {"src": {"stage": "files", "params": {"root": "data", **params}}}}
    with pytest.raises(ConfigError) as info:
        Pipeline.from_dict(spec)
    text = str(info.value)
    assert "nodes.src.params.extensions" in text and needle in text


def test_hidden_links_and_other_extensions_are_counted(tmp_path: Path) -> None:
    root = tmp_path / "data"
    mixed_tree(root)
    records, skipped = listing(root)
    assert sorted(records) == ["cat/a.jpg", "cat/b.JPEG", "clips/c.ts"]
    assert skipped == {"hidden": 2, "symlink": 2, "unknown_ext": 2}


def test_followed_links_stay_inside_the_root_and_cycles_end(tmp_path: Path) -> None:
    root = tmp_path / "data"
    touch(root / "cat" / "a.jpg")
    touch(root / ".pool" / "p.jpg")  # hidden: reached only through the 'dog' link
    touch(tmp_path / "outside.jpg")
    (root / "dog").symlink_to(".pool")  # a folder link inside the root: followed
    (root / "cat" / "inside.jpg").symlink_to("a.jpg")  # a file link inside: followed
    (root / "cat" / "out.jpg").symlink_to(tmp_path / "outside.jpg")  # outside: skipped
    (root / "cat" / "up").symlink_to(tmp_path)  # a folder outside: skipped
    (root / "cat" / "loop").symlink_to("..")  # the root again: a cycle, skipped
    (root / "cat" / "again").symlink_to(".")  # its own folder: a cycle, skipped
    (root / "cat" / "broken.jpg").symlink_to("nowhere.jpg")  # broken: skipped
    records, skipped = listing(root, follow_symlinks=True)
    assert sorted(records) == ["cat/a.jpg", "cat/inside.jpg", "dog/p.jpg"]
    assert records["dog/p.jpg"]["label"] == "dog"
    assert records["cat/inside.jpg"]["path"] == str((root / "cat" / "a.jpg").resolve())
    assert skipped == {"hidden": 1, "symlink": 5, "unknown_ext": 0}
    # without follow_symlinks every link is skipped and counted
    records, skipped = listing(root)
    assert sorted(records) == ["cat/a.jpg"]
    assert skipped == {"hidden": 1, "symlink": 7, "unknown_ext": 0}


def test_a_folder_reached_by_its_own_path_is_not_listed_again_through_a_link(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    touch(root / "b" / "x.jpg")
    (root / "a").symlink_to("b")  # sorts first, but the real folder wins
    records, skipped = listing(root, follow_symlinks=True)
    assert sorted(records) == ["b/x.jpg"]
    assert skipped["symlink"] == 1


def test_the_run_report_and_the_manifest_keep_the_counts(tmp_path: Path) -> None:
    root = tmp_path / "data"
    mixed_tree(root)
    spec = {"nodes": {"src": {"stage": "files", "params": {"root": "data"}}}}
    out = tmp_path / "out"
    report = run_local(Pipeline.from_dict(spec, base_dir=tmp_path), out)
    assert report.counts["listed"] == 3
    assert report.skipped == {"hidden": 2, "symlink": 2, "unknown_ext": 2}
    doc = json.loads(json.dumps(report.to_dict()))
    jsonschema.validate(doc, load_schema("run_report"))
    assert doc["skipped"] == report.skipped
    m = Manifest(out / "manifest.sqlite")
    try:
        assert m.runs()[-1]["counts"]["skipped"] == report.skipped
    finally:
        m.close()


def test_skipped_sums_over_sources(tmp_path: Path) -> None:
    for name in ("a", "b"):
        mixed_tree(tmp_path / name)
    spec = {
        "nodes": {
            "a": {"stage": "files", "params": {"root": "a"}},
            "b": {"stage": "files", "params": {"root": "b", "kinds": ["image"]}},
        }
    }
    report = run_local(Pipeline.from_dict(spec, base_dir=tmp_path), tmp_path / "out")
    # b lists images only: its .ts clip counts as an unlisted extension too
    assert report.skipped == {"hidden": 4, "symlink": 4, "unknown_ext": 5}


SKIPPED_LINES = [
    "  skipped 2 hidden entries (names starting with '.')",
    "  skipped 2 symlinks (follow_symlinks: true follows links inside the root)",
    "  skipped 2 files with an unlisted extension (the kinds and extensions params list more)",
]


def test_run_and_manifest_print_one_line_per_category(tmp_path: Path) -> None:
    mixed_tree(tmp_path / "data")
    os.remove(tmp_path / "data" / "clips" / "c.srt")
    (tmp_path / "p.yaml").write_text("nodes:\n  src: {stage: files, params: {root: data}}\n")
    run = cli("run", "p.yaml", "--out", "out", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line for line in lines if "skipped" in line] == [
        SKIPPED_LINES[0],
        SKIPPED_LINES[1],
        "  skipped 1 file with an unlisted extension (the kinds and extensions params list more)",
    ]
    summary = cli("manifest", "out", cwd=tmp_path)
    assert summary.returncode == 0, summary.stderr
    assert [line for line in summary.stdout.splitlines() if "skipped" in line] == [
        line for line in lines if "skipped" in line
    ]


def test_nothing_skipped_prints_nothing(tmp_path: Path) -> None:
    touch(tmp_path / "data" / "cat" / "a.jpg")
    (tmp_path / "p.yaml").write_text("nodes:\n  src: {stage: files, params: {root: data}}\n")
    run = cli("run", "p.yaml", "--out", "out", cwd=tmp_path)
    summary = cli("manifest", "out", cwd=tmp_path)
    assert run.returncode == 0 and summary.returncode == 0, run.stderr + summary.stderr
    assert "skipped" not in run.stdout + summary.stdout

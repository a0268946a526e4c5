"""Tests for the offline sample-data generator, checked with independent decoders."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np
import open3d as o3d
import pytest
from PIL import Image, JpegImagePlugin

from datapipe.demo.sample_data import SAMPLE_LABELS, generate_sample_data

MODALITIES = {"images": ".jpg", "videos": ".mp4", "pointclouds": ".ply"}
DIGIT_SIZES = {(32, 32), (64, 64), (96, 96)}
PHOTO_SIZES = {(227, 173), (160, 120), (320, 240)}


def _files(root: Path) -> dict[str, bytes]:
    """Map each file's POSIX path relative to ``root`` to its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _media(root: Path, modality: str) -> list[Path]:
    return sorted((root / modality).rglob(f"*{MODALITIES[modality]}"))


class Generated(NamedTuple):
    """Two seed-0 runs in different folders and one seed-1 run."""

    a: Path
    b: Path
    c: Path
    counts: dict[str, int]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    base = tmp_path_factory.mktemp("sample")
    counts = generate_sample_data(base / "a", seed=0)
    generate_sample_data(base / "b", seed=0)
    generate_sample_data(base / "c", seed=1)
    return Generated(base / "a", base / "b", base / "c", counts)


@pytest.fixture(scope="module")
def root(generated: Generated) -> Path:
    return generated.a


def test_counts_match_files_and_labels(generated: Generated, root: Path) -> None:
    counts = generated.counts
    assert set(counts) == set(MODALITIES)
    for modality in MODALITIES:
        files = _media(root, modality)
        assert counts[modality] == len(files) > 0
        # Every file sits directly in a label folder, and every label has files.
        assert {p.parent.parent for p in files} == {root / modality}
        assert {p.parent.name for p in files} == set(SAMPLE_LABELS[modality])


def test_scale_multiplies_items(tmp_path: Path, generated: Generated) -> None:
    counts = generate_sample_data(tmp_path, seed=3, scale=2)
    assert counts == {k: 2 * v for k, v in generated.counts.items()}


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"scale": 0}])
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        generate_sample_data(tmp_path, **kwargs)


def test_jpegs_decode_with_expected_variety(root: Path) -> None:
    sizes: dict[str, set[tuple[int, int]]] = {"digit": set(), "photo": set()}
    progressive, modes, samplings = [], set(), set()
    for path in _media(root, "images"):
        with Image.open(path) as img:
            assert img.format == "JPEG"
            img.load()  # full decode
            kind = "digit" if path.parent.name.startswith("digit_") else "photo"
            sizes[kind].add(img.size)
            progressive.append(bool(img.info.get("progressive")))
            modes.add(img.mode)
            if img.mode == "RGB":
                samplings.add(JpegImagePlugin.get_sampling(img))
            assert np.asarray(img).std() > 1.0  # not a blank image
    assert sizes == {"digit": DIGIT_SIZES, "photo": PHOTO_SIZES}
    assert any(progressive) and not all(progressive)
    assert modes == {"RGB", "L"}
    assert {0, 2} <= samplings  # 4:4:4 and 4:2:0


def test_videos_decode_as_h264_with_several_key_frames(root: Path) -> None:
    paths = _media(root, "videos")
    assert any(p.name.endswith("_cut.mp4") for p in paths)
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            container.seek(0)
            keys = [f.key_frame for f in container.decode(stream)]
            assert len(frames) == stream.frames
            assert 16 <= len(frames) <= 32
            assert stream.average_rate == 12
            assert stream.codec_context.pix_fmt == "yuv420p"
            assert sum(keys) >= 2 and keys[0]
            assert frames[0].shape in {(64, 96, 3), (96, 128, 3)}


def _frame_jumps(path: Path) -> np.ndarray:
    """Mean absolute difference between consecutive decoded frames."""
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))


def test_cut_clips_have_one_abrupt_change(root: Path) -> None:
    for path in _media(root, "videos"):
        jumps = _frame_jumps(path)
        is_cut = int((jumps > 5 * np.median(jumps) + 10).sum()) == 1
        assert is_cut == path.name.endswith("_cut.mp4"), path.name


def test_motion_matches_label(root: Path) -> None:
    """Pixels that change between frame 0 and the middle frame (before any cut) trace the shape."""
    for path in _media(root, "videos"):
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        first, middle = (frames[i].astype(np.int16) for i in (0, len(frames) // 2))
        ys, xs = np.nonzero(np.abs(middle - first).max(axis=2) > 60)
        label = path.parent.name
        if label == "static":
            assert len(xs) < 10, path.name
            continue
        assert len(xs) > 100, path.name
        spread_x, spread_y = np.ptp(xs), np.ptp(ys)
        assert (spread_x > spread_y) == (label == "move_right"), path.name


def test_pointclouds_read_back(root: Path) -> None:
    for path in _media(root, "pointclouds"):
        assert b"format binary_little_endian" in path.read_bytes()[:200]
        points = np.asarray(o3d.io.read_point_cloud(str(path)).points)
        assert points.ndim == 2 and points.shape[1] == 3
        assert 500 <= len(points) <= 2000
        assert np.isfinite(points).all()
        assert (points.max(axis=0) - points.min(axis=0)).min() > 0.1  # a 3-D shape


def test_labels_csv_matches_folders(root: Path) -> None:
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["path", "label"]
        rows = [(r["path"], r["label"]) for r in reader]
    on_disk = sorted(
        (p.relative_to(root).as_posix(), p.parent.name)
        for modality in MODALITIES
        for p in _media(root, modality)
    )
    assert sorted(rows) == on_disk
    assert len({path for path, _ in rows}) == len(rows)


def test_same_seed_gives_identical_bytes(generated: Generated) -> None:
    a, b = _files(generated.a), _files(generated.b)
    assert sorted(a) == sorted(b)
    assert {Path(name).suffix for name in a} == {".jpg", ".mp4", ".ply", ".csv"}
    differing = [name for name in a if a[name] != b[name]]
    assert differing == []


def test_different_seed_gives_different_bytes(generated: Generated) -> None:
    a, c = _files(generated.a), _files(generated.c)
    assert sorted(a) == sorted(c)  # same layout ...
    media = [name for name in a if not name.endswith(".csv")]
    same = [name for name in media if a[name] == c[name]]
    assert same == []  # ... but every file's content changes

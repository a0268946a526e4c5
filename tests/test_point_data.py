"""The composed-object point clouds: readable by points.read, deterministic, upright, and
pairs of classes that differ by a small part only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datapipe.demo.point_data import POINT_CLASSES, _parts, make_cloud, make_point_dataset
from datapipe.stage import Context
from datapipe.stages.points.read import PointsRead


def _area(part: tuple[np.ndarray, np.ndarray]) -> float:
    v, t = part
    a, b, c = (v[t[:, k]] for k in range(3))
    return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())


def test_clouds_are_written_read_back_and_repeatable(tmp_path: Path) -> None:
    counts = make_point_dataset(tmp_path / "a", classes=12, per_class=2, points=1100, seed=3)
    assert counts == {name: 2 for name in POINT_CLASSES} and len(POINT_CLASSES) >= 10
    make_point_dataset(tmp_path / "b", classes=12, per_class=2, points=1100, seed=3)
    make_point_dataset(tmp_path / "c", classes=12, per_class=2, points=1100, seed=4)
    files = sorted((tmp_path / "a").rglob("*.ply"))
    assert len(files) == 24
    for path in files:
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        other = tmp_path / "c" / path.relative_to(tmp_path / "a")
        assert path.read_bytes() == twin.read_bytes() != other.read_bytes()
    record = PointsRead().process({"path": str(files[0])}, Context())
    points = np.asarray(record["points"])
    assert points.shape == (1100, 3) and np.isfinite(points).all()


def test_objects_stay_upright_under_their_random_turn() -> None:
    # only turned about z: a pole stays tall, a bench stays flat, whatever the angle
    for i in range(10):
        pole = make_cloud("pole", np.random.default_rng([1, i]))
        bench = make_cloud("bench", np.random.default_rng([2, i]))
        extent = lambda c: (np.ptp(c[:, 2]), np.linalg.norm(c[:, :2], axis=1).max())  # noqa: E731
        (pole_z, pole_r), (bench_z, bench_r) = extent(pole), extent(bench)
        assert pole_z > 2 * pole_r and bench_z < 0.7 * bench_r


@pytest.mark.parametrize(
    ("plain", "with_part", "parts_added"),
    [
        ("chair", "armchair", 4),
        ("mug", "mug_handle", 1),
        ("pole", "lamp", 1),
        ("stool3", "stool4", 1),
    ],
)
def test_paired_classes_differ_by_a_small_part(
    plain: str, with_part: str, parts_added: int
) -> None:
    for i in range(5):
        a = _parts(plain, np.random.default_rng([7, i]))
        b = _parts(with_part, np.random.default_rng([7, i]))
        assert len(b) == len(a) + parts_added
        # the added part holds a small share of the surface the points are sampled from
        share = 1 - sum(map(_area, b[: len(a)])) / sum(map(_area, b))
        assert 0 < share < 0.35, (with_part, share)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="classes"):
        make_point_dataset(tmp_path, classes=0)
    with pytest.raises(ValueError, match="unknown class"):
        make_cloud("teapot", np.random.default_rng(0))

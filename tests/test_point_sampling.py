"""Point sampling: exact FPS against a dense float64 reference and Open3D; voxel and random
sampling against brute-force oracles; the stages through the engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from datapipe import registry
from datapipe.errors import ItemError
from datapipe.executors.local import run_local
from datapipe.fields import Field
from datapipe.graph import Pipeline
from datapipe.stage import Context, Params, Record, Source
from datapipe.stages.points.sampling import (
    farthest_point_sample,
    random_point_sample,
    voxel_point_sample,
)
from datapipe.store import iter_samples
from datapipe.store.manifest import Manifest


def dense_fps(points: np.ndarray, m: int, start: int) -> np.ndarray:
    """The textbook O(N*M) loop in float64, ties to the smallest index."""
    pts = points.astype(np.float64)
    mind = np.full(len(pts), np.inf)
    out = [start]
    for _ in range(m - 1):
        np.minimum(mind, ((pts - pts[out[-1]]) ** 2).sum(1), out=mind)
        mind[out] = -1
        out.append(int(np.argmax(mind)))
    return np.array(out)


def sphere(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n, 3))
    return (p / np.linalg.norm(p, axis=1, keepdims=True) + rng.normal(0, 0.01, (n, 3))).astype(
        np.float32
    )


@pytest.mark.parametrize(("n", "m", "start"), [(500, 64, 0), (3000, 200, 17), (20000, 300, 1234)])
def test_fps_equals_dense_reference(n: int, m: int, start: int) -> None:
    pts = sphere(n, n)
    got = farthest_point_sample(pts, m, start=start)
    assert got.dtype == np.int64 and got[0] == start
    np.testing.assert_array_equal(got, dense_fps(pts, m, start))


@pytest.mark.parametrize("start", [0, 99])
def test_fps_same_set_as_open3d(start: int) -> None:
    pts = sphere(4096, 5).astype(np.float64)
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    chosen = np.asarray(pc.farthest_point_down_sample(256, start_index=start).points)
    where = {tuple(p): i for i, p in enumerate(pts)}
    assert {where[tuple(p)] for p in chosen} == set(farthest_point_sample(pts, 256, start=start))


@settings(max_examples=150, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 40), st.just(3)),
        elements=st.integers(-5, 5).map(float),
    ),
    st.data(),
)
def test_fps_property_distinct_exact(pts: np.ndarray, data: st.DataObject) -> None:
    """Grids of small integers: many duplicates and exact ties."""
    m = data.draw(st.integers(1, len(pts)))
    start = data.draw(st.integers(0, len(pts) - 1))
    got = farthest_point_sample(pts, m, start=start)
    assert len(set(got.tolist())) == m
    np.testing.assert_array_equal(got, dense_fps(pts, m, start))


def test_fps_batched_and_bad_input() -> None:
    clouds = [sphere(300, 1), sphere(300, 2)]
    batch = farthest_point_sample(np.stack(clouds), 20, start=[3, 4])
    assert batch.shape == (2, 20)
    np.testing.assert_array_equal(batch[1], dense_fps(clouds[1], 20, 4))
    with pytest.raises(ItemError, match="cannot sample 301 of 300"):
        farthest_point_sample(clouds[0], 301)
    bad = clouds[0].copy()
    bad[5, 1] = np.nan
    with pytest.raises(ItemError) as info:
        farthest_point_sample(bad, 3)
    assert info.value.error_class == "nonfinite"
    with pytest.raises(ItemError):
        farthest_point_sample(clouds[0], 0)
    # finite, but squared distances (and the grid) would overflow float64: an error, no crash
    wide = np.array([[-1e308, 0, 0], [1e308, 0, 0], [0, 0, 0]])
    with pytest.raises(ItemError, match="spans") as info:
        farthest_point_sample(wide, 3)
    assert info.value.error_class == "invalid"


def test_voxel_sample_is_one_point_per_voxel_nearest_centroid() -> None:
    pts = np.random.default_rng(0).uniform(0, 1, (2000, 3))
    size = 0.2
    got = voxel_point_sample(pts, size)
    cells = np.floor((pts - (pts.min(0) - size / 2)) / size).astype(int)  # Open3D's grid
    by_cell: dict[tuple, list[int]] = {}
    for i, c in enumerate(map(tuple, cells)):
        by_cell.setdefault(c, []).append(i)
    expected = []
    for members in by_cell.values():
        centroid = pts[members].mean(0)
        d = ((pts[members] - centroid) ** 2).sum(1)
        expected.append(members[int(np.argmin(d))])
    np.testing.assert_array_equal(got, sorted(expected))


def test_random_sample_distinct_and_seeded() -> None:
    a = random_point_sample(100, 30, seed=7)
    assert len(set(a.tolist())) == 30 and np.array_equal(a, random_point_sample(100, 30, 7))
    assert not np.array_equal(a, random_point_sample(100, 30, 8))


# -- the stages through the engine ---------------------------------------------------------------
class CloudParams(Params):
    sizes: list[int] = [50, 80, 5]


class Clouds(Source):
    name = "test.clouds"
    description = "Synthetic clouds of the given sizes, one with a NaN."
    Params = CloudParams
    PRODUCES = (Field("points", "float32", "N 3"), Field("normals", "float32", "N 3"))

    def list_items(self, ctx: Context) -> Iterator[Record]:
        for i, n in enumerate(self.params.sizes):
            pts = sphere(n, i)
            yield {"key": f"cloud_{i}", "points": pts, "normals": -pts}
        nan = sphere(40, 9)
        nan[0, 0] = np.nan
        yield {"key": "cloud_nan", "points": nan, "normals": nan}


@pytest.fixture
def clouds_stage() -> Iterator[None]:
    registry.register(Clouds)
    yield
    registry.unregister(Clouds.name)


@pytest.mark.parametrize("stage", ["points.fps", "points.random"])
def test_stage_samples_gathers_and_reports_bad_clouds(
    clouds_stage: None, tmp_path: Path, stage: str
) -> None:
    p = Pipeline.from_dict(
        {
            "nodes": {
                "src": {"stage": "test.clouds"},
                "s": {"stage": stage, "inputs": "src", "params": {"m": 32, "also": ["normals"]}},
            }
        }
    )
    run_local(p, tmp_path / "out")
    samples = {s["key"]: s for s in iter_samples(sorted((tmp_path / "out" / "shards").glob("*")))}
    assert set(samples) == {"cloud_0", "cloud_1"}
    for i in (0, 1):
        s, src = samples[f"cloud_{i}"], sphere([50, 80][i], i)
        assert s["points"].shape == (32, 3) and len(set(s["point_idx"].tolist())) == 32
        np.testing.assert_array_equal(s["points"], src[s["point_idx"]])
        np.testing.assert_array_equal(s["normals"], -src[s["point_idx"]])
        if stage == "points.fps":
            np.testing.assert_array_equal(s["point_idx"], dense_fps(src, 32, 0))
    rows = {r.key: r for r in Manifest(tmp_path / "out" / "manifest.sqlite").iter_rows()}
    assert (
        rows["cloud_2"].error_class == "invalid"
        and "cannot sample 32 of 5" in rows["cloud_2"].message
    )
    assert rows["cloud_nan"].error_class == "nonfinite"


def test_pad_policy_repeats_points(clouds_stage: None, tmp_path: Path) -> None:
    p = Pipeline.from_dict(
        {
            "nodes": {
                "src": {"stage": "test.clouds", "params": {"sizes": [5]}},
                "s": {"stage": "points.fps", "inputs": "src", "params": {"m": 8, "pad": True}},
            }
        }
    )
    run_local(p, tmp_path / "out")
    (s,) = list(iter_samples(sorted((tmp_path / "out" / "shards").glob("*"))))
    assert s["point_idx"].tolist() == [
        *dense_fps(sphere(5, 0), 5, 0).tolist(),
        *dense_fps(sphere(5, 0), 5, 0)[:3].tolist(),
    ]

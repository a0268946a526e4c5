"""Point sampling: ``points.random``, ``points.voxel`` and ``points.fps``.

Each stage keeps a subset of the input points: it replaces ``points`` with the sampled
(M, 3) cloud and adds ``point_idx`` (M,) int64, the rows it kept, so other per-point fields
(normals, colours) can be gathered; fields named in ``also`` are gathered for you.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field as PField

from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record

#: the widest cloud (per axis) whose squared distances float64 holds with room to spare
MAX_SPAN = 1e100


def check_cloud(points: np.ndarray, m: int | None = None) -> np.ndarray:
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ItemError("invalid", f"points must have shape (N, 3); got {pts.shape}")
    if len(pts) == 0:
        raise ItemError("empty", "the cloud has no points")
    if not np.isfinite(pts).all():
        raise ItemError("nonfinite", f"{int((~np.isfinite(pts)).any(1).sum())} points are NaN/inf")
    with np.errstate(over="ignore"):
        span = float(np.ptp(pts.astype(np.float64, copy=False), axis=0).max())
    if not span <= MAX_SPAN:  # squared distances and grid cells would overflow float64
        raise ItemError("invalid", f"the cloud spans {span:g}, beyond {MAX_SPAN:g}")
    if m is not None and not 1 <= m <= len(pts):
        raise ItemError("invalid", f"cannot sample {m} of {len(pts)} points")
    return pts


def farthest_point_sample(
    points: np.ndarray | Sequence[np.ndarray], m: int, *, start: int | Sequence[int] = 0
) -> np.ndarray:
    """Exact farthest point sampling: ``m`` indices in selection order, from ``start``.

    ``points`` is one cloud (N, 3) or a batch (B, N, 3) / list of clouds; ``start`` one index
    or one per cloud. Computed in float64 with spatial pruning (numba), so the sequence
    equals the dense O(N*M) loop's; near-ties can order differently in float32.

    Returns
    -------
    numpy.ndarray
        int64 (m,), or (B, m) for a batch.

    Examples
    --------
    >>> from datapipe import ops
    >>> pts = np.array([[0, 0, 0], [1, 0, 0], [10, 0, 0], [5, 0, 0]], dtype=np.float32)
    >>> ops.sample_farthest_points(pts, 3).tolist()
    [0, 2, 3]
    """
    from datapipe.stages.points.fps_kernel import fps_pruned

    if isinstance(points, np.ndarray) and points.ndim == 2:
        pts = check_cloud(points, m)
        s = int(np.asarray(start))
        if not 0 <= s < len(pts):
            raise ItemError("invalid", f"start index {s} outside 0..{len(pts) - 1}")
        return fps_pruned(np.ascontiguousarray(pts, dtype=np.float64), int(m), s)
    clouds = list(points)
    starts = [int(start)] * len(clouds) if np.ndim(start) == 0 else [int(s) for s in start]
    if len(starts) != len(clouds):
        raise ValueError(f"{len(clouds)} clouds but {len(starts)} start indices")
    return np.stack(
        [farthest_point_sample(c, m, start=s) for c, s in zip(clouds, starts, strict=True)]
    )


def random_point_sample(n: int, m: int, seed: int) -> np.ndarray:
    """``m`` distinct indices of ``n`` points, sorted, from a seeded generator.

    Returns
    -------
    numpy.ndarray
        int64 (m,), sorted.

    Examples
    --------
    >>> from datapipe import ops
    >>> idx = ops.sample_random_points(10, 4, 0)
    >>> len(set(idx.tolist())), bool((np.diff(idx) > 0).all())
    (4, True)
    """
    if not 1 <= m <= n:
        raise ItemError("invalid", f"cannot sample {m} of {n} points")
    return np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))


def voxel_point_sample(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """One input point per occupied voxel: the one nearest the voxel's centroid.

    The voxel grid is Open3D's ``voxel_down_sample`` grid (see ``ops.group_voxels``), so the
    occupied voxels are the ones ``points.voxelize`` averages.

    Returns
    -------
    numpy.ndarray
        int64 (M,), one index per occupied voxel, sorted.

    Examples
    --------
    >>> from datapipe import ops
    >>> pts = np.array([[0, 0, 0], [0.1, 0, 0], [0.3, 0, 0], [2, 2, 2]])
    >>> ops.sample_voxel_points(pts, 1.0).tolist()  # [0.1, 0, 0] is nearest the centroid
    [1, 3]
    """
    from datapipe.stages.points.voxelize import voxel_groups

    pts = check_cloud(points).astype(np.float64)
    groups = voxel_groups(pts, voxel_size)
    dist = ((pts - groups.reduce(pts)[groups.inverse]) ** 2).sum(1)
    order = np.lexsort((np.arange(len(pts)), dist, groups.inverse))  # voxel, distance, index
    first = np.ones(len(order), bool)
    first[1:] = groups.inverse[order[1:]] != groups.inverse[order[:-1]]
    return np.sort(order[first])


def key_seed(seed: int, key: str) -> int:
    """A per-sample seed, so each cloud gets its own draw and every executor the same one."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")


class _SampleParams(Params):
    also: list[str] = PField(default_factory=list, description="Per-point fields to gather too.")
    field: str = PField("points", description="The (N, 3) field to sample.")


class CountParams(_SampleParams):
    m: int = PField(1024, ge=1, description="Number of points to keep.")
    pad: bool = PField(
        False,
        description="Clouds with fewer than m points: repeat indices "
        "cyclically instead of failing.",
    )


class FPSParams(CountParams):
    start: int | Literal["random"] = PField(0, description="First point: an index or 'random'.")


class VoxelParams(_SampleParams):
    voxel_size: float = PField(0.05, gt=0, description="Voxel edge length.")


class _PointSampler(Map):
    isolate = False
    EXAMPLE_PARAMS = {"m": 16}

    def consumes(self) -> tuple[Field, ...]:
        p = self.params
        return (Field(p.field, "float32|float64", "N 3"), *(Field(f, "any", "N *") for f in p.also))

    def produces(self) -> tuple[Field, ...]:
        p = self.params
        return (
            Field(p.field, "float32|float64", "M 3", "the sampled points"),
            Field("point_idx", "int64", "M", "rows of the input kept, in sampling order"),
            *(Field(f, "any", "M *") for f in p.also),
        )

    def indices(self, pts: np.ndarray, record: Record, ctx: Context, m: int | None) -> np.ndarray:
        """Rows of ``pts`` to keep (``m`` of them for count-based samplers)."""
        raise NotImplementedError

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        pts = check_cloud(record[p.field])
        m = getattr(p, "m", None)
        if m is not None and len(pts) < m:
            if not p.pad:
                raise ItemError(
                    "invalid",
                    f"cannot sample {m} of {len(pts)} points (set pad: true to repeat points)",
                )
            idx = self.indices(pts, record, ctx, len(pts))
            idx = np.resize(idx, m)
        else:
            idx = self.indices(pts, record, ctx, m)
        idx = np.asarray(idx, dtype=np.int64)
        out: Record = {p.field: pts[idx], "point_idx": idx}
        for name in p.also:
            out[name] = np.asarray(record[name])[idx]
        return out


class RandomPoints(_PointSampler):
    """Keep ``m`` points drawn without replacement (seeded by the pipeline seed and the key)."""

    name = "points.random"
    description = "Keep m random points of a cloud (seeded per sample)."
    Params = CountParams

    def indices(self, pts: np.ndarray, record: Record, ctx: Context, m: int | None) -> np.ndarray:
        return random_point_sample(len(pts), m, key_seed(ctx.seed, record.get("key", "")))


class FarthestPoints(_PointSampler):
    """Keep ``m`` points by exact farthest point sampling (in selection order)."""

    name = "points.fps"
    description = "Keep m points by exact farthest point sampling (spatially pruned)."
    Params = FPSParams

    def indices(self, pts: np.ndarray, record: Record, ctx: Context, m: int | None) -> np.ndarray:
        start = self.params.start
        if start == "random":
            start = key_seed(ctx.seed, record.get("key", "")) % len(pts)
        return farthest_point_sample(pts, m, start=int(start))


class VoxelPoints(_PointSampler):
    """Keep one input point per occupied voxel (the one nearest the voxel's centroid)."""

    name = "points.voxel"
    description = "Keep one point per voxel (nearest the voxel centroid)."
    Params = VoxelParams
    EXAMPLE_PARAMS = {"voxel_size": 0.1}

    def indices(self, pts: np.ndarray, record: Record, ctx: Context, m: int | None) -> np.ndarray:
        return voxel_point_sample(pts, self.params.voxel_size)

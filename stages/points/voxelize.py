"""Voxel grids: ``points.voxelize`` and its functions :func:`voxelize`, :func:`voxel_groups`.

The grid is Open3D's ``voxel_down_sample`` grid, so the occupied voxels and their centroids
equal Open3D's (the tests compare both); the grouping is a sort of integer cell keys, with
the order of the voxels defined (lexicographic) rather than a hash map's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from pydantic import Field as PField

from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record

_INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class VoxelGroups:
    """Which voxel each point falls in, on Open3D's ``voxel_down_sample`` grid.

    The grid's origin is the cloud's minimum corner minus half a voxel, as in Open3D, so the
    occupied voxels (and their centroids) equal Open3D's. Voxels are numbered in
    lexicographic order of their integer (i, j, k) coordinates; Open3D's output order is
    that of a hash map.
    """

    #: (N,) voxel number of each point
    inverse: np.ndarray
    #: (M,) index of the first point (in input order) of each voxel
    first: np.ndarray
    #: (M,) number of points in each voxel
    counts: np.ndarray

    def reduce(self, values: np.ndarray, mode: str = "centroid") -> np.ndarray:
        """One row per voxel of a per-point array: the mean of the voxel's rows (float
        arrays, ``mode="centroid"``; sums in float64 in input order, as Open3D) or the first
        point's row (other dtypes, or ``mode="first"``)."""
        v = np.asarray(values)
        if mode == "first" or not np.issubdtype(v.dtype, np.floating):
            return v[self.first]
        flat = v.reshape(len(v), -1).astype(np.float64, copy=False)
        m = len(self.counts)
        sums = [np.bincount(self.inverse, flat[:, k], minlength=m) for k in range(flat.shape[1])]
        mean = np.stack(sums, axis=1) / self.counts[:, None]
        return mean.astype(v.dtype).reshape((m, *v.shape[1:]))


class Voxels(NamedTuple):
    """One point per occupied voxel (:func:`voxelize`), voxels in :class:`VoxelGroups` order."""

    #: (M, 3) in the cloud's dtype
    points: np.ndarray
    #: (M,) int64, the points in each voxel
    counts: np.ndarray


def voxel_groups(xyz: np.ndarray, voxel_size: float) -> VoxelGroups:
    """Group the points of ``xyz`` (N, 3) by voxel of edge ``voxel_size``.

    Returns
    -------
    VoxelGroups
        Per point its voxel (``inverse``); per voxel its first point (``first``) and its
        point count (``counts``).

    Examples
    --------
    >>> from datapipe import ops
    >>> pts = np.array([[0, 0, 0], [1, 1, 1], [0.2, 0, 0]], dtype=np.float32)
    >>> groups = ops.group_voxels(pts, 0.5)
    >>> groups.inverse.tolist(), groups.first.tolist(), groups.counts.tolist()
    ([0, 1, 0], [0, 1], [2, 1])
    """
    pts = np.asarray(xyz)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ItemError("invalid", f"points must have shape (N, 3); got {pts.shape}")
    if len(pts) == 0:
        raise ItemError("empty", "the cloud has no points")
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise ItemError("invalid", f"voxel_size must be a finite number > 0; got {voxel_size}")
    p64 = pts.astype(np.float64, copy=False)
    if not np.isfinite(p64).all():
        raise ItemError("nonfinite", "the cloud has NaN or infinite coordinates")
    lo = p64.min(axis=0) - voxel_size * 0.5
    extent = float((p64.max(axis=0) + voxel_size * 0.5 - lo).max())
    if voxel_size * _INT_MAX < extent:  # Open3D's limit too
        raise ItemError(
            "invalid", f"voxel_size {voxel_size} is too small for a cloud {extent:g} across"
        )
    cells = np.floor((p64 - lo) / voxel_size).astype(np.int64)
    n = len(cells)
    dims = [int(d) for d in cells.max(axis=0) + 1]
    new = np.ones(n, dtype=bool)
    if dims[0] * dims[1] * dims[2] < 2**63:
        key = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
        order = np.argsort(key, kind="stable")
        key = key[order]
        new[1:] = key[1:] != key[:-1]
    else:  # too many cells for one int64 key
        order = np.lexsort((cells[:, 2], cells[:, 1], cells[:, 0]))  # stable
        sc = cells[order]
        new[1:] = (sc[1:] != sc[:-1]).any(axis=1)
    starts = np.flatnonzero(new)
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    counts = np.diff(np.append(starts, n))
    return VoxelGroups(inverse, order[starts], counts)


def voxelize(
    xyz: np.ndarray, voxel_size: float, *, mode: Literal["centroid", "first"] = "centroid"
) -> Voxels:
    """Quantize a cloud to a voxel grid: one point per occupied voxel.

    Returns
    -------
    Voxels
        ``points`` (M, 3) in ``xyz``'s dtype, the centroid of each voxel's points
        (``centroid``, equal to Open3D's ``voxel_down_sample``) or its first point in input
        order (``first``); ``counts`` (M,) int64, the points in each voxel. See
        :class:`VoxelGroups` for the grid and the order.

    Examples
    --------
    >>> pts = np.array([[0, 0, 0], [0.2, 0, 0], [1, 1, 1]], dtype=np.float32)
    >>> v, counts = voxelize(pts, 0.5)
    >>> v.tolist(), counts.tolist()
    ([[0.10000000149011612, 0.0, 0.0], [1.0, 1.0, 1.0]], [2, 1])
    """
    groups = voxel_groups(xyz, voxel_size)
    return Voxels(groups.reduce(xyz, mode), groups.counts)


class PointsVoxelizeParams(Params):
    voxel_size: float = PField(
        gt=0, allow_inf_nan=False, description="Voxel edge length, in the cloud's units."
    )
    mode: Literal["centroid", "first"] = PField(
        "centroid", description="'centroid': mean of the voxel's points; 'first': its first."
    )
    also: list[str] = PField(
        default_factory=list,
        description="Per-point fields (N rows) to reduce the same way, e.g. normals, colors.",
    )


class PointsVoxelize(Map):
    """Replace ``points`` by one point per occupied voxel and add ``voxel_counts``.

    The engine merges a Map's output over its input record, so ``points`` (and each field in
    ``also``) is overwritten; per-point fields not listed in ``also`` keep their N rows and
    no longer line up with ``points``. ``num_points`` keeps the count read, which equals
    ``voxel_counts.sum()``.
    """

    name = "points.voxelize"
    description = "Quantize a cloud to a voxel grid: one point per occupied voxel."
    Params = PointsVoxelizeParams
    EXAMPLE_PARAMS = {"voxel_size": 0.05}

    def consumes(self) -> tuple[Field, ...]:
        also = dict.fromkeys(self.params.also)
        return (Field("points", "float32|float64", "N 3"), *(Field(f, "any", "N *") for f in also))

    def produces(self) -> tuple[Field, ...]:
        also = dict.fromkeys(self.params.also)
        return (
            Field("points", "float32", "M 3", "one point per occupied voxel"),
            Field("voxel_counts", "int32", "M", "input points in each voxel"),
            *(Field(f, "any", "M *") for f in also),
        )

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        pts = np.asarray(record["points"])
        groups = voxel_groups(pts, p.voxel_size)
        out: Record = {
            "points": groups.reduce(pts, p.mode).astype(np.float32, copy=False),
            "voxel_counts": groups.counts.astype(np.int32),
        }
        for name in dict.fromkeys(p.also):
            values = np.asarray(record[name])
            if len(values) != len(pts):
                raise ItemError(
                    "invalid", f"field {name!r} has {len(values)} rows; points has {len(pts)}"
                )
            out[name] = groups.reduce(values, p.mode)
        return out

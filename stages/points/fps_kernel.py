"""Exact farthest point sampling with spatial pruning, compiled with numba.

Points are bucketed on a uniform grid (about ``target`` points per occupied cell, counting
sort, O(N)). Each step updates the running min-distance only in buckets whose bounding box
could hold a point closer to the new centre than the bucket's current farthest point (the
QuickFPS idea); every other bucket keeps its maximum. The result is exact FPS in float64 with
ties broken by the smallest original index, i.e. the same sequence as the dense O(N*M) loop.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True)
def _grid_buckets(pts: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts): points sorted by grid cell; bucket b is order[starts[b]:starts[b+1]]."""
    n = pts.shape[0]
    lo = pts[0].copy()
    hi = pts[0].copy()
    for i in range(n):
        for a in range(3):
            lo[a] = min(lo[a], pts[i, a])
            hi[a] = max(hi[a], pts[i, a])
    ext = np.empty(3)
    vol = 1.0
    for a in range(3):
        ext[a] = max(hi[a] - lo[a], 1e-12)
        vol *= ext[a]
    side = (vol / max(1, n // target)) ** (1.0 / 3.0)
    dims = np.empty(3, np.int64)
    for a in range(3):
        dims[a] = max(1, min(1024, int(np.ceil(ext[a] / side))))
    ncell = dims[0] * dims[1] * dims[2]
    cell = np.empty(n, np.int64)
    counts = np.zeros(ncell + 1, np.int64)
    for i in range(n):
        c = 0
        for a in range(3):
            k = min(int((pts[i, a] - lo[a]) / ext[a] * dims[a]), dims[a] - 1)
            c = c * dims[a] + k
        cell[i] = c
        counts[c + 1] += 1
    for c in range(ncell):
        counts[c + 1] += counts[c]
    order = np.empty(n, np.int64)
    fill = counts[:-1].copy()
    for i in range(n):
        order[fill[cell[i]]] = i
        fill[cell[i]] += 1
    occupied = 0
    for c in range(ncell):
        if counts[c + 1] > counts[c]:
            occupied += 1
    starts = np.empty(occupied + 1, np.int64)
    j = 0
    for c in range(ncell):
        if counts[c + 1] > counts[c]:
            starts[j] = counts[c]
            j += 1
    starts[occupied] = n
    return order, starts


@nb.njit(cache=True)
def fps_pruned(points: np.ndarray, m: int, start: int, target: int = 64) -> np.ndarray:
    """Indices of ``m`` farthest points of ``points`` (N, 3) float64, from ``start``."""
    n = points.shape[0]
    order, starts = _grid_buckets(points, target)
    nbk = starts.shape[0] - 1
    # one array per coordinate (the update loop vectorizes), in bucket order; the counting
    # sort is stable, so within a bucket the original indices increase
    xs, ys, zs = np.empty(n), np.empty(n), np.empty(n)
    inv = np.empty(n, np.int64)
    for i in range(n):
        j = order[i]
        xs[i], ys[i], zs[i] = points[j, 0], points[j, 1], points[j, 2]
        inv[j] = i
    lo = np.full((nbk, 3), np.inf)
    hi = np.full((nbk, 3), -np.inf)
    for b in range(nbk):
        for i in range(starts[b], starts[b + 1]):
            lo[b, 0], hi[b, 0] = min(lo[b, 0], xs[i]), max(hi[b, 0], xs[i])
            lo[b, 1], hi[b, 1] = min(lo[b, 1], ys[i]), max(hi[b, 1], ys[i])
            lo[b, 2], hi[b, 2] = min(lo[b, 2], zs[i]), max(hi[b, 2], zs[i])
    mind = np.full(n, np.inf)
    bfar = np.full(nbk, np.inf)  # the largest min-distance in the bucket
    barg = starts[:-1].copy()  # where it is: the first point (smallest index) holding it
    out = np.empty(m, np.int64)
    cur = inv[start]
    for s in range(m):
        out[s] = order[cur]
        cx, cy, cz = xs[cur], ys[cur], zs[cur]
        mind[cur] = -1.0  # chosen: never again, even among duplicates
        best, bestb = -2.0, 0
        for b in range(nbk):
            dx = max(0.0, lo[b, 0] - cx, cx - hi[b, 0])
            dy = max(0.0, lo[b, 1] - cy, cy - hi[b, 1])
            dz = max(0.0, lo[b, 2] - cz, cz - hi[b, 2])
            if dx * dx + dy * dy + dz * dz < bfar[b] or barg[b] == cur:
                first, last = starts[b], starts[b + 1]
                far = -2.0
                for i in range(first, last):
                    d0, d1, d2 = xs[i] - cx, ys[i] - cy, zs[i] - cz
                    v = min(mind[i], d0 * d0 + d1 * d1 + d2 * d2)
                    mind[i] = v
                    far = max(far, v)
                arg = first
                while mind[arg] != far:
                    arg += 1
                bfar[b], barg[b] = far, arg
            v = bfar[b]
            if v > best or (v == best and order[barg[b]] < order[barg[bestb]]):
                best, bestb = v, b
        cur = barg[bestb]
    return out

"""Compiled (numba) loops over FFmpeg's exported motion vectors: the block-grid raster of
:mod:`~datapipe.stages.common.motion_vectors` and the per-pixel reference tracing of
:mod:`~datapipe.stages.compressed.video_coviar`.

The vectors arrive as PyAV's structured ``AVMotionVector`` array; the kernels read it through
plain integer views whose column numbers come from the dtype's field offsets
(:func:`vector_views`), so no Python object is touched per vector.
"""

from __future__ import annotations

from functools import lru_cache

import numba as nb
import numpy as np

# column order of the ``layout`` array handed to the kernels
_FIELDS = (
    ("source", 4),
    ("w", 1),
    ("h", 1),
    ("dst_x", 2),
    ("dst_y", 2),
    ("motion_x", 4),
    ("motion_y", 4),
    ("motion_scale", 2),
)


@lru_cache(maxsize=4)
def _layout(dtype: np.dtype) -> np.ndarray:
    cols = []
    for name, width in _FIELDS:
        sub, offset = dtype.fields[name][:2]
        if sub.itemsize != width or offset % width or dtype.itemsize % 4:
            raise TypeError(f"unexpected AVMotionVector layout for field {name!r}: {dtype}")
        cols.append(offset // width)
    return np.array(cols, dtype=np.int64)


def vector_views(vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bytes, int16, int32 views of the records, layout) for the kernels below."""
    n, size = len(vecs), vecs.dtype.itemsize
    raw = np.ascontiguousarray(vecs).view(np.uint8).reshape(n, size)
    return raw, raw.view(np.int16), raw.view(np.int32), _layout(vecs.dtype)


@nb.njit(cache=True)
def _read(r8, r16, r32, lay, i):  # type: ignore[no-untyped-def]
    """source, w, h, x0, y0 (top-left of the block), codec offset x, y (= motion / scale)."""
    w = np.int64(r8[i, lay[1]])
    h = np.int64(r8[i, lay[2]])
    scale = np.float64(np.uint16(r16[i, lay[7]]))
    if scale == 0.0:
        scale = 1.0
    x0 = np.int64(r16[i, lay[3]]) - (w >> 1)
    y0 = np.int64(r16[i, lay[4]]) - (h >> 1)
    return r32[i, lay[0]], w, h, x0, y0, r32[i, lay[5]] / scale, r32[i, lay[6]] / scale


@nb.njit(cache=True)
def rasterize_forward(r8, r16, r32, lay, shift, out, acc, past, future):  # type: ignore[no-untyped-def]
    """Area-weighted mean forward motion per (1 << shift)-pixel cell into ``out`` (R, C, 2).

    Forward motion is ``-offset / past`` for past references (source < 0), ``+offset /
    future`` for future ones (``past`` = ``future`` = 1: the coded offsets). ``acc`` is
    (R, C, 3) float64 scratch. Cells no vector overlaps get 0.
    """
    rows, cols = out.shape[0], out.shape[1]
    block = np.int64(1) << shift
    acc[:] = 0.0
    for i in range(r8.shape[0]):
        source, w, h, x0, y0, ox, oy = _read(r8, r16, r32, lay, i)
        scale = 1.0 / future if source > 0 else -1.0 / past
        fx, fy = scale * ox, scale * oy
        x1, y1 = x0 + w, y0 + h
        for cy in range(max(y0 >> shift, 0), min(((y1 - 1) >> shift) + 1, rows)):
            ey = min(y1, (cy + 1) * block) - max(y0, cy * block)
            for cx in range(max(x0 >> shift, 0), min(((x1 - 1) >> shift) + 1, cols)):
                a = (min(x1, (cx + 1) * block) - max(x0, cx * block)) * ey
                acc[cy, cx, 0] += a
                acc[cy, cx, 1] += a * fx
                acc[cy, cx, 2] += a * fy
    for cy in range(rows):
        for cx in range(cols):
            total = acc[cy, cx, 0]
            if total > 0.0:
                out[cy, cx, 0] = acc[cy, cx, 1] / total
                out[cy, cx, 1] = acc[cy, cx, 2] / total
            else:
                out[cy, cx, 0] = 0.0
                out[cy, cx, 1] = 0.0


@nb.njit(cache=True)
def pixel_sources(r8, r16, r32, lay, direction, src, has):  # type: ignore[no-untyped-def]
    """Per pixel, where its block is fetched from in the reference of ``direction``.

    ``direction`` -1: past-reference vectors, +1: future-reference vectors. ``src`` (H, W, 2)
    int32 gets the rounded source position (x, y) = floor(p + mean offset + 0.5), clipped to
    the frame; ``has`` (H, W) bool says whether a vector of that direction covers the pixel.
    """
    height, width = has.shape
    acc = np.zeros((height, width, 2))
    count = np.zeros((height, width), np.int32)
    for i in range(r8.shape[0]):
        source, w, h, x0, y0, ox, oy = _read(r8, r16, r32, lay, i)
        if (source > 0) != (direction > 0):
            continue
        for y in range(max(y0, 0), min(y0 + h, height)):
            for x in range(max(x0, 0), min(x0 + w, width)):
                acc[y, x, 0] += ox
                acc[y, x, 1] += oy
                count[y, x] += 1
    for y in range(height):
        for x in range(width):
            n = count[y, x]
            has[y, x] = n > 0
            if n > 0:
                sx = np.int64(np.floor(x + acc[y, x, 0] / n + 0.5))
                sy = np.int64(np.floor(y + acc[y, x, 1] / n + 0.5))
                src[y, x, 0] = min(max(sx, 0), width - 1)
                src[y, x, 1] = min(max(sy, 0), height - 1)
            else:
                src[y, x, 0] = x
                src[y, x, 1] = y


@nb.njit(cache=True)
def trace(past, src_p, has_p, future, src_f, has_f, use_future, out):  # type: ignore[no-untyped-def]
    """One step of the reference chain: ``out[p]`` = the I-frame position of pixel ``p``.

    ``past``/``future`` are the (H, W, 2) int32 I-frame positions of the previous/next
    anchor. A pixel with a past vector follows it; else one with a future vector follows that
    (when ``use_future``); else it keeps its place in the previous anchor (zero motion).
    """
    height, width = out.shape[0], out.shape[1]
    for y in range(height):
        for x in range(width):
            if has_p[y, x]:
                out[y, x, 0] = past[src_p[y, x, 1], src_p[y, x, 0], 0]
                out[y, x, 1] = past[src_p[y, x, 1], src_p[y, x, 0], 1]
            elif use_future and has_f[y, x]:
                out[y, x, 0] = future[src_f[y, x, 1], src_f[y, x, 0], 0]
                out[y, x, 1] = future[src_f[y, x, 1], src_f[y, x, 0], 1]
            else:
                out[y, x, 0] = past[y, x, 0]
                out[y, x, 1] = past[y, x, 1]


@nb.njit(cache=True)
def accumulate(pos, frame, iframe, mv, residual, halve):  # type: ignore[no-untyped-def]
    """CoViAR outputs of one frame from its I-frame positions ``pos`` (H, W, 2):
    ``mv`` = p - pos (int16, pixels), ``residual`` = frame - iframe[pos] (RGB): exact, or with
    ``halve`` that difference / 2 rounded half to even and clipped to 127 (int8)."""
    height, width = pos.shape[0], pos.shape[1]
    for y in range(height):
        for x in range(width):
            sx, sy = pos[y, x, 0], pos[y, x, 1]
            mv[y, x, 0] = x - sx
            mv[y, x, 1] = y - sy
            for c in range(3):
                r = np.int64(frame[y, x, c]) - np.int64(iframe[sy, sx, c])
                if halve:
                    q = r >> 1
                    if (r & 1) and (q & 1):
                        q += 1
                    r = min(q, 127)
                residual[y, x, c] = r

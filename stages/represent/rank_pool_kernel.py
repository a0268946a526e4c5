"""The weighted sum of integer frames, compiled: one pass over the bytes, no float copy.

Decoders hand out uint8 (or uint16) frames. Converting a chunk to float32 before the
matrix-vector product reads and writes every value twice; this kernel reads each byte once,
four frames per sweep, into a float32 row that stays in cache. Every ``GROUP`` frames the
float32 row is added into the float64 result, so long clips keep float64 accuracy.
"""

from __future__ import annotations

import numba as nb
import numpy as np

#: integer dtypes pooled by the kernel (others are converted to float first)
KERNEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int8), np.dtype(np.int16))
#: frames summed in float32 before the partial sum joins the float64 result
GROUP = 64


def weighted_frame_sum(
    frames: np.ndarray,
    weights: np.ndarray,
    out: np.ndarray | None = None,
    ref: np.ndarray | None = None,
) -> np.ndarray:
    """``weights @ (frames - ref)`` for integer frames (k, N), weights (k,) and an optional
    float32 reference frame (N,) (centring keeps long running sums accurate), added into
    ``out`` (float32 or float64 (N,); a new float64 array when None), which is returned."""
    if frames.ndim != 2 or weights.shape != (frames.shape[0],):
        raise ValueError(f"weights {weights.shape} do not match frames {frames.shape}")
    if out is None:
        out = np.zeros(frames.shape[1], np.float64)
    elif out.shape != (frames.shape[1],) or out.dtype not in (np.float32, np.float64):
        raise ValueError(f"out must be float32 or float64 ({frames.shape[1]},); got {out.shape}")
    w32 = np.ascontiguousarray(weights, dtype=np.float32)
    if ref is None:
        _weighted_sum(frames, w32, out)
    else:
        if ref.shape != (frames.shape[1],):
            raise ValueError(f"ref {ref.shape} does not match frames {frames.shape}")
        _weighted_sum_centred(frames, w32, np.ascontiguousarray(ref, dtype=np.float32), out)
    return out


@nb.njit(cache=True)
def _weighted_sum(frames: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    k, n = frames.shape
    acc = np.empty(n, np.float32)
    for g in range(0, k, GROUP):
        end = min(k, g + GROUP)
        acc[:] = 0.0
        t = g
        while t + 4 <= end:
            a0, a1, a2, a3 = weights[t], weights[t + 1], weights[t + 2], weights[t + 3]
            x0, x1, x2, x3 = frames[t], frames[t + 1], frames[t + 2], frames[t + 3]
            for i in range(n):
                acc[i] += (a0 * np.float32(x0[i]) + a1 * np.float32(x1[i])) + (
                    a2 * np.float32(x2[i]) + a3 * np.float32(x3[i])
                )
            t += 4
        while t < end:
            a, x = weights[t], frames[t]
            for i in range(n):
                acc[i] += a * np.float32(x[i])
            t += 1
        for i in range(n):
            out[i] += acc[i]


@nb.njit(cache=True)
def _weighted_sum_centred(
    frames: np.ndarray, weights: np.ndarray, ref: np.ndarray, out: np.ndarray
) -> None:
    k, n = frames.shape
    acc = np.empty(n, np.float32)
    for g in range(0, k, GROUP):
        end = min(k, g + GROUP)
        acc[:] = 0.0
        t = g
        while t + 2 <= end:
            a0, a1 = weights[t], weights[t + 1]
            x0, x1 = frames[t], frames[t + 1]
            for i in range(n):
                r = ref[i]
                acc[i] += a0 * (np.float32(x0[i]) - r) + a1 * (np.float32(x1[i]) - r)
            t += 2
        while t < end:
            a, x = weights[t], frames[t]
            for i in range(n):
                acc[i] += a * (np.float32(x[i]) - ref[i])
            t += 1
        for i in range(n):
            out[i] += acc[i]

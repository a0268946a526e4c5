"""The weighted sum of integer frames, compiled: one pass over the bytes, no float copy.

Decoders hand out uint8 (or uint16) frames. Converting a chunk to float32 before the
matrix-vector product reads and writes every value twice; this kernel reads each byte once
and keeps the float32 accumulator (one row of the output) in cache, four frames per sweep.
"""

from __future__ import annotations

import numba as nb
import numpy as np

#: integer dtypes pooled by the kernel (others are converted to float first)
KERNEL_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int8), np.dtype(np.int16))


@nb.njit(cache=True)
def weighted_frame_sum(frames: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``weights @ frames`` for integer frames (k, N) and float32 weights (k,): float32 (N,)."""
    k, n = frames.shape
    acc = np.zeros(n, np.float32)
    t = 0
    while t + 4 <= k:
        a0, a1, a2, a3 = weights[t], weights[t + 1], weights[t + 2], weights[t + 3]
        x0, x1, x2, x3 = frames[t], frames[t + 1], frames[t + 2], frames[t + 3]
        for i in range(n):
            acc[i] += (a0 * np.float32(x0[i]) + a1 * np.float32(x1[i])) + (
                a2 * np.float32(x2[i]) + a3 * np.float32(x3[i])
            )
        t += 4
    while t < k:
        a, x = weights[t], frames[t]
        for i in range(n):
            acc[i] += a * np.float32(x[i])
        t += 1
    return acc

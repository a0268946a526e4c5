"""Approximate rank pooling in one pass: :class:`RankPooler`.

The weights and their closed form (running sums of a few functions of the frame index, with
coefficients known once the clip ends) are in :mod:`.rank_weights`; the compiled sum over
integer frames is in :mod:`.rank_pool_kernel`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from datapipe.errors import ItemError
from datapipe.stages.represent.rank_pool_kernel import KERNEL_DTYPES, weighted_frame_sum
from datapipe.stages.represent.rank_weights import (
    Psi,
    _basis,
    _cached_weights,
    _check_psi,
    _coefficients,
    rank_pool_weights,
)

#: size of the float buffer a chunk of integer frames is converted into
CHUNK_BYTES = 8 << 20
_blas: Any = None


def _blas_single_thread(nbytes: int) -> contextlib.AbstractContextManager[Any]:
    """BLAS single-threaded for products over less than 32 MiB: the short products of
    chunked pooling lose more to thread hand-offs than they gain, and on a busy machine
    (DataLoader workers, other jobs) a multi-threaded OpenBLAS gemv can be 10x slower."""
    global _blas
    if nbytes >= 32 << 20:
        return contextlib.nullcontext()
    try:
        if _blas is None:
            from threadpoolctl import ThreadpoolController

            _blas = ThreadpoolController()
        return _blas.limit(limits=1, user_api="blas")
    except ImportError:  # threadpoolctl comes with scikit-learn; without it, BLAS defaults
        return contextlib.nullcontext()


@dataclass
class _Window:
    """One pending pooled image: frames [start, start + cap), its length known or not."""

    start: int
    cap: float  # most frames (inf: the whole clip)
    length: int | None  # known length: direct weights; None: running sums (basis)
    acc: np.ndarray | None = None  # (rows, N) float64: sum of weight * (frame - centre)
    shift: np.ndarray | None = None  # (rows,): sum of the weights of the centred frames
    peak: float = 0.0  # max |value| of its first frame, for the noise floor

    @property
    def end(self) -> float:
        return self.start + (self.cap if self.length is None else self.length)

    def weights(self, t0: int, t1: int, psi: str) -> tuple[int, np.ndarray] | None:
        """Its weights on the global frames [t0, t1): (offset of the first, (rows, n))."""
        lo, hi = max(t0, self.start), int(min(t1, self.end))
        if hi <= lo:
            return None
        i = np.arange(lo - self.start + 1, hi - self.start + 1)
        if self.length is None:
            return lo - t0, _basis(i, psi)
        return lo - t0, _cached_weights(self.length, psi)[i - 1][None, :]


class RankPooler:
    """Approximate rank pooling in one pass, with memory independent of the clip length.

    Feed frames with :meth:`push` (one frame) or :meth:`extend` (an array ``(k, *frame)`` or
    any iterable of frames), then call :meth:`result`. Frames are pooled in chunks: integer
    frames are converted chunk by chunk into a float32 buffer of about ``CHUNK_BYTES`` (never
    the whole clip); a float array of known length is used in place. Each window a chunk
    touches costs one matrix-vector product over the frames it has in the chunk.

    Parameters
    ----------
    psi : ``"frame"`` (pool the frames) or ``"mean"`` (pool the running means).
    window, stride : pool windows of ``window`` frames starting every ``stride`` frames
        (default ``stride = window``) instead of the whole clip. Only full windows are
        pooled, except that a clip shorter than ``window`` gives one image of all its frames.
    length : the number of frames, when known in advance (e.g. an array): every image then
        has direct weights. Unknown (None): the first image keeps 3 (4 for ``"mean"``)
        running sums and derives its weights when the clip ends; frames are then centred on
        the first frame before the float32 products (exact, since the weights sum to 0), which
        keeps the running sums accurate for long, slowly changing clips.

    Memory: the chunk buffer plus one float64 accumulator per open window
    (``ceil(window / stride)``), 3 or 4 for the first one when ``length`` is unknown.

    Examples
    --------
    >>> pooler = RankPooler(psi="mean")  # beta = (-7/9, 5/9, 2/9) for three frames
    >>> for value in (0.0, 10.0, 20.0):
    ...     pooler.push(np.full((2, 2), value))
    >>> np.allclose(pooler.result(), -7 / 9 * 0 + 5 / 9 * 10 + 2 / 9 * 20)
    True
    """

    def __init__(
        self,
        *,
        psi: Psi = "frame",
        window: int | None = None,
        stride: int | None = None,
        length: int | None = None,
    ) -> None:
        _check_psi(psi, "RankPooler")
        for name, value in (("window", window), ("stride", stride), ("length", length)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1
            ):
                raise ValueError(
                    f"The {name!r} parameter of RankPooler must be an int >= 1 or None. "
                    f"Got {value!r}."
                )
        if stride is not None and window is None:
            raise ValueError("The 'stride' parameter of RankPooler needs 'window'.")
        self.psi, self.window, self.length = psi, window, length
        self.stride = stride or window
        self.frames = 0  # frames received
        self._pooled = 0  # frames pooled into the accumulators
        self._shape: tuple[int, ...] | None = None
        self._buf: np.ndarray | None = None
        self._ref: np.ndarray | None = None  # the first frame: the centre of copied chunks
        self._fill = 0
        self._float = False  # a float frame was seen: check for NaN / inf
        self._next_start = 0
        self._open: list[_Window] = []
        self._results: list[tuple[int, np.ndarray, float]] = []
        #: per pooled image, after :meth:`result`: the size of the rounding noise of a still
        #: clip (1e-5 * sum |w_t| * max |first frame|); values within it of 0 are noise
        self.noise_floor = np.zeros(0)

    # -- input ----------------------------------------------------------------------------
    def push(self, frame: np.ndarray) -> None:
        """Add one frame (any shape; every frame of a clip must have the same shape)."""
        frame = np.asarray(frame)
        buf = self._accept(frame.dtype, frame.shape, 1)
        np.copyto(buf[self._fill], frame.reshape(-1), casting="unsafe")
        if self._ref is None and self.length is None:
            self._ref = buf[self._fill].copy()
        self._fill += 1
        self.frames += 1
        if self._fill == len(buf):
            self._flush()

    def extend(self, frames: np.ndarray | Iterable[np.ndarray]) -> None:
        """Add frames: an array ``(k, *frame)`` (chunked, no full copy) or an iterable."""
        if not isinstance(frames, np.ndarray):
            for frame in frames:
                self.push(frame)
            return
        if frames.ndim < 2:
            raise ItemError("invalid", f"frames must be an array (T, *frame), got {frames.shape}")
        k = len(frames)
        if k == 0:
            return
        buf = self._accept(frames.dtype, frames.shape[1:], k)
        self._flush()
        flat = frames.reshape(k, -1)
        if self._ref is None and self.length is None:
            self._ref = flat[0].astype(buf.dtype)
        # known length: float frames, and integer frames the compiled kernel takes, are read
        # where they are; other integers are converted chunk by chunk; unknown length: every
        # chunk is copied and centred
        readable = flat.dtype == buf.dtype or flat.dtype in KERNEL_DTYPES
        in_place = self.length is not None and readable and flat.flags.c_contiguous
        if in_place:
            step = 256 if self.window is None else 2 * max(self.window, self.stride or 1, 16)
        else:
            step = len(buf)
        for c in range(0, k, step):
            block = flat[c : c + step]
            if not in_place:
                np.copyto(buf[: len(block)], block, casting="unsafe")
                block = buf[: len(block)]
            self.frames += len(block)
            self._consume(block, centre=self.length is None)

    def _accept(self, dtype: np.dtype, shape: tuple[int, ...], k: int) -> np.ndarray:
        """Check the next ``k`` frames; the chunk buffer (allocated for the first frame)."""
        if dtype.kind not in "biuf":
            raise ItemError("invalid", f"frames must be numbers, got dtype {dtype}")
        if len(shape) == 0:
            raise ItemError("invalid", "a frame must be an array with at least one dimension")
        if self._shape is None:
            if 0 in shape:
                raise ItemError("empty", f"frames of shape {tuple(shape)} have no values")
            self._shape = tuple(shape)
            self._buf = self._new_buffer(dtype)
        elif tuple(shape) != self._shape:
            raise ItemError(
                "invalid",
                f"frame {self.frames} has shape {tuple(shape)}, frame 0 has {self._shape}: "
                "all frames of a clip must have the same size",
            )
        if self.length is not None and self.frames + k > self.length:
            raise ValueError(f"RankPooler got more than length={self.length} frames")
        self._float = self._float or dtype.kind == "f"
        assert self._buf is not None
        if self._buf.dtype in KERNEL_DTYPES and dtype != self._buf.dtype:
            self._flush()  # an integer buffer takes only its own dtype: go on in float
            wide = dtype == np.float64
            self._buf = self._new_buffer(np.dtype(np.float64 if wide else np.float32))
        return self._buf

    def _new_buffer(self, dtype: np.dtype) -> np.ndarray:
        """The chunk buffer: frames of a kernel dtype as they are, others as float."""
        assert self._shape is not None
        n = int(np.prod(self._shape))
        # short chunks keep the float32 partial sums accurate: running sums of unknown length
        # grow with t, so those take 16 frames at a time
        most = 64 if self.length else 16
        if dtype in KERNEL_DTYPES:
            return np.empty((min(max(1, CHUNK_BYTES // (n * dtype.itemsize)), most), n), dtype)
        wide = dtype == np.float64
        rows = min(max(1, CHUNK_BYTES // (n * (8 if wide else 4))), most)
        return np.empty((rows, n), np.float64 if wide else np.float32)

    # -- pooling --------------------------------------------------------------------------
    def _flush(self) -> None:
        if self._fill and self._buf is not None:
            n, self._fill = self._fill, 0
            self._consume(self._buf[:n], centre=self.length is None)

    def _open_windows(self, block: np.ndarray, t0: int) -> None:
        """Open every window that starts in the block of frames [t0, t0 + len(block))."""
        W, S, T = self.window, self.stride, self.length
        t1 = t0 + len(block)
        opened = len(self._open)
        while self._next_start < t1:
            s = self._next_start
            if W is None:
                self._open.append(_Window(0, np.inf, T))
                self._next_start = np.iinfo(np.int64).max
                break
            if s > 0 and T is not None and s + W > T:
                self._next_start = np.iinfo(np.int64).max  # no more full windows
                break
            if s == 0 and T is not None:
                length: int | None = min(W, T)
            else:
                length = W if s > 0 else None
            self._open.append(_Window(s, W, length))
            self._next_start = s + S  # type: ignore[operator]
        for w in self._open[opened:]:
            w.peak = float(np.abs(block[w.start - t0], dtype=np.float64).max())

    def _consume(self, block: np.ndarray, centre: bool) -> None:
        """Pool ``block`` (k, N), the next k frames of the clip; ``centre``: the block is
        our buffer, subtract the first frame of the clip (the weights sum to 0, and the
        float32 partial sums stay accurate on slowly changing clips)."""
        t0 = self._pooled
        t1 = t0 + len(block)
        self._open_windows(block, t0)
        kernel = block.dtype in KERNEL_DTYPES  # integer frames: the kernel centres them
        if centre and not kernel:
            block -= self._ref
        ref = None
        if centre and kernel:
            assert self._ref is not None
            ref = self._ref.astype(np.float32)
        for w in self._open:
            part = w.weights(t0, t1, self.psi)
            if part is None:
                continue
            off, wts = part
            frames = block[off : off + wts.shape[1]]
            if w.acc is None:
                # float64 sums for the whole clip and the running sums; a window of known
                # length spans only a few chunks, float32 is enough there
                wide = w.length is None or self.window is None
                w.acc = np.zeros((len(wts), block.shape[1]), np.float64 if wide else np.float32)
                w.shift = np.zeros(len(wts))
            if kernel:  # integer frames read in place, summed into acc
                for row, acc in zip(wts.astype(np.float32), w.acc, strict=True):
                    weighted_frame_sum(frames, row, out=acc, ref=ref)
            else:
                with _blas_single_thread(frames.nbytes):
                    outs = [row @ frames for row in wts.astype(block.dtype)]
                if self._float and not all(np.isfinite(out).all() for out in outs):
                    self._raise_nonfinite(block, t0)
                for acc, out in zip(w.acc, outs, strict=True):
                    acc += out
            if centre:
                w.shift += wts.sum(axis=1)
        self._pooled = t1
        for w in [w for w in self._open if w.end <= t1]:
            self._close(w, int(w.end) - w.start)

    def _close(self, w: _Window, length: int) -> None:
        self._open.remove(w)
        assert w.acc is not None and w.shift is not None
        if w.length is None:
            c = _coefficients(length, self.psi)
            image = c @ w.acc
            shift = float(c @ w.shift)
        else:
            image, shift = w.acc[0], float(w.shift[0])
        if abs(shift) > 1e-6 and self._ref is not None:  # the weights sum to 1 (one frame)
            image = image + shift * self._ref
        weights = (
            _cached_weights(length, self.psi)
            if w.length
            else rank_pool_weights(length, psi=self.psi)
        )
        floor = 1e-5 * float(np.abs(weights).sum()) * w.peak
        self._results.append((w.start, image.astype(np.float32, copy=False), floor))

    def _raise_nonfinite(self, block: np.ndarray, t0: int) -> None:
        for j, frame in enumerate(block):
            if not np.isfinite(frame).all():
                raise ItemError("nonfinite", f"frame {t0 + j} has NaN or infinite values")
        raise ItemError("nonfinite", "the pooled values overflow (frames with huge values)")

    def result(self) -> np.ndarray:
        """The pooled image(s), float32: ``frame`` shape, or ``(N, *frame)`` with a window."""
        self._flush()
        if self.frames == 0 or self._shape is None:
            raise ItemError("empty", "no frames to pool (T = 0)")
        if self.length is not None and self.frames != self.length:
            raise ValueError(f"RankPooler got {self.frames} frames, length={self.length}")
        for w in list(self._open):
            if w.length is None:  # the whole clip, or a clip shorter than the window
                self._close(w, self.frames - w.start)
        self._open.clear()  # windows of known length closed with their last frame
        self._results.sort(key=lambda r: r[0])
        images = [img for _, img, _ in self._results]
        self.noise_floor = np.array([floor for _, _, floor in self._results])
        if self.window is None:
            return images[0].reshape(self._shape)
        return np.stack(images).reshape(len(images), *self._shape)

"""The quantized DCT coefficients of one JPEG (:class:`JpegDCT`): what ``jpeg.dct`` reads
(:func:`~datapipe.stages.compressed.jpeg_dct.read_jpeg_dct`) and the reduced decoders of
``represent.resize`` (:mod:`~datapipe.stages.represent.dct_decode`) take back to pixels."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from datapipe.errors import ItemError
from datapipe.stages.common.jpeg_header import ZIGZAG
from datapipe.stages.common.libturbojpeg import Layout, layout

_SUBSAMPLING = {(1, 1): "4:4:4", (1, 2): "4:2:2", (2, 2): "4:2:0", (2, 1): "4:4:0", (1, 4): "4:1:1"}


@dataclass(frozen=True, eq=False)
class JpegDCT:
    """Quantized DCT coefficients of one JPEG.

    Attributes
    ----------
    y, cb, cr : int16 arrays (block_rows, block_cols, 8, 8), each block in natural row-major
        order (``[u, v]``: vertical frequency u, horizontal v; ``[0, 0]`` is DC). ``cb`` and
        ``cr`` are None for a grayscale JPEG. Each component has its own block grid:
        ``ceil(ceil(height * v / v_max) / 8)`` rows, likewise for columns.
    qt : uint16 (C, 8, 8), the quantization table of each component, natural order.
    sampling : (h, v) sampling factors of each component.
    width, height : image size in pixels.
    progressive : whether the file is progressive.
    warnings : libjpeg's warnings (corrupt entropy data); libjpeg reports the first.
    damaged_blocks : 0 for a clean decode; after a warning, the number of blocks left
        all-zero (libjpeg zero-fills the blocks it skips), at least 1. An estimate: libjpeg
        does not say which blocks it lost; blocks decoded from garbage, or from the zero bits
        it pads a cut-short segment with, go unnoticed, and a genuinely all-zero block counts.
    """

    y: np.ndarray
    cb: np.ndarray | None
    cr: np.ndarray | None
    qt: np.ndarray
    sampling: tuple[tuple[int, int], ...]
    width: int
    height: int
    progressive: bool
    warnings: tuple[str, ...] = ()
    damaged_blocks: int = 0

    @property
    def grayscale(self) -> bool:
        return self.cb is None

    @property
    def components(self) -> list[np.ndarray]:
        """[y] or [y, cb, cr]."""
        return [self.y] if self.cb is None else [self.y, self.cb, self.cr]  # type: ignore[list-item]

    @property
    def chroma_ratio(self) -> tuple[int, int]:
        """Luma blocks per chroma block along (rows, cols): (2, 2) for 4:2:0, (1, 2) for 4:2:2,
        (1, 1) for 4:4:4. Raises ItemError when chroma does not tile the luma grid."""
        if self.grayscale:
            return (1, 1)
        return chroma_ratio(self.sampling)

    @property
    def subsampling(self) -> str:
        """'gray', '4:4:4', '4:2:2', '4:2:0', '4:4:0', '4:1:1', or the sampling factors."""
        if self.grayscale:
            return "gray"
        try:
            return _SUBSAMPLING.get(self.chroma_ratio, str(self.sampling))
        except ItemError:
            return str(self.sampling)


def chroma_ratio(sampling: tuple[tuple[int, int], ...]) -> tuple[int, int]:
    """Luma blocks per chroma block along (rows, cols) for the (h, v) ``sampling`` factors of
    Y, Cb, Cr; ItemError ``unsupported`` when chroma does not tile the luma grid."""
    (yh, yv), (bh, bv), (rh, rv) = sampling
    if (bh, bv) != (rh, rv) or yh % bh or yv % bv:
        raise ItemError(
            "unsupported", f"sampling {sampling} does not map chroma onto the luma grid"
        )
    return (yv // bv, yh // bh)


@functools.lru_cache(maxsize=1024)
def stage_layout(
    grid: tuple[int, int],
    out_grid: tuple[int, int],
    ratio: tuple[int, int],
    k: int,
    channels: bool,
    qt: bytes | None,
) -> Layout:
    """How the C row filter writes one component for ``jpeg.dct``: the first ``k`` zigzag
    coefficients, as channels (zigzag order) or in place in an 8x8 block (the rest 0), times
    ``qt`` (uint16 natural order, as bytes) when given, each block repeated over ``ratio``
    blocks of ``out_grid``. Cached: a dataset's images mostly share grids and tables."""
    if channels:
        src, dst, block = ZIGZAG[:k], np.arange(k), (k,)
    else:  # in place, in natural order (all 64: a plain copy)
        src = dst = np.sort(ZIGZAG[:k])
        block = (8, 8)
    mul = None if qt is None else np.frombuffer(qt, np.uint16)[src].astype(np.float32)
    return layout(grid, out_grid, ratio, src, dst, block, mul)

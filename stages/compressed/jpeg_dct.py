"""``jpeg.dct``: the quantized DCT coefficients of a JPEG, straight from the entropy decoder.

No inverse DCT and no colour conversion: the coefficients libjpeg-turbo decodes are copied
out as they are (bit-exact with libjpeg, and so with ``jpeglib.read_dct``), in the layout of
Gueguen et al., "Faster Neural Networks Straight from JPEG" (NeurIPS 2018): Y on its 8x8 block
grid, Cb and Cr on their own (subsampled) grid or replicated onto the luma grid; optionally
dequantized and cut to the first K zigzag frequencies ("Learning in the Frequency Domain",
Xu et al., CVPR 2020).

The reader is a ctypes binding to the system libturbojpeg (see
:mod:`~datapipe.stages.common.libturbojpeg`), with an optional C row filter
(``stages/common/_jpeg_filter.c``, built at install time when a compiler is there); the
markers are parsed and checked in Python first (see
:mod:`~datapipe.stages.common.jpeg_header`), so absurd declared sizes and unsupported kinds of
JPEG are refused before anything is allocated. The coefficients come back as a
:class:`~datapipe.stages.common.jpeg_coefficients.JpegDCT`.

The stage itself, when the C filter is built, has libjpeg's block rows written straight into
its output layout (zigzag cut, dequantization and chroma placement in one pass, no
intermediate arrays); without it, numpy does the same from the raw blocks, bit for bit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field as PField

from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record
from datapipe.stages.common import libturbojpeg
from datapipe.stages.common.jpeg_coefficients import JpegDCT, chroma_ratio, stage_layout
from datapipe.stages.common.jpeg_header import ZIGZAG, JpegHeader, parse_header
from datapipe.stages.common.libturbojpeg import (
    Layout,
    TurboJPEGError,
    read_coefficients,
    read_layouts,
)

DEFAULT_MAX_PIXELS = 50_000_000
#: libjpeg's warning for data that ends before the image does (JWRN_JPEG_EOF)
_EOF_WARNING = "Premature end of JPEG file"


def read_jpeg_dct(
    path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> JpegDCT:
    """Read the quantized DCT coefficients of a JPEG file (a path) or of JPEG data (bytes).

    Baseline, extended sequential and progressive Huffman-coded 8-bit JPEGs, grayscale or
    YCbCr, in every subsampling libjpeg-turbo's TurboJPEG API knows (4:4:4, 4:2:2, 4:2:0,
    4:4:0, 4:1:1). Raises :class:`~datapipe.errors.ItemError` with class ``empty`` (zero
    bytes), ``truncated`` (the data ends early), ``corrupt`` (malformed; with ``strict``, also
    any libjpeg warning such as corrupt entropy data), ``unsupported`` (not a JPEG, CMYK/YCCK,
    RGB-coded, arithmetic-coded, lossless, hierarchical, 12-bit), ``decode_bomb`` (declared
    width x height over ``max_pixels``, or more data declared than a baseline file can hold,
    checked before any allocation; more than 500 progressive scans) or ``io``.

    Without ``strict``, damaged entropy data is kept as libjpeg decodes it and reported in
    ``warnings`` and ``damaged_blocks``.

    Returns
    -------
    JpegDCT
        int16 coefficient blocks ``y``, ``cb``, ``cr`` ``(block_rows, block_cols, 8, 8)``
        (chroma None for grayscale) on each component's own grid, the quantization tables
        ``qt`` ``(C, 8, 8)``, the sampling factors, the image size and the damage found.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (40, 24), (200, 30, 30)).save(buf, "JPEG", subsampling=2)
    >>> dct = read_jpeg_dct(buf.getvalue())
    >>> dct.y.shape, dct.cb.shape, dct.subsampling
    ((3, 5, 8, 8), (2, 3, 8, 8), '4:2:0')
    """
    data, header = _prepare(path_or_bytes, max_pixels)
    return _decode(data, header, strict)


def _decode(data: bytes, header: JpegHeader, strict: bool) -> JpegDCT:
    try:
        arrays, warning = read_coefficients(data, header.grids, strict=strict)
    except TurboJPEGError as exc:
        raise ItemError(_error_class(exc), f"cannot read the JPEG: {exc.message}") from None
    damaged = 0
    if warning is not None:
        zero = sum(int(np.count_nonzero(~a.reshape(-1, 64).any(axis=1))) for a in arrays)
        damaged = _damage(warning, zero)
    y, *chroma = arrays
    return JpegDCT(
        y=y,
        cb=chroma[0] if chroma else None,
        cr=chroma[1] if chroma else None,
        qt=header.qt,
        sampling=header.sampling,
        width=header.width,
        height=header.height,
        progressive=header.progressive,
        warnings=(warning,) if warning else (),
        damaged_blocks=damaged,
    )


def _prepare(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview, max_pixels: int
) -> tuple[bytes, JpegHeader]:
    """The data and its checked header: every refusal that comes before libjpeg runs."""
    data = _load(source)
    header = parse_header(data, max_pixels)
    if not header.has_eoi:
        raise ItemError("truncated", "the JPEG data ends before its EOI marker")
    if not header.progressive and len(data) * 8 < 2 * sum(r * c for r, c in header.grids):
        # every block of a sequential file costs at least a DC code and an EOB code
        raise ItemError(
            "decode_bomb",
            f"declared size {header.width}x{header.height} needs more data than the "
            f"{len(data)} bytes of the file",
        )
    return data, header


def _damage(warning: str, zero_blocks: int) -> int:
    """Blocks counted as damaged after libjpeg's ``warning``; a premature end is an error."""
    if _EOF_WARNING in warning:
        raise ItemError("truncated", f"cannot read the JPEG: {warning}")
    return max(1, zero_blocks)


def zigzag_channels(blocks: np.ndarray, *, k: int = 64) -> np.ndarray:
    """The first ``k`` coefficients of each block in zigzag order: (..., 8, 8) -> (..., k).

    Channel 0 is DC, then (0, 1), (1, 0), (2, 0), (1, 1), ... Also takes a quantization
    table (8, 8) -> (k,).

    Returns
    -------
    numpy.ndarray
        A new array ``(..., k)`` of the dtype of ``blocks``.

    Examples
    --------
    >>> zigzag_channels(np.arange(64).reshape(8, 8), k=6).tolist()
    [0, 1, 8, 16, 9, 2]
    """
    if not 1 <= k <= 64:
        raise ValueError(f"k must be in 1..64; got {k}")
    if blocks.shape[-2:] != (8, 8):
        raise ValueError(f"blocks must end in (8, 8); got shape {blocks.shape}")
    flat = blocks.reshape(*blocks.shape[:-2], 64)
    return np.take(flat, ZIGZAG[:k], axis=-1)


def dequantize(coefs: np.ndarray, qt: np.ndarray) -> np.ndarray:
    """``coefs * qt`` as float32: the DCT coefficients before quantization.

    ``qt`` must match the trailing axes of ``coefs``: (8, 8) for blocks in natural order,
    ``zigzag_channels(qt, k=k)`` (shape (k,)) for zigzag channels.

    Returns
    -------
    numpy.ndarray
        float32, the broadcast shape of ``coefs`` and ``qt``.

    Examples
    --------
    >>> from datapipe import ops
    >>> ops.dequantize_dct(np.array([3, -2, 0], np.int16), np.array([16, 11, 10])).tolist()
    [48.0, -22.0, 0.0]
    """
    return np.multiply(coefs, np.asarray(qt, np.float32), dtype=np.float32)


def align_chroma(
    chroma: np.ndarray, luma_grid: tuple[int, int], ratio: tuple[int, int]
) -> np.ndarray:
    """Replicate each chroma block onto the luma blocks it covers (nearest neighbour on the
    block grid, as in Gueguen et al.): (Hc, Wc, ...) -> (Hb, Wb, ...).

    ``ratio`` is luma blocks per chroma block along (rows, cols) (``JpegDCT.chroma_ratio``);
    the partial blocks past the luma grid's edge are cut off.

    Returns
    -------
    numpy.ndarray
        ``(*luma_grid, ...)``, the dtype of ``chroma``.

    Examples
    --------
    >>> align_chroma(np.array([[1, 2]]), (2, 3), (2, 2)).tolist()  # 4:2:0, 3 luma columns
    [[1, 1, 2], [1, 1, 2]]
    """
    ry, rx = ratio
    out = np.repeat(chroma, ry, axis=0) if ry > 1 else chroma
    out = np.repeat(out, rx, axis=1) if rx > 1 else out
    rows, cols = luma_grid
    if out.shape[0] < rows or out.shape[1] < cols:
        raise ValueError(f"chroma grid {chroma.shape[:2]} x {ratio} does not cover {luma_grid}")
    return np.ascontiguousarray(out[:rows, :cols])


class JpegDCTParams(Params):
    dequantize: bool = PField(False, description="Multiply by the quantization table (float32).")
    keep: int = PField(64, ge=1, le=64, description="First K zigzag coefficients of luma.")
    keep_chroma: int | None = PField(
        None, ge=1, le=64, description="First K zigzag coefficients of Cb/Cr (default: keep)."
    )
    layout: Literal["blocks", "channels"] = PField(
        "blocks", description="'blocks': (.., 8, 8) natural order; 'channels': (.., K) zigzag."
    )
    chroma: Literal["own_grid", "luma_grid"] = PField(
        "own_grid", description="Cb/Cr on their own block grid, or replicated onto luma's."
    )
    strict: bool = PField(False, description="Any libjpeg warning (corrupt data) is an error.")
    max_pixels: int = PField(DEFAULT_MAX_PIXELS, ge=1, description="Refuse larger declared images.")


class JpegDCTStage(Map):
    """Read the quantized DCT coefficients of a JPEG (no IDCT, no colour conversion).

    Consumes ``path``. Produces, with Hb x Wb the luma block grid (``ceil(height / 8)`` x
    ``ceil(width / 8)``) and Hc x Wc the chroma block grid (Hb x Wb for 4:4:4, about half of
    it along each subsampled axis):

    - ``dct_y``: (Hb, Wb, 8, 8) with ``layout='blocks'`` (natural row-major order within a
      block; with ``keep`` < 64 the coefficients past the first ``keep`` in zigzag order are
      set to 0), or (Hb, Wb, keep) with ``layout='channels'`` (zigzag order, channel 0 = DC).
    - ``dct_cb``, ``dct_cr``: (Hc, Wc, 8, 8) or (Hc, Wc, keep_chroma) with
      ``chroma='own_grid'``; (Hb, Wb, 8, 8) or (Hb, Wb, keep_chroma) with
      ``chroma='luma_grid'`` (each chroma block repeated over the luma blocks it covers).
      A grayscale JPEG gives zero-size arrays: (0, 0, 8, 8) or (0, 0, keep_chroma).
    - dtype of the three: int16 (the quantized values), or float32 with ``dequantize``
      (value x quantization step).
    - ``dct_qt``: uint16 (C, 8, 8), the quantization table of each component in natural
      order (C = 3, or 1 for grayscale), never cut or reordered.
    - ``jpeg_size``: int32 (2,), height and width in pixels.
    - ``jpeg_sampling``: uint8 (C, 2), the (horizontal, vertical) sampling factors of each
      component; with ``jpeg_size`` and ``dct_qt`` enough to decode the coefficients back to
      pixels (``represent.resize`` with ``input: dct``).
    - ``jpeg_damage``: int, 0 for a clean file; else the number of blocks libjpeg could not
      decode (see :class:`JpegDCT`); the engine copies a non-zero count into the manifest's
      ``notes``. With ``strict`` damaged files are error rows instead.

    Error rows: ``empty``, ``truncated``, ``corrupt``, ``unsupported`` (non-JPEG, CMYK,
    RGB-coded, arithmetic, lossless, 12-bit), ``decode_bomb`` (declared size over
    ``max_pixels``, checked from the frame header before allocating).
    """

    name = "jpeg.dct"
    description = "Quantized JPEG DCT coefficients (Y, Cb, Cr) without decoding to pixels."
    Params = JpegDCTParams
    CONSUMES = (Field("path", "str", ""),)
    EXAMPLE_PARAMS = {"keep": 16, "layout": "channels", "chroma": "luma_grid"}
    isolate = True

    def _tails(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        p = self.params
        if p.layout == "blocks":
            return (8, 8), (8, 8)
        return (p.keep,), (p.keep_chroma or p.keep,)

    def produces(self) -> tuple[Field, ...]:
        p = self.params
        dtype = "float32" if p.dequantize else "int16"
        ty, tc = (" ".join(map(str, t)) for t in self._tails())
        grid = "Hb Wb" if p.chroma == "luma_grid" else "Hc Wc"
        return (
            Field("dct_y", dtype, f"Hb Wb {ty}", "luma DCT coefficients"),
            Field("dct_cb", dtype, f"{grid} {tc}", "Cb DCT coefficients (0 x 0 for grayscale)"),
            Field("dct_cr", dtype, f"{grid} {tc}", "Cr DCT coefficients (0 x 0 for grayscale)"),
            Field("dct_qt", "uint16", "C 8 8", "quantization table per component"),
            Field("jpeg_size", "int32", "2", "height, width in pixels"),
            Field("jpeg_sampling", "uint8", "C 2", "(h, v) sampling factors per component"),
            Field("jpeg_damage", "int", "", "blocks lost to corrupt data (0 when clean)"),
        )

    def process(self, record: Record, ctx: Context) -> Record:
        if record.get("size") == 0:
            raise ItemError("empty", "zero-byte file")
        p = self.params
        data, header = _prepare(record["path"], p.max_pixels)
        layouts = self._layouts(header) if libturbojpeg.NATIVE_FILTER is not None else None
        if layouts is None:
            return self._from_dct(_decode(data, header, p.strict))
        # the C filter writes the output layout straight from libjpeg's rows: one pass
        try:
            arrays, zeros, warning = read_layouts(data, layouts, strict=p.strict)
        except TurboJPEGError as exc:
            raise ItemError(_error_class(exc), f"cannot read the JPEG: {exc.message}") from None
        damage = 0 if warning is None else _damage(warning, sum(zeros))
        y, *chroma = arrays
        return self._record(y, *(chroma or self._no_chroma()), header.qt, header, damage)

    def _layouts(self, header: JpegHeader) -> list[Layout] | None:
        """The C filter's layout of each component, or None where the numpy path must run
        (chroma that does not tile the luma grid: refused after the decode, as it always
        was). Kept per grids, sampling and tables: a dataset's images mostly share them."""
        p = self.params
        key = (header.grids, header.components, header.qt.tobytes() if p.dequantize else None)
        plans = self.__dict__.setdefault("_plans", {})
        if key in plans:
            return plans[key]
        ratio = (1, 1)
        if len(header.components) > 1 and p.chroma == "luma_grid":
            try:
                ratio = chroma_ratio(header.sampling)
            except ItemError:
                return None
        found = [self._layout(header, ci, ratio) for ci in range(len(header.components))]
        if len(plans) >= 64:
            plans.clear()
        plans[key] = found
        return found

    def _layout(self, header: JpegHeader, ci: int, ratio: tuple[int, int]) -> Layout:
        p = self.params
        own = ci == 0 or p.chroma == "own_grid"
        return stage_layout(
            header.grids[ci],
            header.grids[ci] if own else header.grids[0],
            (1, 1) if own else ratio,
            p.keep if ci == 0 else p.keep_chroma or p.keep,
            p.layout == "channels",
            header.qt[ci].tobytes() if p.dequantize else None,
        )

    def _from_dct(self, dct: JpegDCT) -> Record:
        """The outputs computed with numpy from the raw blocks (no C filter)."""
        p = self.params
        y = self._convert(dct.y, dct.qt[0], p.keep)
        if dct.grayscale:
            cb, cr = self._no_chroma()
        else:
            k = p.keep_chroma or p.keep
            cb = self._convert(dct.cb, dct.qt[1], k)  # type: ignore[arg-type]
            cr = self._convert(dct.cr, dct.qt[2], k)  # type: ignore[arg-type]
            if p.chroma == "luma_grid":
                ratio = dct.chroma_ratio
                cb = align_chroma(cb, y.shape[:2], ratio)
                cr = align_chroma(cr, y.shape[:2], ratio)
        return self._record(y, cb, cr, dct.qt, dct, dct.damaged_blocks)

    def _no_chroma(self) -> tuple[np.ndarray, np.ndarray]:
        dtype = np.float32 if self.params.dequantize else np.int16
        empty = np.zeros((0, 0, *self._tails()[1]), dtype)
        return empty, empty.copy()

    @staticmethod
    def _record(
        y: np.ndarray,
        cb: np.ndarray,
        cr: np.ndarray,
        qt: np.ndarray,
        image: JpegHeader | JpegDCT,
        damage: int,
    ) -> Record:
        return {
            "dct_y": y,
            "dct_cb": cb,
            "dct_cr": cr,
            "dct_qt": qt,
            "jpeg_size": np.array([image.height, image.width], np.int32),
            "jpeg_sampling": np.array(image.sampling, np.uint8),
            "jpeg_damage": damage,
        }

    def _convert(self, blocks: np.ndarray, qt: np.ndarray, k: int) -> np.ndarray:
        p = self.params
        if p.layout == "channels":
            coefs, q = zigzag_channels(blocks, k=k), zigzag_channels(qt, k=k)
        else:
            coefs, q = (blocks if k == 64 else blocks * _lowpass_mask(k)), qt
        return dequantize(coefs, q) if p.dequantize else coefs


def _lowpass_mask(k: int) -> np.ndarray:
    """int16 (8, 8): 1 at the first ``k`` zigzag positions, 0 elsewhere."""
    mask = np.zeros(64, np.int16)
    mask[ZIGZAG[:k]] = 1
    return mask.reshape(8, 8)


def _load(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> bytes:
    """The bytes of ``source``, read with one open, one fstat and (mostly) one read."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat refuses it next
        fd = os.open(source, os.O_RDONLY | _O_NONBLOCK | _O_BINARY)
    except OSError as exc:
        raise ItemError("io", f"cannot read {Path(source)}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ItemError("io", f"{Path(source)} is not a regular file")
        if info.st_size == 0:
            raise ItemError("empty", "zero-byte file")
        data = os.read(fd, info.st_size)
        while more := os.read(fd, 1 << 20):  # a short read, or the file grew
            data += more
        return data
    except OSError as exc:
        raise ItemError("io", f"cannot read {Path(source)}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


def _error_class(exc: TurboJPEGError) -> str:
    text = exc.message
    if _EOF_WARNING in text:
        return "truncated"
    if "more than 500 scans" in text:
        return "decode_bomb"
    refused = ("Unsupported", "not supported", "not implemented", "subsampling type", "Maximum")
    if any(word in text for word in refused):
        return "unsupported"
    return "corrupt"

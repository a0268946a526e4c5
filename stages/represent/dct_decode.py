"""Reduced decoding from DCT coefficients: the low k x k frequencies of each block, k-point IDCT.

An 8x8 JPEG block holds the orthonormal 2-D DCT of 8x8 pixels. Its top-left k x k coefficients,
scaled by k/8 and put through a k-point inverse DCT, give the k x k pixels of the same block
at k/8 of the size (k = 1: the block means; any k from 1 to 8, so 3/8 or 5/8 as well as the
1/8, 1/4, 1/2 of libjpeg's usual scales) with only the coefficients that scale needs: the
ideal low-pass of the DCT domain. (libjpeg's reduced IDCTs instead average neighbouring
outputs of the full transform, a box filter; the two differ by a few levels at edges.) It
runs on the
coefficients ``jpeg.dct`` already stored, so a dataset kept as DCT coefficients feeds
progressive resizing without going back to the JPEG files.

Chroma subsampled by r along an axis covers r times the pixels per block, so it keeps k*r
coefficients (up to 8) along that axis and lands on the luma grid without upsampling; only
past 8 (k > 4 for 4:2:0) is the rest upsampled, bilinearly (at a factor of 2, the triangle
filter of libjpeg's "fancy" upsampling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from PIL import Image

from datapipe.errors import ItemError
from datapipe.stages.common.jpeg_coefficients import JpegDCT
from datapipe.stages.common.jpeg_header import ZIGZAG
from datapipe.stages.represent.resample import Resample, check_options, finish_resize, plan_resize

#: natural (u, v) -> its position in zigzag order
_ZIGZAG_POS = np.argsort(ZIGZAG).reshape(8, 8)
#: the reduced image covers the target this many times over (when a scale k/8 < 1 can), so
#: the final antialiased resize smooths the ringing of the truncation: 42-48 dB against
#: decode-then-resize from 56 to 600 pixels of a 1280 x 854 photo, where an exact fit
#: (margin 1) fell to 35 dB when the target was close to a scale
MARGIN = 1.25
#: dequantized coefficients of 8-bit JPEGs stay far below this; larger values are garbage
MAX_COEFFICIENT = 1e7
#: the fields of ``jpeg.dct`` that ``decode_dct_reduced`` reads from a record
DCT_FIELDS = ("dct_y", "dct_cb", "dct_cr", "dct_qt", "jpeg_size", "jpeg_sampling")


@dataclass(frozen=True)
class _Component:
    coefs: np.ndarray  # (rows, cols, 8, 8) natural order, or (rows, cols, K) zigzag channels
    qt: np.ndarray | None  # (8, 8) natural order; None when already dequantized
    ratio: tuple[int, int]  # source pixels per block, in units of 8, along (rows, cols)


def decode_dct_reduced(
    dct: JpegDCT | Mapping[str, Any],
    size: int | Sequence[int],
    *,
    mode: Literal["crop", "stretch"] = "crop",
    resample: Resample = "bicubic",
    allow_upscale: bool = False,
    max_pixels: int = 50_000_000,
) -> np.ndarray:
    """Pixels at exactly ``size`` from JPEG DCT coefficients, at the smallest DCT scale.

    The coefficients are cut to the low k x k frequencies of the smallest scale k/8
    (k = 1 .. 8) whose image covers the target ``MARGIN`` (1.25) times over, inverse
    transformed at that size, converted from YCbCr, and finished to the exact size with one
    antialiased resize of the same crop box as :func:`decode_jpeg_reduced`. Finer steps than
    libjpeg's 1/8, 1/4, 1/2 leave less to the final resize (224 from 854 pixels: 3/8).

    Parameters
    ----------
    dct : a :class:`JpegDCT` (``read_jpeg_dct``), or a record of ``jpeg.dct``'s fields
        (``dct_y``, ``dct_cb``, ``dct_cr``, ``dct_qt``, ``jpeg_size``, ``jpeg_sampling``) in
        any of its layouts: blocks or zigzag channels, quantized (int16) or dequantized
        (float), chroma on its own grid or on the luma grid. Coefficients cut by ``keep``
        count as zero.
    size, mode, resample, allow_upscale, max_pixels : as :func:`decode_jpeg_reduced`.

    Returns
    -------
    numpy.ndarray
        uint8 ``(height, width, 3)``, RGB.

    Raises
    ------
    ValueError
        a bad ``size``, ``mode`` or ``resample``.
    ItemError
        ``invalid`` (missing fields, shapes that do not fit the image size), ``nonfinite``
        (NaN or infinite coefficients), ``unsupported`` (an upscale when it is off),
        ``decode_bomb`` (an image size over ``max_pixels``).

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> from datapipe.ops import read_jpeg_dct
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (640, 480), (200, 30, 30)).save(buf, "JPEG")
    >>> decode_dct_reduced(read_jpeg_dct(buf.getvalue()), 56)[0, 0]
    array([201,  29,  29], dtype=uint8)
    """
    h, w = check_options(size, mode, resample, "decode_dct_reduced")
    comps, H, W = _components(dct, max_pixels)
    box, (rw, rh) = plan_resize(W, H, h, w, mode, allow_upscale)
    k = next((k for k in range(1, 8) if min(W * k / rw, H * k / rh) >= 8 * MARGIN), 8)
    return finish_resize(_scaled(comps, H, W, k), box, 8 / k, h, w, resample)


def decode_dct_scaled(
    dct: JpegDCT | Mapping[str, Any], *, scale: int = 1, max_pixels: int = 50_000_000
) -> np.ndarray:
    """The whole image at 1/``scale`` (1, 2, 4 or 8) of its size from its DCT coefficients,
    the size libjpeg's scaled decode (Pillow's ``draft``) gives from the JPEG file. ``dct``
    and the errors as :func:`decode_dct_reduced`.

    Returns
    -------
    numpy.ndarray
        uint8 ``(ceil(height / scale), ceil(width / scale), 3)``, RGB.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> from datapipe.ops import read_jpeg_dct
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (100, 60), (200, 30, 30)).save(buf, "JPEG")
    >>> decode_dct_scaled(read_jpeg_dct(buf.getvalue()), scale=8).shape
    (8, 13, 3)
    """
    if scale not in (1, 2, 4, 8):
        raise ValueError(f"The 'scale' parameter must be 1, 2, 4 or 8. Got {scale!r} instead.")
    comps, H, W = _components(dct, max_pixels)
    img = _scaled(comps, H, W, 8 // scale)
    return np.asarray(img.convert("RGB") if img.mode != "RGB" else img)


def _components(
    dct: JpegDCT | Mapping[str, Any], max_pixels: int
) -> tuple[list[_Component], int, int]:
    if isinstance(dct, JpegDCT):
        _check_pixels(dct.height, dct.width, max_pixels)
        return _from_jpeg_dct(dct)
    if isinstance(dct, Mapping):
        return _from_fields(dct, max_pixels)
    raise ItemError("invalid", f"expected a JpegDCT or a record; got {type(dct).__name__}")


def _check_pixels(H: int, W: int, max_pixels: int) -> None:
    if H * W > max_pixels:
        raise ItemError("decode_bomb", f"image size {W}x{H} exceeds {max_pixels} pixels")


def _scaled(comps: list[_Component], H: int, W: int, k: int) -> Image.Image:
    """The image at k/8 of its size, a Pillow YCbCr (or L) image of ceil(H k/8) x ceil(W k/8)."""
    oh, ow = _ceil_div(H * k, 8), _ceil_div(W * k, 8)
    planes = [_plane(c, k, oh, ow) for c in comps]
    return Image.merge("YCbCr", planes) if len(planes) == 3 else planes[0]


def _plane(comp: _Component, k: int, oh: int, ow: int) -> Image.Image:
    """One component at k/8 scale, as an 8-bit plane of exactly oh x ow."""
    ry, rx = comp.ratio
    kr, kc = min(8, k * ry), min(8, k * rx)
    low = _low_square(comp, kr, kc)  # float32 (rows, kr, cols, kc), dequantized
    rows, _, cols, _ = low.shape
    # separable inverse DCT, two matrix products: along each block row (v -> y), then along
    # each block column (u -> x); the (rows, kr, cols, kc) layout is already the plane's
    pixels = (low.reshape(-1, kc) @ _idct(kc)).reshape(rows, kr, cols * kc)
    pixels = np.matmul(_idct(kr).T, pixels).reshape(rows * kr, cols * kc)
    pixels += 128.5  # the level shift, and +0.5 to round by truncation below
    np.clip(pixels, 0, 255, out=pixels)
    plane = Image.fromarray(pixels.astype(np.uint8))
    if kr < k * ry or kc < k * rx:  # chroma past 8 points per block: upsample the rest
        plane = plane.resize((cols * k * rx, rows * k * ry), Image.Resampling.BILINEAR)
    return plane.crop((0, 0, ow, oh))


@lru_cache(maxsize=8)
def _idct(k: int) -> np.ndarray:
    """float32 (k, k): the orthonormal k-point DCT-II basis ``B[u, x]`` times sqrt(k / 8).

    ``B_r.T @ F @ B_c`` inverts a k_r x k_c block; the factor sqrt(k/8) per axis rescales 8-point
    coefficients to k points (a flat block keeps its level)."""
    x = np.arange(k)
    basis = np.cos(np.pi * (2 * x[None, :] + 1) * x[:, None] / (2 * k))
    basis *= np.where(x == 0, np.sqrt(1 / k), np.sqrt(2 / k))[:, None]
    return (basis * np.sqrt(k / 8)).astype(np.float32)


def _low_square(comp: _Component, kr: int, kc: int) -> np.ndarray:
    """float32 (rows, kr, cols, kc): the low frequencies of each block, dequantized, laid out
    as the rows and columns of the plane they become."""
    coefs = comp.coefs
    rows, cols = coefs.shape[:2]
    low = np.empty((rows, kr, cols, kc), np.float32)
    if coefs.ndim == 4:
        src = coefs[:, :, :kr, :kc].transpose(0, 2, 1, 3)
        if comp.qt is None:
            np.copyto(low, src, casting="unsafe")
        else:  # gather, convert and dequantize in one pass
            np.multiply(src, comp.qt[:kr, None, :kc].astype(np.float32), out=low, casting="unsafe")
        return low
    # zigzag channels: natural (u, v) is channel _ZIGZAG_POS[u, v], if it was kept
    kept = coefs.shape[-1]
    low.fill(0.0)
    for u in range(kr):
        pos = _ZIGZAG_POS[u, :kc]
        have = int((pos < kept).sum())
        low[:, u, :, :have] = coefs[:, :, pos[:have]]
    if comp.qt is not None:
        low *= comp.qt[:kr, None, :kc].astype(np.float32)
    return low


def _check_ratio(ratio: tuple[int, int], sampling: object) -> tuple[int, int]:
    """Chroma must cover 1, 2 or 4 luma blocks per axis (what JPEG encoders write)."""
    if ratio[0] not in (1, 2, 4) or ratio[1] not in (1, 2, 4):
        raise ItemError("unsupported", f"sampling {sampling}: chroma ratio {ratio} per axis")
    return ratio


def _from_jpeg_dct(dct: JpegDCT) -> tuple[list[_Component], int, int]:
    ratio = _check_ratio(dct.chroma_ratio, dct.sampling)
    comps = [_Component(dct.y, dct.qt[0], (1, 1))]
    if not dct.grayscale:
        comps += [_Component(c, dct.qt[i], ratio) for i, c in ((1, dct.cb), (2, dct.cr))]
    return comps, dct.height, dct.width


def _from_fields(record: Mapping[str, Any], max_pixels: int) -> tuple[list[_Component], int, int]:
    """Components from ``jpeg.dct``'s fields, checked against the image size and sampling."""
    missing = [f for f in DCT_FIELDS if f not in record]
    if missing:
        raise ItemError("invalid", f"the record lacks the DCT fields {missing}")
    try:
        arrays = {f: np.asarray(record[f]) for f in DCT_FIELDS}
    except (ValueError, TypeError) as exc:  # ragged or unconvertible values
        raise ItemError("invalid", f"a DCT field is not an array: {exc}") from None
    size, sampling, qt = arrays["jpeg_size"], arrays["jpeg_sampling"], arrays["dct_qt"]
    for name, value in (("jpeg_size", size), ("jpeg_sampling", sampling), ("dct_qt", qt)):
        if value.dtype.kind not in "iu":
            raise ItemError("invalid", f"{name} must hold integers; got dtype {value.dtype}")
    if size.shape != (2,) or size.min() < 1:
        raise ItemError("invalid", f"jpeg_size must be 2 positive ints; got {size!r}")
    H, W = int(size[0]), int(size[1])
    _check_pixels(H, W, max_pixels)
    gray = arrays["dct_cb"].size == 0 and arrays["dct_cr"].size == 0
    n = 1 if gray else 3
    if qt.shape != (n, 8, 8) or sampling.shape != (n, 2) or sampling.min() < 1:
        raise ItemError(
            "invalid",
            f"dct_qt {qt.shape} and jpeg_sampling {sampling.shape} do not fit {n} components",
        )
    vmax, hmax = int(sampling[:, 1].max()), int(sampling[:, 0].max())
    comps = []
    for i, name in enumerate(("dct_y", "dct_cb", "dct_cr")[:n]):
        coefs = arrays[name]
        if coefs.dtype.kind == "f":
            if not np.isfinite(coefs).all():
                raise ItemError("nonfinite", f"{name} holds NaN or infinite coefficients")
            if coefs.size and float(np.abs(coefs).max()) > MAX_COEFFICIENT:
                raise ItemError("invalid", f"{name} holds coefficients beyond {MAX_COEFFICIENT:g}")
            table = None  # dequantized by jpeg.dct
        elif coefs.dtype.kind in "iu":
            table = qt[i]
        else:
            raise ItemError("invalid", f"{name} must be numeric; got dtype {coefs.dtype}")
        tail_ok = coefs.shape[2:] == (8, 8) or (coefs.ndim == 3 and 1 <= coefs.shape[2] <= 64)
        if not tail_ok:
            raise ItemError("invalid", f"{name} must be (rows, cols, 8, 8) or (rows, cols, K)")
        h_i, v_i = int(sampling[i, 0]), int(sampling[i, 1])
        if vmax % v_i or hmax % h_i:
            raise ItemError("unsupported", f"sampling {sampling.tolist()} is not integral")
        ratio = _check_ratio((vmax // v_i, hmax // h_i), sampling.tolist())
        if i == 0 and ratio != (1, 1):
            raise ItemError("unsupported", f"luma is subsampled: sampling {sampling.tolist()}")
        own = (_ceil_div(_ceil_div(H * v_i, vmax), 8), _ceil_div(_ceil_div(W * h_i, hmax), 8))
        luma = (_ceil_div(H, 8), _ceil_div(W, 8))
        if coefs.shape[:2] == own:
            pass
        elif coefs.shape[:2] == luma and i > 0:  # replicated onto the luma grid: undo it
            coefs = coefs[:: ratio[0], :: ratio[1]]
        else:
            raise ItemError(
                "invalid",
                f"{name} has a {coefs.shape[:2]} block grid; a {H}x{W} image with sampling "
                f"{sampling.tolist()} has {own}",
            )
        comps.append(_Component(coefs, table, ratio))
    return comps, H, W


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)

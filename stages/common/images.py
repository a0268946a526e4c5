"""Decoding untrusted images, shared by ``image.resize`` and ``represent.resize``.

:func:`open_image` opens an image with Pillow and turns every decoding problem into an
:class:`~datapipe.errors.ItemError` (declared sizes refused before any pixel is decoded).
:func:`decode_image` decodes at the smallest DCT scale that still covers a target: JPEGs
through the system libturbojpeg (:mod:`~datapipe.stages.common.libturbojpeg`), at the scale
Pillow's ``draft`` would pick, to the same pixels, and with libjpeg's warnings about corrupt
data, which Pillow drops. Other formats, and the JPEG kinds the header parser leaves out
(CMYK, RGB-coded, arithmetic-coded, 12-bit), decode with Pillow.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from datapipe.errors import ItemError
from datapipe.stages.common.jpeg_header import parse_header
from datapipe.stages.common.libturbojpeg import (
    TurboJPEGError,
    TurboJPEGUnavailable,
    decompress,
)

ALLOWED_FORMATS = ["JPEG", "PNG", "WEBP", "BMP"]
#: libjpeg's warning for data that ends before the image does (JWRN_JPEG_EOF)
_EOF_WARNING = "Premature end of JPEG file"
logger = logging.getLogger(__name__)
_fallback_logged = False


Source = str | os.PathLike[str] | bytes | bytearray | memoryview


@contextlib.contextmanager
def open_image(source: Source, max_pixels: int) -> Iterator[Image.Image]:
    """Open an image with Pillow; every decoding problem in the block becomes an ItemError.

    Refuses declared sizes above ``max_pixels`` before any pixel is decoded (``decode_bomb``),
    formats outside ``ALLOWED_FORMATS`` (``unsupported``), and maps truncated or corrupt data
    (``truncated``, ``corrupt``), also when the error comes from work done on the image inside
    the ``with`` block. A missing or unreadable file propagates (the ``io`` class).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ItemError("empty", "zero bytes")
        handle: str | io.BytesIO = io.BytesIO(bytes(source))
    else:
        handle = os.fspath(source)
        if os.path.isfile(handle) and os.path.getsize(handle) == 0:
            raise ItemError("empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(handle, formats=ALLOWED_FORMATS) as img:
                w, h = img.size
                if w < 1 or h < 1 or w * h > max_pixels:
                    raise ItemError(
                        "decode_bomb", f"declared size {w}x{h} exceeds {max_pixels} pixels"
                    )
                yield img
    except (ItemError, FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ItemError("decode_bomb", str(exc)) from None
    except UnidentifiedImageError:
        raise ItemError("unsupported", f"not an image in {ALLOWED_FORMATS}") from None
    except (OSError, EOFError) as exc:
        text = str(exc)
        kind = "truncated" if "truncated" in text or isinstance(exc, EOFError) else "corrupt"
        raise ItemError(kind, f"cannot decode image: {text}") from None
    except (SyntaxError, ValueError) as exc:
        raise ItemError("corrupt", f"cannot decode image: {exc}") from None


@dataclass(frozen=True)
class Decoded:
    """An image decoded for resizing.

    ``image`` is loaded: RGB or L from libjpeg-turbo, any Pillow mode otherwise. ``scale`` is
    source pixels per decoded pixel (2, 4 or 8 for a DCT-scaled JPEG, else 1); ``size`` the
    source's (width, height); ``warning`` libjpeg's first warning (None when clean)."""

    image: Image.Image
    scale: int
    size: tuple[int, int]
    warning: str | None = None

    @property
    def damage(self) -> int:
        """1 when libjpeg decoded around corrupt data, else 0 (the ``image_damage`` field)."""
        return 0 if self.warning is None else 1


#: (width, height) of the source -> the smallest (width, height) a reduced decode must cover
Cover = Callable[[int, int], tuple[int, int]]


def draft_scale(width: int, height: int, cover: tuple[int, int]) -> int:
    """The DCT scale denominator Pillow's ``draft`` picks: the largest of 8, 4, 2, 1 that
    still covers ``cover`` (1 for images under 8 pixels a side; see ``decompress``)."""
    ratio = min(width // max(1, cover[0]), height // max(1, cover[1]))
    if max(width, height) < 8:
        return 1
    return next((s for s in (8, 4, 2) if ratio >= s), 1)


def decode_image(
    source: Source, cover: Cover, *, max_pixels: int = 50_000_000, strict: bool = False
) -> Decoded:
    """Decode ``source`` (a path or the encoded bytes) at the smallest DCT scale that still
    covers ``cover(width, height)`` (JPEG; other formats decode in full).

    A JPEG decodes once, through libturbojpeg, with libjpeg's warnings: damaged data is kept
    as libjpeg decodes it and reported in ``warning``, or is an ItemError ``corrupt`` with
    ``strict``. (libjpeg sees damage only where the data stops fitting the image: garbage
    that decodes as valid codes and ends where the scan ends goes unseen, as in jpeg.dct.)
    The header is parsed and checked first (:mod:`.jpeg_header`): declared sizes over
    ``max_pixels``, or more than the data of a sequential file can hold, are ``decode_bomb``
    before anything is allocated; a file without its EOI marker is ``truncated``. Other
    errors as :func:`open_image`; a missing file propagates.
    """
    data = _jpeg_bytes(source)
    if data is not None:
        decoded = _decode_jpeg(data, cover, max_pixels, strict)
        if decoded is not None:
            return decoded
        source = data  # a kind of JPEG the header parser leaves to Pillow
    with open_image(source, max_pixels) as img:
        width, height = img.size
        drafted = img.draft("RGB", cover(width, height))  # JPEG: a reduced DCT scale
        scale = round(width / drafted[1][2]) if drafted is not None else 1
        img.load()
    return Decoded(img, scale, (width, height))


def _jpeg_bytes(source: Source) -> bytes | None:
    """The data of ``source`` when it starts as a JPEG does (what Pillow checks), else None."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return data if data[:3] == b"\xff\xd8\xff" else None
    with open(source, "rb") as fh:
        head = fh.read(3)
        if not head:
            raise ItemError("empty", "zero-byte file")
        return head + fh.read() if head == b"\xff\xd8\xff" else None


def _decode_jpeg(data: bytes, cover: Cover, max_pixels: int, strict: bool) -> Decoded | None:
    """libturbojpeg's decode, or None for what it leaves to Pillow."""
    try:
        header = parse_header(data, max_pixels)
    except ItemError as exc:
        if exc.error_class == "unsupported":  # CMYK, RGB-coded, arithmetic, 12-bit, ...
            return None
        raise
    if not header.has_eoi:
        raise ItemError("truncated", "the JPEG data ends before its EOI marker")
    if not header.progressive and len(data) * 8 < 2 * sum(r * c for r, c in header.grids):
        # every block of a sequential file costs at least a DC code and an EOB code
        raise ItemError(
            "decode_bomb",
            f"declared size {header.width}x{header.height} needs more data than the "
            f"{len(data)} bytes of the file",
        )
    size = (header.width, header.height)
    scale = draft_scale(*size, cover(*size))
    gray = len(header.components) == 1
    try:
        pixels, warning = decompress(data, *size, scale, gray=gray, strict=strict)
    except TurboJPEGUnavailable:
        if strict:
            raise
        _log_fallback()
        return None
    except TurboJPEGError as exc:
        if _EOF_WARNING in exc.message:
            raise ItemError("truncated", f"cannot decode the JPEG: {exc.message}") from None
        if "more than 500 scans" in exc.message:
            raise ItemError("decode_bomb", f"cannot decode the JPEG: {exc.message}") from None
        if exc.warning:
            raise ItemError("corrupt", f"damaged JPEG refused (strict): {exc.message}") from None
        raise ItemError("corrupt", f"cannot decode the JPEG: {exc.message}") from None
    if warning is not None and _EOF_WARNING in warning:
        raise ItemError("truncated", f"cannot decode the JPEG: {warning}")
    image = Image.fromarray(pixels[..., 0] if gray else pixels)
    return Decoded(image, scale, size, warning)


def _log_fallback() -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        logger.warning("libturbojpeg not found: JPEGs decode with Pillow, damage goes unseen")

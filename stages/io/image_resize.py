"""``image.resize``: decode an image and resize it to a fixed size.

The decoding is :func:`~datapipe.stages.common.images.decode_image`: JPEGs through the system
libturbojpeg at the DCT scale Pillow's ``draft`` would pick (same pixels, with libjpeg's
warnings about corrupt data, which Pillow drops); other formats with Pillow.
"""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field as PField

from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record
from datapipe.stages.common.images import Decoded, Source, decode_image


class ImageResizeParams(Params):
    size: int = PField(224, ge=1, le=8192, description="Output side length (square).")
    mode: Literal["crop", "stretch"] = PField(
        "crop",
        description="'crop': shorter side to size, then centre crop; 'stretch': resize both.",
    )
    max_pixels: int = PField(50_000_000, ge=1, description="Refuse larger declared images.")
    strict: bool = PField(False, description="Any libjpeg warning (corrupt data) is an error.")


def resize_decoded(decoded: Decoded, size: int, mode: str = "crop") -> np.ndarray:
    """``decoded`` as RGB uint8 (size, size, 3): resized (bicubic) so the shorter side is
    ``size``, then centre-cropped (``crop``), or resized to the square (``stretch``)."""
    target = _target(*decoded.size, size, mode)
    img = decoded.image if decoded.image.mode == "RGB" else decoded.image.convert("RGB")
    arr = np.asarray(img.resize(target, Image.Resampling.BICUBIC))
    if mode == "crop":
        top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
        arr = arr[top : top + size, left : left + size]
    return np.ascontiguousarray(arr)


def _target(w: int, h: int, size: int, mode: str) -> tuple[int, int]:
    if mode == "crop":
        scale = size / min(w, h)
        return max(size, round(w * scale)), max(size, round(h * scale))
    return size, size


def decode_resize(
    path: Source,
    size: int,
    *,
    mode: str = "crop",
    max_pixels: int = 50_000_000,
    strict: bool = False,
) -> np.ndarray:
    """Decode an image (a path, or the encoded bytes) and resize it to a ``size`` square,
    refusing bombs and truncated files (and damaged JPEGs with ``strict``).

    ``mode``: ``"crop"`` scales the shorter side to ``size`` and keeps the centre,
    ``"stretch"`` scales each side to ``size``.

    Returns
    -------
    numpy.ndarray
        uint8 ``(size, size, 3)``, RGB.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (64, 32), (200, 30, 30)).save(buf, "PNG")
    >>> image = decode_resize(buf.getvalue(), 16)
    >>> image.shape, image[0, 0].tolist()
    ((16, 16, 3), [200, 30, 30])
    """
    cover = functools.partial(_target, size=size, mode=mode)
    decoded = decode_image(path, cover, max_pixels=max_pixels, strict=strict)
    return resize_decoded(decoded, size, mode)


class ImageResize(Map):
    """Decode a JPEG/PNG/WebP/BMP and resize to ``size`` x ``size`` RGB uint8.

    JPEGs decode at a reduced DCT scale when enough (as Pillow's ``draft``). ``image_damage``
    is 1 when libjpeg decoded around corrupt data (0 when clean; the engine counts such items
    as damaged); with ``strict`` such a JPEG is an error row (``corrupt``) instead.
    """

    name = "image.resize"
    description = "Decode an image (JPEG DCT scaling) and resize it to a square."
    Params = ImageResizeParams
    CONSUMES = (Field("path", "str", ""),)
    isolate = True

    def produces(self) -> tuple[Field, ...]:
        s = self.params.size
        return (
            Field("image", "uint8", f"{s} {s} 3", "RGB pixels"),
            Field("image_damage", "int", "", "1 when libjpeg met corrupt data (0 when clean)"),
        )

    def process(self, record: Record, ctx: Context) -> Record:
        path = record["path"]
        if record.get("size") == 0:
            raise ItemError("empty", "zero-byte file")
        p = self.params
        cover = functools.partial(_target, size=p.size, mode=p.mode)
        decoded = decode_image(path, cover, max_pixels=p.max_pixels, strict=p.strict)
        return {"image": resize_decoded(decoded, p.size, p.mode), "image_damage": decoded.damage}

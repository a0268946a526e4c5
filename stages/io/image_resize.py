"""``image.resize``: decode an image with Pillow and resize it to a fixed size."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field as PField

from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record

ALLOWED_FORMATS = ["JPEG", "PNG", "WEBP", "BMP"]


class ImageResizeParams(Params):
    size: int = PField(224, ge=1, le=8192, description="Output side length (square).")
    mode: Literal["crop", "stretch"] = PField(
        "crop",
        description="'crop': shorter side to size, then centre crop; 'stretch': resize both.",
    )
    max_pixels: int = PField(50_000_000, ge=1, description="Refuse larger declared images.")


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


def decode_resize(
    path: str, size: int, mode: str = "crop", max_pixels: int = 50_000_000
) -> np.ndarray:
    """Decode ``path`` to RGB uint8 (size, size, 3), refusing bombs and truncated files."""
    with open_image(path, max_pixels) as img:
        w, h = img.size
        if mode == "crop":
            scale = size / min(w, h)
            target = (max(size, round(w * scale)), max(size, round(h * scale)))
        else:
            target = (size, size)
        img.draft("RGB", target)  # JPEG: decode at 1/2, 1/4 or 1/8 scale when enough
        img = img.convert("RGB").resize(target, Image.Resampling.BICUBIC)
    arr = np.asarray(img)
    if mode == "crop":
        top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
        arr = arr[top : top + size, left : left + size]
    return np.ascontiguousarray(arr)


class ImageResize(Map):
    """Decode a JPEG/PNG/WebP/BMP with Pillow and resize to ``size`` x ``size`` RGB uint8."""

    name = "image.resize"
    description = "Decode an image (Pillow, JPEG draft scaling) and resize it to a square."
    Params = ImageResizeParams
    CONSUMES = (Field("path", "str", ""),)
    isolate = True

    def produces(self) -> tuple[Field, ...]:
        s = self.params.size
        return (Field("image", "uint8", f"{s} {s} 3", "RGB pixels"),)

    def process(self, record: Record, ctx: Context) -> Record:
        path = record["path"]
        if record.get("size") == 0:
            raise ItemError("empty", "zero-byte file")
        p = self.params
        return {"image": decode_resize(path, p.size, p.mode, p.max_pixels)}

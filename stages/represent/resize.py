"""``represent.resize``: progressive resizing, with small sizes decoded straight from the JPEG.

libjpeg scales the inverse DCT: a JPEG decodes at 1/2, 1/4 or 1/8 of its size for a fraction
of the cost of a full decode (Pillow's ``draft`` mode). :func:`decode_jpeg_reduced` decodes at
the smallest of those scales that still covers the target (through libturbojpeg, which also
reports corrupt data), then finishes to the exact size with an antialiased Pillow filter. The
stage takes its size from a :class:`~datapipe.stages.represent.schedule.ResizeSchedule` and
the epoch (``ctx.epoch``), so ``datapipe.stream.from_pipeline(...).set_epoch(e)`` switches
sizes between epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field as PField
from pydantic import model_validator

from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record
from datapipe.stages.common.images import Source, decode_image
from datapipe.stages.represent.dct_decode import decode_dct_reduced
from datapipe.stages.represent.resample import (
    Resample,
    check_options,
    finish_resize,
    plan_resize,
)
from datapipe.stages.represent.schedule import MAX_SIDE, ResizeSchedule


def decode_jpeg_reduced(
    source: Source,
    size: int | Sequence[int],
    *,
    mode: Literal["crop", "stretch"] = "crop",
    resample: Resample = "bicubic",
    allow_upscale: bool = False,
    max_pixels: int = 50_000_000,
    strict: bool = False,
) -> np.ndarray:
    """Decode an image to exactly ``size``, JPEGs straight at a reduced DCT scale.

    A JPEG decodes at the smallest of 1/8, 1/4, 1/2 (or 1) of its size that still covers the
    target (libjpeg's DCT scaling, through libturbojpeg: the scale and the pixels of Pillow's
    ``draft``); the finishing resize to the exact size runs on that small image. Other formats
    (PNG, WebP, BMP) are decoded in full, then resized.

    Parameters
    ----------
    source : a path, or the encoded bytes.
    size : the output side (square), or ``(height, width)``.
    mode : ``"crop"``: scale the shorter side to fit, then keep the centre (one resize over
        the centre box, no wasted pixels); ``"stretch"``: scale each side to fit.
    resample : the Pillow filter of the finishing resize (antialiased when shrinking).
    allow_upscale : the target may be larger than the source (refused by default).
    max_pixels : refuse images that declare more pixels, before decoding.
    strict : a JPEG libjpeg reports corrupt data in is an error (by default it is decoded
        around, as libjpeg does; :func:`decode_reduced` says so).

    Returns
    -------
    numpy.ndarray
        uint8 ``(height, width, 3)``, RGB.

    Raises
    ------
    ValueError
        a bad ``size`` (0, negative, not an int), ``mode`` or ``resample``.
    ItemError
        ``empty``, ``unsupported`` (not an image; or an upscale when ``allow_upscale`` is
        off), ``decode_bomb``, ``truncated``, ``corrupt``.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (640, 480), (200, 30, 30)).save(buf, "JPEG")
    >>> decode_jpeg_reduced(buf.getvalue(), (56, 112)).shape
    (56, 112, 3)
    """
    return decode_reduced(
        source,
        size,
        mode=mode,
        resample=resample,
        allow_upscale=allow_upscale,
        max_pixels=max_pixels,
        strict=strict,
    )[0]


def decode_reduced(
    source: Source,
    size: int | Sequence[int],
    *,
    mode: Literal["crop", "stretch"] = "crop",
    resample: Resample = "bicubic",
    allow_upscale: bool = False,
    max_pixels: int = 50_000_000,
    strict: bool = False,
) -> tuple[np.ndarray, int]:
    """:func:`decode_jpeg_reduced`, and the damage: 1 when libjpeg decoded around corrupt
    data, else 0."""
    h, w = check_options(size, mode, resample, "decode_jpeg_reduced")

    def cover(W: int, H: int) -> tuple[int, int]:
        return plan_resize(W, H, h, w, mode, allow_upscale)[1]

    decoded = decode_image(source, cover, max_pixels=max_pixels, strict=strict)
    box, _ = plan_resize(*decoded.size, h, w, mode, allow_upscale)
    img = decoded.image
    if img.mode not in ("RGB", "YCbCr", "L"):
        img = img.convert("RGB")  # palette, alpha, CMYK: to RGB before resampling
    return finish_resize(img, box, float(decoded.scale), h, w, resample), decoded.damage


Side = Annotated[int, PField(ge=1, le=MAX_SIDE)]
DAMAGE = "1 when libjpeg met corrupt data (0 when clean)"


class ResizeParams(Params):
    size: Side | tuple[Side, Side] | None = PField(
        None, description="A fixed output size: side, or [height, width]. Or use 'schedule'."
    )
    schedule: ResizeSchedule | None = PField(
        None,
        description=(
            "Size per epoch: {start_size, end_size, start_epoch, end_epoch, final_size, "
            "final_epoch, multiple}."
        ),
    )
    mode: Literal["crop", "stretch"] = PField(
        "crop", description="'crop': shorter side to fit, keep the centre; 'stretch': both."
    )
    resample: Resample = PField("bicubic", description="Pillow filter of the finishing resize.")
    allow_upscale: bool = PField(False, description="Allow targets larger than the source.")
    max_pixels: int = PField(50_000_000, ge=1, description="Refuse larger declared images.")
    strict: bool = PField(
        False, description="input 'path': any libjpeg warning (corrupt data) is an error."
    )
    input: Literal["path", "dct"] = PField(
        "path",
        description=(
            "'path': decode the image file; 'dct': the coefficients of an upstream jpeg.dct "
            "(the low frequencies of the target scale, inverse transformed)."
        ),
    )

    @model_validator(mode="after")
    def _one_size(self) -> ResizeParams:
        if (self.size is None) == (self.schedule is None):
            raise ValueError("give exactly one of 'size' or 'schedule'")
        return self


class ProgressiveResize(Map):
    """Decode an image to the size of the epoch, JPEGs at a reduced DCT scale.

    ``input: path`` (default) decodes the file of ``path``; ``input: dct`` consumes the fields
    of an upstream ``jpeg.dct`` (any layout) and keeps only the low-frequency coefficients of
    the target scale (:func:`~datapipe.stages.represent.dct_decode.decode_dct_reduced`).

    With ``schedule`` the size follows the epoch the stage runs in (``ctx.epoch``: the
    streaming loader's ``set_epoch``, or ``datapipe run``'s epoch), so the output shape is
    declared symbolically (``H W 3``); with a fixed ``size`` it is declared exactly.

    With ``input: path``, ``image_damage`` is 1 when libjpeg decoded around corrupt data (0
    when clean; the engine counts such items as damaged); with ``strict`` such a JPEG is an
    error row (``corrupt``) instead.
    """

    name = "represent.resize"
    description = "Decode an image to the size of the epoch (JPEG DCT-domain downscaling)."
    Params = ResizeParams
    EXAMPLE_PARAMS = {
        "schedule": {
            "start_size": 64,
            "end_size": 128,
            "start_epoch": 0,
            "end_epoch": 4,
            "final_size": 160,
            "final_epoch": 6,
            "multiple": 16,
        }
    }
    CONSUMES = (Field("path", "str", ""),)
    isolate = True
    epoch_dependent = True

    def consumes(self) -> tuple[Field, ...]:
        if self.params.input == "path":
            return self.CONSUMES
        coefs = "int16|float32|float64"
        return (
            Field("dct_y", coefs, "*", "luma DCT coefficients"),
            Field("dct_cb", coefs, "*", "Cb DCT coefficients"),
            Field("dct_cr", coefs, "*", "Cr DCT coefficients"),
            Field("dct_qt", "uint16", "C 8 8", "quantization tables"),
            Field("jpeg_size", "int32", "2", "height, width"),
            Field("jpeg_sampling", "uint8", "C 2", "sampling factors"),
        )

    def produces(self) -> tuple[Field, ...]:
        p = self.params
        if p.size is None:
            image = Field("image", "uint8", "H W 3", "RGB pixels, size by epoch")
        else:
            h, w = (p.size, p.size) if isinstance(p.size, int) else p.size
            image = Field("image", "uint8", f"{h} {w} 3", "RGB pixels")
        if p.input == "dct":  # jpeg.dct upstream reports the damage (jpeg_damage)
            return (image,)
        return (image, Field("image_damage", "int", "", DAMAGE))

    def size_at(self, epoch: int) -> tuple[int, int]:
        """(height, width) of the images of ``epoch``."""
        p = self.params
        if p.schedule is not None:
            side = p.schedule.size(epoch)
            return side, side
        return (p.size, p.size) if isinstance(p.size, int) else p.size  # type: ignore[return-value]

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        options: dict[str, Any] = {
            "mode": p.mode,
            "resample": p.resample,
            "allow_upscale": p.allow_upscale,
            "max_pixels": p.max_pixels,
        }
        size = self.size_at(ctx.epoch)
        if p.input == "dct":
            return {"image": decode_dct_reduced(record, size, **options)}
        if record.get("size") == 0:
            raise ItemError("empty", "zero-byte file")
        image, damage = decode_reduced(Path(record["path"]), size, strict=p.strict, **options)
        return {"image": image, "image_damage": damage}

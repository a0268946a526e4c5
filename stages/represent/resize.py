"""``represent.resize``: progressive resizing, with small sizes decoded straight from the JPEG.

libjpeg scales the inverse DCT: a JPEG decodes at 1/2, 1/4 or 1/8 of its size for a fraction
of the cost of a full decode (Pillow's ``draft`` mode). :func:`decode_jpeg_reduced` decodes at
the smallest of those scales that still covers the target, then finishes to the exact size
with an antialiased Pillow filter. The stage takes its size from a
:class:`~datapipe.stages.represent.schedule.ResizeSchedule` and the epoch (``ctx.epoch``), so
``datapipe.stream.from_pipeline(...).set_epoch(e)`` switches sizes between epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from PIL import Image
from pydantic import Field as PField
from pydantic import model_validator

from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record
from datapipe.stages.io.image_resize import Source, open_image
from datapipe.stages.represent.schedule import MAX_SIDE, ResizeSchedule

Resample = Literal["bilinear", "bicubic", "lanczos", "box", "hamming"]
_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _target(size: int | Sequence[int], where: str) -> tuple[int, int]:
    """``size`` as (height, width), checked."""
    if isinstance(size, (int, np.integer)):
        hw: tuple[object, ...] = (size, size)
    else:
        hw = tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(hw) != 2 or not all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE
        for v in hw
    ):
        raise ValueError(
            f"The 'size' parameter of {where} must be an int or (height, width) of ints in "
            f"[1, {MAX_SIDE}]. Got {size!r} instead."
        )
    return int(hw[0]), int(hw[1])


def decode_jpeg_reduced(
    source: Source,
    size: int | Sequence[int],
    *,
    mode: Literal["crop", "stretch"] = "crop",
    resample: Resample = "bicubic",
    allow_upscale: bool = False,
    max_pixels: int = 50_000_000,
) -> np.ndarray:
    """Decode an image to exactly ``size``, JPEGs straight at a reduced DCT scale.

    A JPEG decodes at the smallest of 1/8, 1/4, 1/2 (or 1) of its size that still covers the
    target (libjpeg's DCT scaling, Pillow's ``draft``), in YCbCr; the finishing resize to the
    exact size runs on that small image, then converts to RGB. Other formats (PNG, WebP, BMP)
    are decoded in full, then resized.

    Parameters
    ----------
    source : a path, or the encoded bytes.
    size : the output side (square), or ``(height, width)``.
    mode : ``"crop"``: scale the shorter side to fit, then keep the centre (one resize over
        the centre box, no wasted pixels); ``"stretch"``: scale each side to fit.
    resample : the Pillow filter of the finishing resize (antialiased when shrinking).
    allow_upscale : the target may be larger than the source (refused by default).
    max_pixels : refuse images that declare more pixels, before decoding.

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
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (640, 480), (200, 30, 30)).save(buf, "JPEG")
    >>> decode_jpeg_reduced(buf.getvalue(), (56, 112)).shape
    (56, 112, 3)
    """
    h, w = _target(size, "decode_jpeg_reduced")
    if mode not in ("crop", "stretch"):
        raise ValueError(
            f"The 'mode' parameter of decode_jpeg_reduced must be 'crop' or 'stretch'. "
            f"Got {mode!r} instead."
        )
    if resample not in _FILTERS:
        raise ValueError(
            f"The 'resample' parameter of decode_jpeg_reduced must be one of "
            f"{sorted(_FILTERS)}. Got {resample!r} instead."
        )
    with open_image(source, max_pixels) as img:
        W, H = img.size
        if mode == "crop":
            s = max(w / W, h / H)  # source pixels -> target pixels
            bw, bh = w / s, h / s
            box = ((W - bw) / 2, (H - bh) / 2, (W + bw) / 2, (H + bh) / 2)
            upscale = s > 1
            request = (max(1, int(np.ceil(W * s))), max(1, int(np.ceil(H * s))))
        else:
            box = (0.0, 0.0, float(W), float(H))
            upscale = w > W or h > H
            request = (w, h)
        if upscale and not allow_upscale:
            raise ItemError(
                "unsupported",
                f"the target {h}x{w} needs the {H}x{W} source upscaled "
                "(set allow_upscale=True to allow it)",
            )
        # JPEG: libjpeg scales the IDCT by 1/2, 1/4 or 1/8 while the result still covers
        # `request`; YCbCr output (unless the file is RGB-coded, Adobe transform 0), so the
        # colour conversion runs on the final pixels only
        ycc = img.mode == "RGB" and img.info.get("adobe_transform", 1) != 0
        drafted = img.draft("YCbCr" if ycc else img.mode, request)
        if drafted is not None:
            scale = W / drafted[1][2]
            box = (box[0] / scale, box[1] / scale, box[2] / scale, box[3] / scale)
        rw, rh = img.size  # the box may stray past the image by a rounding error
        box = (max(0.0, box[0]), max(0.0, box[1]), min(rw, box[2]), min(rh, box[3]))
        if img.mode not in ("RGB", "YCbCr", "L"):
            img = img.convert("RGB")  # palette, alpha, CMYK: to RGB before resampling
        out = img.resize((w, h), _FILTERS[resample], box=box)
        arr = np.asarray(out.convert("RGB") if out.mode != "RGB" else out)
    if arr.shape != (h, w, 3):  # never expected: Pillow returns what was asked
        raise ItemError("corrupt", f"decoded to {arr.shape}, expected {(h, w, 3)}")
    return arr


Side = Annotated[int, PField(ge=1, le=MAX_SIDE)]


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

    @model_validator(mode="after")
    def _one_size(self) -> ResizeParams:
        if (self.size is None) == (self.schedule is None):
            raise ValueError("give exactly one of 'size' or 'schedule'")
        return self


class ProgressiveResize(Map):
    """Decode an image to the size of the epoch, JPEGs at a reduced DCT scale.

    With ``schedule`` the size follows the epoch the stage runs in (``ctx.epoch``: the
    streaming loader's ``set_epoch``, or ``datapipe run``'s epoch), so the output shape is
    declared symbolically (``H W 3``); with a fixed ``size`` it is declared exactly.
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

    def produces(self) -> tuple[Field, ...]:
        p = self.params
        if p.size is None:
            return (Field("image", "uint8", "H W 3", "RGB pixels, size by epoch"),)
        h, w = (p.size, p.size) if isinstance(p.size, int) else p.size
        return (Field("image", "uint8", f"{h} {w} 3", "RGB pixels"),)

    def size_at(self, epoch: int) -> tuple[int, int]:
        """(height, width) of the images of ``epoch``."""
        p = self.params
        if p.schedule is not None:
            side = p.schedule.size(epoch)
            return side, side
        return (p.size, p.size) if isinstance(p.size, int) else p.size  # type: ignore[return-value]

    def process(self, record: Record, ctx: Context) -> Record:
        if record.get("size") == 0:
            raise ItemError("empty", "zero-byte file")
        p = self.params
        image = decode_jpeg_reduced(
            Path(record["path"]),
            self.size_at(ctx.epoch),
            mode=p.mode,
            resample=p.resample,
            allow_upscale=p.allow_upscale,
            max_pixels=p.max_pixels,
        )
        return {"image": image}

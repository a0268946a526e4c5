"""The resize plan shared by the reduced decoders: target checks, the crop box, the finish.

Both :func:`~datapipe.stages.represent.resize.decode_jpeg_reduced` (from JPEG bytes) and
:func:`~datapipe.stages.represent.dct_decode.decode_dct_reduced` (from DCT coefficients) take
the same options, cut the same source box and finish with the same single Pillow resize, so
their outputs agree to within the reduced decoders' own differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image

from datapipe.errors import ItemError
from datapipe.stages.represent.schedule import MAX_SIDE

Resample = Literal["bilinear", "bicubic", "lanczos", "box", "hamming"]
FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def target_size(size: int | Sequence[int], where: str) -> tuple[int, int]:
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


def check_options(size: object, mode: object, resample: object, where: str) -> tuple[int, int]:
    """Check the options shared by the reduced decoders; ``size`` as (height, width)."""
    h, w = target_size(size, where)  # type: ignore[arg-type]
    if mode not in ("crop", "stretch"):
        raise ValueError(
            f"The 'mode' parameter of {where} must be 'crop' or 'stretch'. Got {mode!r} instead."
        )
    if resample not in FILTERS:
        raise ValueError(
            f"The 'resample' parameter of {where} must be one of {sorted(FILTERS)}. "
            f"Got {resample!r} instead."
        )
    return h, w


def plan_resize(
    W: int, H: int, h: int, w: int, mode: str, allow_upscale: bool
) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    """The source box (in pixels of the W x H source) that becomes the h x w target, and the
    smallest (width, height) a reduced decode must still cover. Raises ItemError for an
    upscale that is not allowed."""
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
    return box, request


def finish_resize(
    img: Image.Image,
    box: tuple[float, float, float, float],
    scale: float,
    h: int,
    w: int,
    resample: str,
) -> np.ndarray:
    """Resize the source ``box`` of ``img`` (decoded at 1/``scale`` of the source) to exactly
    h x w with one antialiased filter, then convert to RGB: uint8 (h, w, 3)."""
    box = (box[0] / scale, box[1] / scale, box[2] / scale, box[3] / scale)
    rw, rh = img.size  # the box may stray past the image by a rounding error
    box = (max(0.0, box[0]), max(0.0, box[1]), min(rw, box[2]), min(rh, box[3]))
    out = img.resize((w, h), FILTERS[resample], box=box)
    arr = np.asarray(out.convert("RGB") if out.mode != "RGB" else out)
    if arr.shape != (h, w, 3):  # never expected: Pillow returns what was asked
        raise ItemError("corrupt", f"decoded to {arr.shape}, expected {(h, w, 3)}")
    return arr

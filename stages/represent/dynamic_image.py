"""``represent.dynamic_image``: pool a clip into one image by approximate rank pooling.

Bilen et al., "Dynamic Image Networks for Action Recognition" (CVPR 2016): the dynamic image
``d = sum_t alpha_t psi_t`` ranks the frames in time, so a 2D CNN sees appearance and motion in
one image. The weights, their running-sum form and the one-pass pooler are in
:mod:`~datapipe.stages.represent.rank_pool`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
from pydantic import Field as PField
from pydantic import model_validator

from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record
from datapipe.stages.represent.rank_weights import Psi

Rescale = Literal["none", "minmax"]
FIELD_NAME = r"^[a-z][a-z0-9_]*$"
#: what the stage takes: decoded frames (uint8), motion-vector fields (int16 / float32), ...
FRAME_DTYPES = "uint8|int8|uint16|int16|int32|float16|float32|float64"


def rescale_minmax(
    images: np.ndarray, image_ndim: int, noise_floor: np.ndarray | float = 0.0
) -> np.ndarray:
    """Stretch each image (the last ``image_ndim`` axes) to 0..255 and round to uint8.

    One min and one max per image, over all its pixels and channels (the display rule of the
    reference code). An image whose range is within ``noise_floor`` (per image, or one for
    all) is constant, and maps to 0: a still clip pools to 0 up to rounding noise, which is
    not stretched into a picture.
    """
    lead = images.shape[: images.ndim - image_ndim]
    flat = images.reshape(int(np.prod(lead)), -1).astype(np.float64)
    lo = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - lo
    floor = np.broadcast_to(np.asarray(noise_floor, np.float64), span.shape[:1])[:, None]
    scale = np.divide(255.0, span, out=np.zeros_like(span), where=span > floor)
    out = np.rint((flat - lo) * scale).clip(0, 255).astype(np.uint8)
    return out.reshape(images.shape)


def dynamic_image(
    frames: np.ndarray | Iterable[np.ndarray],
    *,
    psi: Psi = "frame",
    window: int | None = None,
    stride: int | None = None,
    rescale: Rescale = "none",
) -> np.ndarray:
    """Approximate rank pooling of a clip (Bilen et al., CVPR 2016).

    ``d = sum_t alpha_t psi_t`` with ``alpha_t = 2(T - t + 1) - (T + 1)(H_T - H_{t-1})``.

    Parameters
    ----------
    frames : an array ``(T, H, W, C)`` (any frame shape: RGB frames, key frames, motion-vector
        fields ``(T, R, C, 2)``, ...), or any iterable of equal-shape frames, such as a
        generator over a decoder, with T unknown in advance. One pass either way: an array is
        read in chunks (integer frames are converted to float32 chunk by chunk, never as a
        whole), an iterable is pooled with running sums and never held.
    psi : ``"frame"``: pool the frames; ``"mean"``: pool the running means
        ``psi_t = (x_1 + ... + x_t) / t`` (the time-varying mean of the paper).
    window, stride : one image per window of ``window`` frames, windows starting every
        ``stride`` frames (default: ``window``, no overlap). Only full windows are pooled,
        except that a clip shorter than ``window`` gives one image of all its frames.
    rescale : ``"none"``: float32; ``"minmax"``: uint8, each image stretched to 0..255 by its
        own min and max (what a 2D CNN pre-trained on RGB images expects; a still clip, which
        pools to 0, gives 0).

    Returns
    -------
    numpy.ndarray
        float32 (or uint8) of the frame shape, or ``(N, *frame)`` with ``window``.

    Raises
    ------
    ItemError
        ``empty`` for T = 0, ``invalid`` for frames of different shapes or non-numbers,
        ``nonfinite`` for a frame with NaN or inf (its index in the message).

    Examples
    --------
    >>> from datapipe import ops
    >>> clip = np.stack([np.full((2, 2, 1), v, np.uint8) for v in (0, 10, 20)])
    >>> ops.pool_dynamic_image(clip)[..., 0]  # alpha = (-4/3, 2/3, 2/3)
    array([[20., 20.],
           [20., 20.]], dtype=float32)
    >>> ops.pool_dynamic_image(iter(clip), rescale="minmax").dtype
    dtype('uint8')
    """
    from datapipe.stages.represent.rank_pool import RankPooler  # numba, on first use

    if rescale not in ("none", "minmax"):
        raise ValueError(
            f"The 'rescale' parameter of dynamic_image must be 'none' or 'minmax'. Got {rescale!r}."
        )
    if not isinstance(frames, np.ndarray) and hasattr(frames, "__array__"):
        if getattr(frames, "ndim", 0) >= 2:  # a tensor: pooled in chunks like an array
            frames = np.asarray(frames)
    if isinstance(frames, np.ndarray):
        if frames.ndim < 2:
            raise ItemError("invalid", f"frames must be an array (T, *frame); got {frames.shape}")
        if len(frames) == 0:
            raise ItemError("empty", "no frames to pool (T = 0)")
        pooler = RankPooler(psi=psi, window=window, stride=stride, length=len(frames))
        pooler.extend(frames)
    else:
        pooler = RankPooler(psi=psi, window=window, stride=stride)
        for frame in frames:
            pooler.push(frame)
    out = pooler.result()
    if rescale == "minmax":
        out = rescale_minmax(out, out.ndim - (window is not None), pooler.noise_floor)
    return out


class DynamicImageParams(Params):
    field: str = PField(
        "frames",
        pattern=FIELD_NAME,
        description="The field to pool: frames (T H W C), e.g. frames, iframes, mv.",
    )
    output: str = PField("dynamic_image", pattern=FIELD_NAME, description="The field to write.")
    psi: Literal["frame", "mean"] = PField(
        "frame", description="'frame': pool the frames; 'mean': pool their running means."
    )
    window: int | None = PField(None, ge=1, description="Frames per window (None: whole clip).")
    stride: int | None = PField(None, ge=1, description="Frames between windows (default: window).")
    rescale: Rescale = PField(
        "none", description="'minmax': uint8, each image stretched to 0..255; 'none': float32."
    )

    @model_validator(mode="after")
    def _stride_needs_window(self) -> DynamicImageParams:
        if self.stride is not None and self.window is None:
            raise ValueError("'stride' needs 'window'")
        return self


class DynamicImage(Map):
    """Pool a clip's frames into a dynamic image (approximate rank pooling), or one per window.

    Consumes ``field`` (T H W C): RGB frames, the key frames of a selection stage (then t
    counts key frames), or motion-vector fields (T R C 2) for "motion dynamic images".
    Produces ``output``: float32 (H W C), uint8 with ``rescale: minmax``, (N H W C) with
    ``window``.
    """

    name = "represent.dynamic_image"
    description = "Pool a clip (frames, key frames or motion vectors) into a dynamic image."
    Params = DynamicImageParams
    EXAMPLE_PARAMS = {"field": "frames", "window": 8, "stride": 4, "rescale": "minmax"}

    def consumes(self) -> tuple[Field, ...]:
        return (Field(self.params.field, FRAME_DTYPES, "T H W C", "frames to pool"),)

    def produces(self) -> tuple[Field, ...]:
        p = self.params
        dtype = "uint8" if p.rescale == "minmax" else "float32"
        shape = "H W C" if p.window is None else "N H W C"
        return (Field(p.output, dtype, shape, "dynamic image(s)"),)

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        value: Any = record[p.field]
        if isinstance(value, np.ndarray) and value.ndim != 4:
            raise ItemError(
                "invalid", f"field {p.field!r}: frames (T, H, W, C) expected, got {value.shape}"
            )
        image = dynamic_image(value, psi=p.psi, window=p.window, stride=p.stride, rescale=p.rescale)
        return {p.output: image}

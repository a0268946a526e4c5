"""``video.motion_vectors``: the codec's motion vectors as a dense field on a block grid.

The reading (sign, magnitude, grid and frames of the field, FFmpeg's limitations) is
:func:`~datapipe.stages.common.motion_vectors.motion_vectors`; this stage runs it on each
video and stores the field as int16 quarter pixels (:func:`encode_mv`) or float32 pixels.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field as PField

from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record
from datapipe.stages.common.motion_vectors import Normalize, motion_vectors
from datapipe.stages.common.video_open import DEFAULT_MAX_PIXELS

#: int16 storage unit: quarter pixels (H.264's native precision), range +-8192 px.
MV_STORAGE_SCALE = 4


def encode_mv(mv: np.ndarray) -> np.ndarray:
    """Float pixels -> int16 quarter pixels (rounded, clipped to +-8192 px).

    Returns
    -------
    numpy.ndarray
        int16, the shape of ``mv``.

    Examples
    --------
    >>> encode_mv(np.array([1.25, -0.5, 3.1], np.float32)).tolist()
    [5, -2, 12]
    """
    q = np.rint(np.asarray(mv, dtype=np.float32) * MV_STORAGE_SCALE)
    return np.clip(q, -32768, 32767).astype(np.int16)


def decode_mv(q: np.ndarray) -> np.ndarray:
    """int16 quarter pixels -> float32 pixels (inverse of :func:`encode_mv`).

    Returns
    -------
    numpy.ndarray
        float32, the shape of ``q``.

    Examples
    --------
    >>> decode_mv(np.array([5, -2], np.int16)).tolist()
    [1.25, -0.5]
    """
    return np.asarray(q, dtype=np.float32) / MV_STORAGE_SCALE


class MotionVectorsParams(Params):
    block: Literal[4, 8, 16] = PField(16, description="Grid cell size in pixels.")
    dtype: Literal["int16", "float32"] = PField(
        "int16", description="'int16': quarter pixels (compact, see encode_mv); 'float32': px."
    )
    max_frames: int | None = PField(None, ge=1, description="Read at most this many frames.")
    strict: bool = PField(False, description="Damaged video is an error, not a count.")
    max_pixels: int = PField(DEFAULT_MAX_PIXELS, ge=1, description="Refuse larger frames.")
    normalize: Normalize = PField(
        "reference",
        description="'reference': vectors as coded (motion over their reference distance); "
        "'per_frame': divided by that distance in frames (pixels per frame).",
    )


class MotionVectorsStage(Map):
    """Codec motion vectors as a dense (T, rows, cols, 2) field; see
    :mod:`~datapipe.stages.common.motion_vectors`.

    Fields: ``mv`` (forward motion per ``block`` cell; int16 quarter pixels or float32
    pixels; over each vector's reference distance, or per frame with ``normalize:
    per_frame``), ``frame_types`` ('IPB...', one letter per frame), ``pts`` (int64, T),
    ``video_damage`` (frames concealed or lost; 0 for a clean file).
    """

    name = "video.motion_vectors"
    description = "Codec motion vectors (H.264/MPEG-4/MPEG-2) as a dense field on a block grid."
    Params = MotionVectorsParams
    CONSUMES = (Field("path", "str", ""),)
    EXAMPLE_PARAMS = {"block": 16}
    isolate = True

    def produces(self) -> tuple[Field, ...]:
        unit = "quarter pixels" if self.params.dtype == "int16" else "pixels"
        per = "per frame" if self.params.normalize == "per_frame" else "per reference distance"
        return (
            Field("mv", self.params.dtype, "T R C 2", f"forward motion (x, y), {unit} {per}"),
            Field("frame_types", "str", "", "'I'/'P'/'B' per frame, presentation order"),
            Field("pts", "int64", "T", "presentation timestamps (stream time base)"),
            Field("video_damage", "int", "", "frames concealed or lost (0: clean)"),
        )

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        result = motion_vectors(
            ctx.resolve(record["path"]),
            block=p.block,
            max_frames=p.max_frames,
            strict=p.strict,
            max_pixels=p.max_pixels,
            normalize=p.normalize,
        )
        mv = encode_mv(result.mv) if p.dtype == "int16" else result.mv
        return {
            "mv": mv,
            "frame_types": "".join(result.frame_types),
            "pts": result.pts,
            "video_damage": int(result.damaged),
        }

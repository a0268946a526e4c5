"""``video.coviar``: the CoViAR representation (Wu et al., "Compressed Video Action
Recognition", CVPR 2018): per GOP the I-frame, and for every frame the motion and residual
*accumulated* back to that I-frame.

Definitions (pixel positions p = (x, y), frames in presentation order):

- A GOP starts at every I-frame (and at the first frame). Anchors are I- and P-frames.
- Reference rule (FFmpeg does not export which frame a vector refers to): a P-frame's vectors
  refer to the previous anchor; a B-frame's past vectors to the previous anchor and its future
  vectors to the next anchor. This is exact for MPEG-2, MPEG-4 Part 2 and H.264 coded with
  one reference frame and no B-pyramid; with more references it approximates.
- Source of a pixel in its reference: ``s(p) = floor(p + offset + 0.5)`` clipped to the frame,
  ``offset = motion / motion_scale`` of the exported vector whose block covers p (the mean if
  several of the same direction do).
- I-frame position ``J_t(p)``: ``J = p`` on the GOP's I-frame; otherwise, if a past vector
  covers p, ``J_prev(s(p))``; else, if a future vector covers p and the next anchor is in the
  same GOP, ``J_next(s(p))``; else ``J_prev(p)`` (intra or uncovered: zero motion, as
  CoViAR's loader does). Bi-predicted pixels follow the past vector.
- Accumulated motion ``mv_t(p) = p - J_t(p)`` (int16 whole pixels, exact: every step of the
  chain rounds the codec's quarter- or half-pixel offset to a whole pixel, so ``J`` is a pixel
  position; forward: the content at ``J`` in the I-frame is at ``p`` in frame t).
- Accumulated residual ``r_t(p) = frame_t(p) - iframe(J_t(p))`` (RGB, in [-255, 255]), stored
  by ``residual_dtype``: ``"int16"`` holds ``r`` exactly, so ``frame_t = iframe[J_t] + r_t``;
  ``"int8"`` holds ``q = r / 2`` rounded half to even (127 for 255), so that
  ``frame_t = iframe[J_t] + 2 q`` within one level per channel (:data:`RESIDUAL_SCALE`,
  :func:`decode_residual`). Both are 0 on I-frames. :func:`coviar` defaults to int16; the
  ``video.coviar`` stage to int8, half the bytes in shards.

Memory: the outputs hold 4 (motion) + 6 or 3 (residual) bytes per pixel per kept frame
(``stride`` keeps every k-th frame); decoding itself keeps one GOP's anchors and the B-frames
waiting for theirs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field as PField

from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record
from datapipe.stages.common.motion_vectors import GrowingArray, frame_vectors
from datapipe.stages.common.video_damage import Damage
from datapipe.stages.common.video_open import (
    DEFAULT_MAX_PIXELS,
    VideoReader,
    pict_letter,
)

ResidualDtype = Literal["int8", "int16"]
#: stored residual x scale = frame minus motion-compensated I-frame (int8: within 1 level)
RESIDUAL_SCALE = {"int8": 2, "int16": 1}


def decode_residual(stored: np.ndarray) -> np.ndarray:
    """int16 residual in levels from a stored ``int8`` (halved) or ``int16`` (exact) one.

    >>> decode_residual(np.array([-128, 0, 127], np.int8)).tolist()
    [-256, 0, 254]
    """
    scale = RESIDUAL_SCALE[str(stored.dtype)]
    return np.asarray(stored, dtype=np.int16) * np.int16(scale)


@dataclass
class Coviar:
    """CoViAR tensors of a clip (see the module docstring for the definitions)."""

    iframes: np.ndarray  # uint8 (G, H, W, 3): the I-frame of each GOP
    gop_start: np.ndarray  # int64 (G): frame index of each GOP's I-frame
    frame_idx: np.ndarray  # int64 (T'): frames kept (every ``stride``-th)
    gop: np.ndarray  # int64 (T'): GOP of each kept frame
    mv: np.ndarray  # int16 (T', H, W, 2): accumulated motion, pixels (x, y)
    residual: np.ndarray | None  # int16 or int8 (T', H, W, 3): accumulated residual, RGB (x
    # scale); None when not asked for
    frame_types: str  # one letter per decoded frame
    damaged: int
    damage: Damage = field(default_factory=Damage, repr=False)


@dataclass
class _Pending:
    """A B-frame waiting for its next anchor."""

    t: int
    rgb: np.ndarray | None
    src_p: np.ndarray
    has_p: np.ndarray
    src_f: np.ndarray
    has_f: np.ndarray


class _Accumulator:
    """Streams frames in presentation order and writes the kept frames' outputs."""

    def __init__(
        self,
        height: int,
        width: int,
        stride: int,
        capacity: int,
        residual_dtype: ResidualDtype | None,
    ) -> None:
        self.h, self.w, self.stride = height, width, stride
        yy, xx = np.mgrid[0:height, 0:width]
        self.identity = np.ascontiguousarray(np.stack([xx, yy], axis=-1), dtype=np.int32)
        self.iframes = GrowingArray((height, width, 3), np.uint8, 4)
        self.gop_start: list[int] = []
        keep = max(1, -(-capacity // stride))
        self.mv = GrowingArray((height, width, 2), np.int16, keep)
        self.residual = (
            GrowingArray((height, width, 3), np.dtype(residual_dtype), keep)
            if residual_dtype is not None
            else None
        )
        self.halve = residual_dtype == "int8"
        self.kept: list[int] = []
        self.kept_gop: list[int] = []
        self.anchor: np.ndarray | None = None  # I-frame positions of the previous anchor
        self.pending: list[_Pending] = []
        self._none = np.zeros((height, width), dtype=bool)

    def sources(self, vecs: np.ndarray | None, direction: int) -> tuple[np.ndarray, np.ndarray]:
        from datapipe.stages.common.video_kernels import pixel_sources, vector_views

        src = np.empty((self.h, self.w, 2), np.int32)
        has = np.zeros((self.h, self.w), dtype=bool)
        if vecs is not None and len(vecs):
            r8, r16, r32, layout = vector_views(vecs)
            pixel_sources(r8, r16, r32, layout, direction, src, has)
        return src, has

    def needs_rgb(self, kind: str) -> bool:
        """Whether a frame of ``kind`` must become RGB: an I-frame (or the first frame), or
        any frame when residuals are asked for."""
        return self.residual is not None or kind == "I" or self.anchor is None

    def add(self, t: int, kind: str, rgb: np.ndarray | None, vecs: np.ndarray | None) -> None:
        from datapipe.stages.common.video_kernels import trace

        if kind == "I" or self.anchor is None:
            assert rgb is not None
            self.flush(None)
            self.iframes.slot()[:] = rgb
            self.gop_start.append(t)
            self.anchor = self.identity
            self.emit(t, self.identity, rgb)
        elif kind == "B":
            src_p, has_p = self.sources(vecs, -1)
            src_f, has_f = self.sources(vecs, +1)
            self.pending.append(_Pending(t, rgb, src_p, has_p, src_f, has_f))
        else:
            src_p, has_p = self.sources(vecs, -1)
            pos = np.empty_like(self.identity)
            trace(self.anchor, src_p, has_p, self.anchor, src_p, self._none, False, pos)
            self.emit(t, pos, rgb)
            self.flush(pos)
            self.anchor = pos

    def flush(self, next_anchor: np.ndarray | None) -> None:
        """Finish the waiting B-frames, given the next anchor's positions (None: none in
        this GOP)."""
        from datapipe.stages.common.video_kernels import trace

        for b in self.pending:
            pos = np.empty_like(self.identity)
            future = self.anchor if next_anchor is None else next_anchor
            trace(
                self.anchor,
                b.src_p,
                b.has_p,
                future,
                b.src_f,
                b.has_f,
                next_anchor is not None,
                pos,
            )
            self.emit(b.t, pos, b.rgb)
        self.pending = []

    def emit(self, t: int, pos: np.ndarray, rgb: np.ndarray | None) -> None:
        from datapipe.stages.common.video_kernels import accumulate

        if t % self.stride:
            return
        k = t // self.stride
        if self.residual is None:  # the motion alone: p - J(p)
            np.subtract(self.identity, pos, out=self.mv.at(k), casting="unsafe")
        else:
            iframe = self.iframes.buf[len(self.gop_start) - 1]
            accumulate(pos, rgb, iframe, self.mv.at(k), self.residual.at(k), self.halve)
        self.kept.append(t)
        self.kept_gop.append(len(self.gop_start) - 1)


def coviar(
    path: str | os.PathLike[str],
    *,
    stride: int = 1,
    max_frames: int | None = None,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    residual_dtype: ResidualDtype = "int16",
    residual: bool = True,
) -> Coviar:
    """Decode a video into CoViAR's I-frames, accumulated motion and accumulated residuals.

    Parameters
    ----------
    stride : keep the outputs of every ``stride``-th frame (all frames are still traced).
    max_frames, strict, max_pixels : as in
        :func:`~datapipe.stages.common.motion_vectors.motion_vectors`.
    residual_dtype : ``"int16"`` exact residuals, ``"int8"`` halved (see the module docstring).
    residual : False: no residuals (``residual`` is None), and only the I-frames are converted
        to RGB: what a model of the motion and I-frame streams needs, read faster.

    Returns
    -------
    Coviar
        ``iframes`` uint8 (G, H, W, 3), one per GOP; per kept frame ``mv`` int16
        (T', H, W, 2) accumulated motion and ``residual`` (T', H, W, 3) accumulated
        residual; which frames and GOPs they are, the frame types, the damage.

    Examples
    --------
    >>> import os, tempfile
    >>> from datapipe.stages.common.video_synth import moving_square_clip
    >>> tmp = tempfile.TemporaryDirectory()
    >>> clip = os.path.join(tmp.name, "clip.mp4")
    >>> _ = moving_square_clip(clip, size=(64, 48), frames=12, gop=6)  # H.264, 2 GOPs
    >>> from datapipe import ops
    >>> rep = ops.read_coviar(clip, stride=2)
    >>> rep.iframes.shape, rep.mv.shape, rep.residual.shape
    ((2, 48, 64, 3), (6, 48, 64, 2), (6, 48, 64, 3))
    >>> tmp.cleanup()
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if residual_dtype not in RESIDUAL_SCALE:
        raise ValueError(f"residual_dtype must be 'int8' or 'int16', got {residual_dtype!r}")
    from av.video.reformatter import VideoReformatter

    with VideoReader(path, strict=strict, max_pixels=max_pixels) as reader:
        reader.require_motion_vectors()
        reader.configure(export_mvs=True)
        info = reader.info
        capacity = min(info.declared_frames or 256, max_frames or 2**31)
        acc = _Accumulator(
            info.height, info.width, stride, capacity, residual_dtype if residual else None
        )
        reformatter = VideoReformatter()
        types: list[str] = []
        for t, frame in enumerate(reader.frames(max_frames)):
            kind = pict_letter(frame)
            types.append(kind)
            rgb = None
            if acc.needs_rgb(kind):
                rgb = reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
            acc.add(t, kind, rgb, frame_vectors(frame))
        acc.flush(None)
        damage = reader.finish(len(types))
    order = np.argsort(np.asarray(acc.kept, np.int64), kind="stable")
    kept = np.asarray(acc.kept, np.int64)[order]
    return Coviar(
        iframes=acc.iframes.array(),
        gop_start=np.asarray(acc.gop_start, np.int64),
        frame_idx=kept,
        gop=np.asarray(acc.kept_gop, np.int64)[order],
        mv=acc.mv.array(),
        residual=acc.residual.array() if acc.residual is not None else None,
        frame_types="".join(types),
        damaged=damage.damaged,
        damage=damage,
    )


class CoviarParams(Params):
    stride: int = PField(1, ge=1, description="Keep every stride-th frame's outputs.")
    max_frames: int | None = PField(None, ge=1, description="Read at most this many frames.")
    strict: bool = PField(False, description="Damaged video is an error, not a count.")
    max_pixels: int = PField(DEFAULT_MAX_PIXELS, ge=1, description="Refuse larger frames.")
    residual_dtype: ResidualDtype = PField(
        "int8",
        description="'int8': residual / 2 (x2 reconstructs within 1 level, half the bytes); "
        "'int16': exact.",
    )
    residual: bool = PField(
        True,
        description="Also the residuals (false: motion and I-frames only, the other frames "
        "never converted to RGB: faster, for models without the residual stream).",
    )


class CoviarStage(Map):
    """CoViAR tensors: ``coviar_iframes`` uint8 (G, H, W, 3), ``coviar_gop_start`` (int64, G),
    ``coviar_frame_idx`` / ``coviar_gop`` (int64, T'), ``coviar_mv`` int16 (T', H, W, 2)
    accumulated motion in whole pixels, ``coviar_residual`` (T', H, W, 3) accumulated residual
    (int8 halved by default, int16 exact), ``frame_types``, ``video_damage``. See the module
    docstring."""

    name = "video.coviar"
    description = "CoViAR: GOP I-frames plus motion and residuals accumulated back to them."
    Params = CoviarParams
    CONSUMES = (Field("path", "str", ""),)
    isolate = True

    def produces(self) -> tuple[Field, ...]:
        dtype = self.params.residual_dtype
        residual = "frame minus motion-compensated I-frame, RGB levels" + (
            " / 2 (x2: within 1 level)" if dtype == "int8" else ""
        )
        return (
            Field("coviar_iframes", "uint8", "G H W 3", "I-frame of each GOP, RGB"),
            Field("coviar_gop_start", "int64", "G", "frame index of each GOP's I-frame"),
            Field("coviar_frame_idx", "int64", "T", "frames kept"),
            Field("coviar_gop", "int64", "T", "GOP of each kept frame"),
            Field(
                "coviar_mv",
                "int16",
                "T H W 2",
                "motion accumulated to the I-frame, pixels",
                compress=True,
            ),
            *(
                (Field("coviar_residual", dtype, "T H W 3", residual, compress=True),)
                if self.params.residual
                else ()
            ),
            Field("frame_types", "str", "", "'I'/'P'/'B' per decoded frame"),
            Field("video_damage", "int", "", "frames concealed or lost (0: clean)"),
        )

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        rep = coviar(
            ctx.resolve(record["path"]),
            stride=p.stride,
            max_frames=p.max_frames,
            strict=p.strict,
            max_pixels=p.max_pixels,
            residual_dtype=p.residual_dtype,
            residual=p.residual,
        )
        out = {
            "coviar_iframes": rep.iframes,
            "coviar_gop_start": rep.gop_start,
            "coviar_frame_idx": rep.frame_idx,
            "coviar_gop": rep.gop,
            "coviar_mv": rep.mv,
            "frame_types": rep.frame_types,
            "video_damage": int(rep.damaged),
        }
        if rep.residual is not None:
            out["coviar_residual"] = rep.residual
        return out

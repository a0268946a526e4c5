"""The codec's motion vectors read into a dense field on a block grid: what the
``video.motion_vectors`` and ``video.coviar`` stages and the key-frame motion cues share.

FFmpeg exports one vector per prediction block and reference direction (``flags2=+export_mvs``,
``AVMotionVector``): the block's centre ``dst``, its size ``w`` x ``h`` (16 or 8 for H.264,
whose 4x4 sub-partitions are exported per 8x8), the offset ``motion / motion_scale`` from the
block to where it is fetched in the reference frame, and ``source`` < 0 for a past reference,
> 0 for a future one. This module rasterises them:

- **Sign**: the field holds *forward motion* in pixels, the displacement of the content from
  the earlier to the later of the two frames: ``-(motion / scale)`` for a past reference
  (content moved from ``src`` in the past frame to ``dst`` now) and ``+(motion / scale)`` for
  a future reference (content at ``dst`` now is at ``src`` in the future frame). A square
  moving right gives positive x for P-frames and for both directions of a B-frame.
- **Magnitude** (``normalize``): ``"reference"`` (the default) keeps each vector as coded,
  the motion over its reference distance: a P-frame two frames after its anchor (``I B P``)
  shows twice the per-frame motion, and so does a B-frame's vector to a reference two frames
  away. ``"per_frame"`` divides each vector by the distance of its reference in frames
  (presentation order), so that every frame holds pixels per frame. FFmpeg does not export
  which frame a vector refers to; the distances follow the rule of :mod:`.video_refs` (exact
  with one reference frame per direction, B-pyramid included). B-frames are held back until
  their next reference frame is decoded.
- **Grid**: cells of ``block`` x ``block`` pixels, ``rows = ceil(H / block)``,
  ``cols = ceil(W / block)``. Each cell is the area-weighted mean of the vectors overlapping it
  (a bi-predicted block contributes both directions); cells no vector covers (intra blocks)
  and I-frames are 0. ``block`` 16 is the macroblock grid; 8 resolves H.264 8x8 partitions
  and MPEG-4 4MV; 4 is a finer raster of the same data.
- **Frames**: one entry per frame PyAV decodes, in presentation order.

Known FFmpeg limitations: its MPEG-4 Part 2 decoder exports zero vectors for B-frames
(direct-mode vectors are not stored), and its MPEG-1/2 decoder exports none for the last frame
of a stream that ends with a sequence end code (``has_vectors`` is False there, the field 0).
MPEG-4 P-frames, H.264 and the other MPEG-2 frames are exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from datapipe.stages.common.video_damage import Damage
from datapipe.stages.common.video_open import (
    DEFAULT_MAX_PIXELS,
    VideoReader,
    frame_pts,
    pict_letter,
)
from datapipe.stages.common.video_refs import ReferenceDistances, ReferenceFlags

_INITIAL_FRAMES = 1024
_SHIFTS = {4: 2, 8: 3, 16: 4}
Normalize = Literal["reference", "per_frame"]


@dataclass
class MotionField:
    """Dense motion of a clip (see the module docstring for the exact meaning)."""

    #: float32 (T, rows, cols, 2): forward motion (x, y) in pixels per cell, over each
    #: vector's reference distance or per frame (``normalize``)
    mv: np.ndarray
    #: one letter per frame, presentation order: 'I', 'P', 'B' ('?' if unknown)
    frame_types: list[str]
    #: int64 (T) presentation timestamps in ``time_base`` units (PTS_UNKNOWN when absent)
    pts: np.ndarray
    #: bool (T): I-frames (their field is zero)
    is_iframe: np.ndarray
    #: bool (T): the decoder exported vectors for the frame (False on I-frames; also False on
    #: the last frame of an MPEG-1/2 stream that ends with a sequence end code, whose vectors
    #: FFmpeg drops)
    has_vectors: np.ndarray
    #: frames concealed or lost, see :class:`~datapipe.stages.common.video_damage.Damage`
    damaged: int
    block: int
    codec: str
    width: int
    height: int
    damage: Damage = field(default_factory=Damage, repr=False)
    normalize: Normalize = "reference"


class GrowingArray:
    """A preallocated (capacity, *tail) buffer filled one slot at a time, grown by half when
    the frame count is unknown or exceeded; memory stays proportional to the output. The first
    allocation is capped at ``first_bytes`` whatever the container declares."""

    def __init__(
        self,
        tail: tuple[int, ...],
        dtype: np.dtype | type,
        capacity: int,
        first_bytes: int = 64 * 2**20,
    ) -> None:
        slot_bytes = max(1, int(np.prod(tail)) * np.dtype(dtype).itemsize)
        self.step = max(1, min(64, first_bytes // slot_bytes))
        self.buf = np.empty((max(1, min(capacity, first_bytes // slot_bytes)), *tail), dtype)
        self.n = 0

    def at(self, i: int) -> np.ndarray:
        """The slot of index ``i`` (growing the buffer as needed); the length becomes > i."""
        if i >= len(self.buf):
            size = max(i + 1, len(self.buf) + max(self.step, len(self.buf) // 2))
            grown = np.empty((size, *self.buf.shape[1:]), self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.n = max(self.n, i + 1)
        return self.buf[i]

    def slot(self) -> np.ndarray:
        """The next slot."""
        return self.at(self.n)

    def array(self) -> np.ndarray:
        if self.n < len(self.buf) // 2:
            return self.buf[: self.n].copy()
        return self.buf[: self.n]


def rasterize(
    vecs: np.ndarray,
    rows: int,
    cols: int,
    block: int,
    out: np.ndarray | None = None,
    *,
    past: float = 1.0,
    future: float = 1.0,
    acc: np.ndarray | None = None,
) -> np.ndarray:
    """Dense forward-motion field (rows, cols, 2) float32 from one frame's exported vectors.

    Each vector covers its own ``w`` x ``h`` block around ``dst``; a cell holds the
    area-weighted mean of the vectors overlapping it (0 where none does). Past-reference
    vectors are divided by ``past``, future-reference ones by ``future`` (their reference
    distances, for per-frame motion). ``acc``: (rows, cols, 3) float64 scratch.
    """
    from datapipe.stages.common.video_kernels import rasterize_forward, vector_views

    if out is None:
        out = np.empty((rows, cols, 2), np.float32)
    if acc is None:
        acc = np.empty((rows, cols, 3))
    r8, r16, r32, layout = vector_views(vecs)
    rasterize_forward(r8, r16, r32, layout, _SHIFTS[block], out, acc, past, future)
    return out


def frame_vectors(frame: object) -> np.ndarray | None:
    """The exported ``AVMotionVector`` records of a frame as a structured array, or None.

    Reads through a fresh ``SideDataContainer`` rather than ``frame.side_data``: the property
    caches its container on the frame, a reference cycle that leaves every decoded frame (and
    its picture buffers) to the cycle collector, about a hundred frames at a time.
    """
    from av.sidedata.sidedata import SideDataContainer

    sd = SideDataContainer(frame).get("MOTION_VECTORS")
    return None if sd is None else sd.to_ndarray()


def _rasterize_frame(frame: object, out: np.ndarray, block: int, acc: np.ndarray) -> bool:
    """Rasterise a frame's vectors into ``out``; False (and zeros) when it exported none.
    Kept in a function so that no view of the frame's side data outlives the call."""
    from datapipe.stages.common.video_kernels import rasterize_forward, vector_views

    vecs = frame_vectors(frame)
    if vecs is None:
        out[:] = 0
        return False
    r8, r16, r32, layout = vector_views(vecs)
    rasterize_forward(r8, r16, r32, layout, _SHIFTS[block], out, acc, 1.0, 1.0)
    return True


def copy_vectors(frame: object) -> np.ndarray | None:
    """The frame's vectors, copied out of its side data (they may outlive the frame)."""
    vecs = frame_vectors(frame)
    return None if vecs is None else np.array(vecs)


def motion_vectors(
    path: str | os.PathLike[str],
    *,
    block: int = 16,
    max_frames: int | None = None,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    reconstruct: bool = False,
    normalize: Normalize = "reference",
) -> MotionField:
    """Read a video's motion vectors into a dense field, streaming frame by frame.

    Parameters
    ----------
    path : a local video file (H.264, MPEG-4 Part 2, MPEG-1/2, H.263 family).
    block : grid cell size in pixels (16, 8 or 4).
    max_frames : stop after this many frames (None: all).
    strict : raise on any damage (concealed frames, decoder errors, lost frames) instead of
        keeping the data and counting it in ``damaged``.
    max_pixels : refuse a declared frame size above this (``decode_bomb``).
    reconstruct : also run the loop filter and inverse transform. The vectors are the same;
        by default they are skipped because only the bitstream's vectors are wanted.
    normalize : ``"reference"``: vectors as coded, motion over their reference distance;
        ``"per_frame"``: divided by that distance, pixels per frame (module docstring).

    Returns
    -------
    MotionField
        ``mv`` float32 (T, rows, cols, 2), the forward motion (x, y) in pixels of each
        ``block`` cell; per frame its type, ``pts``, ``is_iframe`` and ``has_vectors``; the
        damage, the codec and the frame size.

    Raises
    ------
    ItemError : ``unsupported`` for codecs whose FFmpeg decoder exports no vectors (HEVC, VP9,
        AV1: named in the message), and the classes of :class:`VideoReader`.

    Examples
    --------
    >>> import os, tempfile
    >>> from datapipe.stages.common.video_synth import moving_square_clip
    >>> tmp = tempfile.TemporaryDirectory()
    >>> clip = os.path.join(tmp.name, "clip.mp4")
    >>> _ = moving_square_clip(clip, size=(64, 48), frames=12, gop=6)  # H.264, 2 GOPs
    >>> from datapipe import ops
    >>> field = ops.read_motion_vectors(clip, block=8)
    >>> field.mv.shape, "".join(field.frame_types)
    ((12, 6, 8, 2), 'IPPPPPIPPPPP')
    >>> tmp.cleanup()
    """
    if block not in (4, 8, 16):
        raise ValueError(f"block must be 4, 8 or 16, got {block}")
    if normalize not in ("reference", "per_frame"):
        raise ValueError(f"normalize must be 'reference' or 'per_frame', got {normalize!r}")
    with VideoReader(path, strict=strict, max_pixels=max_pixels) as reader:
        reader.require_motion_vectors()
        reader.configure(export_mvs=True, skip_pixels=not reconstruct)
        info = reader.info
        rows, cols = -(-info.height // block), -(-info.width // block)
        capacity = min(info.declared_frames or _INITIAL_FRAMES, _INITIAL_FRAMES)
        if max_frames is not None:
            capacity = min(capacity, max_frames)
        mv = GrowingArray((rows, cols, 2), np.float32, capacity)
        acc = np.empty((rows, cols, 3))
        pts: list[int] = []
        types: list[str] = []
        exported: list[bool] = []
        if normalize == "reference":
            for frame in reader.frames(max_frames):
                exported.append(_rasterize_frame(frame, mv.slot(), block, acc))
                types.append(pict_letter(frame))
                pts.append(frame_pts(frame))
                del frame  # decoded frames are freed one by one (see frame_vectors)
        else:
            _per_frame(reader, max_frames, block, mv, acc, (types, pts, exported))
        damage = reader.finish(len(types))
    return MotionField(
        mv=mv.array(),
        frame_types=types,
        pts=np.asarray(pts, dtype=np.int64),
        is_iframe=np.array([t == "I" for t in types], dtype=bool),
        has_vectors=np.array(exported, dtype=bool),
        damaged=damage.damaged,
        block=block,
        codec=info.codec,
        width=info.width,
        height=info.height,
        damage=damage,
        normalize=normalize,
    )


def _per_frame(
    reader: VideoReader,
    max_frames: int | None,
    block: int,
    mv: GrowingArray,
    acc: np.ndarray,
    lists: tuple[list[str], list[int], list[bool]],
) -> None:
    """The decoding loop of ``normalize="per_frame"``: B-frames wait for their next reference
    frame, which is read past ``max_frames`` when needed (its vectors are not kept)."""
    types, pts, exported = lists
    limit = max_frames if max_frames is not None else 2**62
    flags = ReferenceFlags(reader.stream)
    pending: ReferenceDistances[tuple[int, np.ndarray | None]] = ReferenceDistances()
    t = 0
    for frame in reader.frames(watch=flags.see):
        kind, p = pict_letter(frame), frame_pts(frame)
        vecs = copy_vectors(frame) if t < limit else None
        del frame  # decoded frames are freed one by one (see frame_vectors)
        if t < limit:
            types.append(kind)
            pts.append(p)
            exported.append(vecs is not None)
            mv.slot()[:] = 0
        _rasterize_ready(pending.push(t, kind, flags.reference(p, kind), (t, vecs)), mv, block, acc)
        t += 1
        if t >= limit and not pending.waiting_before(limit):
            reader.stopped_early = True
            break
    _rasterize_ready(pending.finish(), mv, block, acc)


def _rasterize_ready(
    ready: list[tuple[tuple[int, np.ndarray | None], int, int]],
    mv: GrowingArray,
    block: int,
    acc: np.ndarray,
) -> None:
    """Rasterise frames whose reference distances are known into their slots of ``mv``."""
    for (t, vecs), past, future in ready:
        if vecs is not None:
            out = mv.at(t)
            rasterize(vecs, *out.shape[:2], block, out, past=past, future=future, acc=acc)

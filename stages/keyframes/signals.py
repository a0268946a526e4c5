"""Cheap per-frame signals for key-frame selection.

- **Histogram change** (scene cuts): the luma (Y) plane of each decoded frame, read in place
  with no RGB conversion and subsampled to at most ``max_side`` pixels per side, cut into a
  ``grid`` x ``grid`` raster of cells, with a ``bins``-bin histogram per cell. The change of
  frame ``t`` is the mean over cells of the total-variation distance between its histograms
  and those of frame ``t - 1`` (0 for identical frames, 1 for disjoint ones; frame 0: 0).
  Cells make it see a cut between two scenes with the same global brightness
  distribution, which one global histogram misses. Histograms still miss a cut between
  shots whose every cell has the same brightness distribution (two views of one fine
  texture), and very fast camera motion raises the change of every frame: lower
  ``threshold`` or change ``grid`` for such footage.
- **Motion energy** (motion peaks): the mean forward-motion magnitude in pixels per frame
  over the block grid of :func:`~datapipe.stages.common.motion_vectors.motion_vectors` with
  ``normalize="per_frame"``: each vector is divided by its own reference distance in frames
  (:mod:`~datapipe.stages.common.video_refs`: P-frames back to the previous I/P-frame,
  B-frames to the nearest reference frame on each side, H.264 B-pyramid included), so a
  steady pan reads the same in I/P/B positions. Cells no vector covers (intra blocks) count
  as 0. Frames without vectors (I-frames) take the value interpolated from their
  neighbours, so a GOP boundary is not a dip that makes false peaks.
- **Cues** (the learned scorer): both of the above plus packet size and picture type, from
  one decoding pass (:func:`frame_cues`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from datapipe.stages.common.motion_vectors import copy_vectors, rasterize
from datapipe.stages.common.video_open import (
    DEFAULT_MAX_PIXELS,
    MV_CODECS,
    PTS_UNKNOWN,
    VideoReader,
    frame_pts,
    pict_letter,
)
from datapipe.stages.common.video_refs import ReferenceDistances, ReferenceFlags
from datapipe.stages.keyframes import decode as keyframes_decode

if TYPE_CHECKING:  # PyAV is imported where a video is decoded
    import av
    from av.video.reformatter import VideoReformatter

#: pixel formats whose first plane is 8-bit luma, read in place
_Y8_FORMATS = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p"}
    | {"yuvj440p", "yuv411p", "yuv410p", "nv12", "nv21", "nv16", "gray"}
)
#: defaults of the scene detector (also the cue ``change`` and the ``scene`` proxy labels)
SCENE_THRESHOLD = 0.15
MIN_SCENE_LEN = 5
GRID = 8
BINS = 8
#: names of the columns of :attr:`Cues.values`, in order
CUE_NAMES = ("log_size", "intra", "bidir", "motion", "motion_rel", "change", "change_rel")


def luma(frame: av.VideoFrame, reformatter: VideoReformatter, max_side: int = 128) -> np.ndarray:
    """uint8 (h, w) luma of a frame, at most about ``max_side`` per side: the Y plane read in
    place and subsampled, or (other pixel formats) a small gray conversion."""
    step = max(1, -(-max(frame.width, frame.height) // max_side))
    if frame.format.name in _Y8_FORMATS:
        plane = frame.planes[0]
        buf = np.frombuffer(plane, np.uint8, count=plane.line_size * plane.height)
        return buf.reshape(plane.height, plane.line_size)[
            : frame.height : step, : frame.width : step
        ]
    w, h = max(1, frame.width // step), max(1, frame.height // step)
    return reformatter.reformat(frame, format="gray", width=w, height=h, threads=1).to_ndarray()


def grid_histogram(y: np.ndarray, grid: int = GRID, bins: int = BINS) -> np.ndarray:
    """float32 (cells, bins): the normalised histogram of each cell of a ``grid`` x ``grid``
    raster over a uint8 image (fewer cells when the image is smaller than the grid)."""
    h, w = y.shape
    gr, gc = min(grid, h), min(grid, w)
    rows = (np.arange(h) * gr) // h
    cols = (np.arange(w) * gc) // w
    cell = rows[:, None] * gc + cols[None, :]
    idx = cell * bins + ((y.astype(np.intp) * bins) >> 8)
    hist = np.bincount(idx.ravel(), minlength=gr * gc * bins).reshape(gr * gc, bins)
    hist = hist.astype(np.float32)
    hist /= hist.sum(axis=1, keepdims=True)
    return hist


def histogram_change(prev: np.ndarray | None, cur: np.ndarray) -> float:
    """Mean total-variation distance between two frames' cell histograms (0 when no prev)."""
    if prev is None or prev.shape != cur.shape:
        return 0.0
    return float(0.5 * np.abs(cur - prev).sum(axis=1).mean())


@dataclass
class SceneScan:
    """Per-frame histogram change of a clip and the scenes found in it."""

    #: float32 (T) histogram change of each frame against the previous one
    change: np.ndarray
    #: int64 (S) first frame of each scene (0 first)
    starts: np.ndarray
    #: int64 (T) presentation timestamps (PTS_UNKNOWN when absent)
    pts: np.ndarray
    #: float64 (T) seconds
    seconds: np.ndarray
    #: uint8 (S, H, W, 3) RGB of each scene's first frame, when asked for
    frames: np.ndarray | None
    damaged: int

    @property
    def cuts(self) -> np.ndarray:
        """int64 (S - 1): the frames where a new scene starts (the hard cuts)."""
        return self.starts[1:]


def scan_scenes(
    path: str | os.PathLike[str],
    *,
    threshold: float = SCENE_THRESHOLD,
    min_scene_len: int = MIN_SCENE_LEN,
    grid: int = GRID,
    bins: int = BINS,
    max_side: int = 128,
    decode: bool = False,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> SceneScan:
    """Hard cuts by histogram change (see the module docstring), in one decoding pass.

    Frame ``t`` starts a scene when its change is at least ``threshold`` and the current
    scene is at least ``min_scene_len`` frames long
    (:func:`~datapipe.stages.keyframes.index.scene_cuts`). With ``decode`` the first
    frame of each scene is converted to RGB as it is found; no other frame is.
    """
    from av.video.reformatter import VideoReformatter

    with VideoReader(path, strict=strict, max_pixels=max_pixels) as reader:
        reader.configure()
        reformatter = VideoReformatter()
        change: list[float] = []
        pts: list[int] = []
        starts: list[int] = []
        frames: list[np.ndarray] = []
        prev: np.ndarray | None = None
        for t, frame in enumerate(reader.frames()):
            hist = grid_histogram(luma(frame, reformatter, max_side), grid, bins)
            d = histogram_change(prev, hist)
            prev = hist
            change.append(d)
            pts.append(frame_pts(frame))
            if t == 0 or (d >= threshold and t - starts[-1] >= min_scene_len):
                starts.append(t)
                if decode:
                    frames.append(keyframes_decode.to_rgb(reformatter, frame))
        damage = reader.finish(len(change))
        info = reader.info
    c = np.asarray(change, dtype=np.float32)
    p = np.asarray(pts, dtype=np.int64)
    return SceneScan(
        change=c,
        starts=np.asarray(starts, dtype=np.int64),
        pts=p,
        seconds=keyframes_decode.to_seconds(p, info),
        frames=np.stack(frames) if decode else None,
        damaged=damage.damaged,
    )


def motion_energy(
    magnitude: np.ndarray, frame_types: Sequence[str], has_vectors: np.ndarray
) -> np.ndarray:
    """float64 (T) per-frame motion energy from the mean vector magnitude of each frame.

    ``magnitude`` must come from per-frame vectors (each divided by its reference distance,
    ``motion_vectors(..., normalize="per_frame")``); it is not rescaled here. Frames without
    vectors (I-frames) are interpolated from their neighbours; all zero when no frame has
    vectors.

    >>> motion_energy(np.array([0.0, 2.0, 2.0, 0.0, 4.0]), "IBPIP", np.array([0, 1, 1, 0, 1]))
    array([2., 2., 2., 3., 4.])
    """
    e = np.asarray(magnitude, dtype=np.float64).copy()
    n = len(e)
    valid = np.asarray(has_vectors, dtype=bool) & np.array([k != "I" for k in frame_types])
    if not valid.any():
        return np.zeros(n)
    if not valid.all():
        x = np.arange(n)
        e[~valid] = np.interp(x[~valid], x[valid], e[valid])
    return e


def mean_magnitude(mv: np.ndarray) -> np.ndarray:
    """float64 (T): mean |mv| over the cells of a (T, rows, cols, 2) field."""
    mv = np.asarray(mv, dtype=np.float32)
    return np.sqrt(mv[..., 0] ** 2 + mv[..., 1] ** 2).mean(axis=(1, 2), dtype=np.float64)


@dataclass
class Cues:
    """Per-frame cues of one clip for the learned scorer."""

    #: float32 (T, len(CUE_NAMES)) in the order of CUE_NAMES
    values: np.ndarray
    #: int64 (T) presentation timestamps
    pts: np.ndarray
    #: float64 (T) seconds
    seconds: np.ndarray
    damaged: int


def frame_cues(
    path: str | os.PathLike[str], *, strict: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Cues:
    """Cheap per-frame cues in one decoding pass, columns :data:`CUE_NAMES`:

    - ``log_size``: log of the frame's packet size over the clip's median packet size;
    - ``intra``, ``bidir``: 1 for I-frames, for B-frames;
    - ``motion``: log(1 + motion energy), the energy in pixels per frame as in
      :func:`motion_energy` (vectors divided by their reference distances; 0 for codecs
      that export no vectors);
    - ``motion_rel``: log((energy + 0.05) / (median energy + 0.05));
    - ``change``: histogram change against the previous frame (8 x 8 cells, 8 bins);
    - ``change_rel``: change minus the clip's median change.

    Returns
    -------
    Cues
        ``values`` float32 (T, 7), the cues in the order of :data:`CUE_NAMES`; each frame's
        ``pts`` and ``seconds``; the damaged frame count.

    Examples
    --------
    >>> import os, tempfile
    >>> from datapipe import ops
    >>> from datapipe.stages.common.video_synth import moving_square_clip
    >>> tmp = tempfile.TemporaryDirectory()
    >>> clip = os.path.join(tmp.name, "clip.mp4")
    >>> _ = moving_square_clip(clip, size=(64, 48), frames=12, gop=6)  # H.264, 2 GOPs
    >>> cues = ops.read_frame_cues(clip)
    >>> cues.values.shape, cues.values[[0, 6], 1].tolist()  # "intra": the two I-frames
    ((12, 7), [1.0, 1.0])
    >>> tmp.cleanup()
    """
    from av.video.reformatter import VideoReformatter

    with VideoReader(path, strict=strict, max_pixels=max_pixels) as reader:
        info = reader.info
        vectors = info.codec in MV_CODECS
        reader.configure(export_mvs=vectors)
        size_by_pts: dict[int, int] = {}
        sizes: list[int] = []

        def source() -> Iterator[av.Packet]:
            for packet in reader.container.demux(reader.stream):
                if packet.size:
                    sizes.append(packet.size)
                    if packet.pts is not None:
                        size_by_pts[int(packet.pts)] = packet.size
                yield packet

        rows, cols = -(-info.height // 16), -(-info.width // 16)
        cell = np.empty((rows, cols, 2), np.float32)
        acc = np.empty((rows, cols, 3))
        flags = ReferenceFlags(reader.stream)
        # B-frames wait for their next reference frame, which gives their future distance
        pending: ReferenceDistances[tuple[int, np.ndarray | None]] = ReferenceDistances()
        reformatter = VideoReformatter()
        types: list[str] = []
        pts: list[int] = []
        magnitude: list[float] = []
        has: list[bool] = []
        change: list[float] = []
        size: list[int] = []
        prev: np.ndarray | None = None
        for t, frame in enumerate(reader.frames(packets=source(), watch=flags.see)):
            kind = pict_letter(frame)
            types.append(kind)
            p = frame_pts(frame)
            pts.append(p)
            size.append(size_by_pts.get(p, 0) if p != PTS_UNKNOWN else 0)
            vecs = copy_vectors(frame) if vectors else None
            magnitude.append(0.0)
            has.append(vecs is not None)
            if vectors:
                ready = pending.push(t, kind, flags.reference(p, kind), (t, vecs))
                _mean_motion(ready, magnitude, cell, acc)
            hist = grid_histogram(luma(frame, reformatter))
            change.append(histogram_change(prev, hist))
            prev = hist
        _mean_motion(pending.finish(), magnitude, cell, acc)
        reader.packets_read = len(sizes)
        damage = reader.finish(len(types))
    if any(s == 0 for s in size) and len(sizes) == len(size):  # no timestamps: decode order
        size = sizes
    energy = motion_energy(np.asarray(magnitude), types, np.asarray(has, dtype=bool))
    s = np.maximum(np.asarray(size, dtype=np.float64), 1.0)
    d = np.asarray(change, dtype=np.float64)
    values = np.stack(
        [
            np.log(s / np.median(s)),
            np.array([k == "I" for k in types], dtype=np.float64),
            np.array([k == "B" for k in types], dtype=np.float64),
            np.log1p(energy),
            np.log((energy + 0.05) / (np.median(energy) + 0.05)),
            d,
            d - np.median(d),
        ],
        axis=1,
    ).astype(np.float32)
    p = np.asarray(pts, dtype=np.int64)
    return Cues(
        values=values,
        pts=p,
        seconds=keyframes_decode.to_seconds(p, info),
        damaged=damage.damaged,
    )


def _mean_motion(
    ready: list[tuple[tuple[int, np.ndarray | None], int, int]],
    magnitude: list[float],
    cell: np.ndarray,
    acc: np.ndarray,
) -> None:
    """``magnitude[t]``: mean per-frame motion on the 16-pixel grid of each frame whose
    reference distances (past, future) are now known."""
    for (t, vecs), past, future in ready:
        if vecs is not None:
            rows, cols = cell.shape[:2]
            rasterize(vecs, rows, cols, 16, cell, past=past, future=future, acc=acc)
            magnitude[t] = float(np.sqrt(cell[..., 0] ** 2 + cell[..., 1] ** 2).mean())

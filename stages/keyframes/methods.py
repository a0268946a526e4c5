"""Key-frame selection: ``keyframes.uniform``, ``keyframes.tsn``, ``keyframes.iframes``,
``keyframes.motion`` and ``keyframes.scene`` (``keyframes.learned``: see
:mod:`~datapipe.stages.keyframes.learned`).

Every method gives the selected frames' indices (int64, positions among all frames in
presentation order, ascending) and timestamps (float64 seconds), and with ``decode`` their
RGB pixels; only the selected frames are converted to RGB, and the decoder is sent only the
GOPs that hold them (:mod:`~datapipe.stages.keyframes.decode`). What each method reads:

========  =====================================================================  =========
method    signal                                                                 decoding
========  =====================================================================  =========
uniform   the frame count from the demuxer                                       none
tsn       the frame count from the demuxer                                       none
iframes   the packets' key flags                                                 none
motion    codec motion vectors (H.264, MPEG-4 Part 2, MPEG-1/2)                  bitstream
scene     luma histograms of every frame (Y plane, no RGB conversion)            pixels
========  =====================================================================  =========

"none" still decodes the bitstream up to the first frame, so a stream with no decodable
frame is an error (``empty``; ``corrupt``/``truncated`` when FFmpeg reported damage).
Budgets and the ``too_few`` policy: :mod:`~datapipe.stages.keyframes.index`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from datapipe.stages.common.video_open import DEFAULT_MAX_PIXELS
from datapipe.stages.keyframes import index as kix
from datapipe.stages.keyframes import signals as sig
from datapipe.stages.keyframes.decode import (
    FrameTable,
    decode_selected,
    scan_frames,
    to_seconds,
)
from datapipe.stages.keyframes.signals import (
    mean_magnitude,
    motion_energy,
    scan_scenes,
)

if TYPE_CHECKING:
    from datapipe.stages.common.motion_vectors import MotionField


@dataclass
class KeyFrameSelection:
    """What every key-frame method returns."""

    #: int64 (K) positions among all frames, presentation order, ascending
    indices: np.ndarray
    #: float64 (K) presentation time in seconds
    seconds: np.ndarray
    #: uint8 (K, H, W, 3) RGB of the selected frames (None unless decoded)
    frames: np.ndarray | None
    #: frames in the video
    n_frames: int
    #: frames concealed or lost (0: clean)
    damaged: int
    #: float32 (K) per selected frame: motion energy or model score (None when not scored)
    scores: np.ndarray | None = None
    #: int64 (C) hard cuts (keyframes_scene only)
    cuts: np.ndarray | None = None


def _from_table(
    path: str | os.PathLike[str],
    table: FrameTable,
    idx: np.ndarray,
    decode: bool,
    strict: bool,
    max_pixels: int,
) -> KeyFrameSelection:
    frames = (
        decode_selected(path, table, idx, strict=strict, max_pixels=max_pixels) if decode else None
    )
    return KeyFrameSelection(
        indices=idx.astype(np.int64),
        seconds=table.seconds[idx],
        frames=frames,
        n_frames=table.n,
        damaged=table.damaged,
    )


def keyframes_uniform(
    path: str | os.PathLike[str],
    *,
    k: int | None = None,
    every: int | None = None,
    too_few: kix.TooFew = "error",
    decode: bool = False,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> KeyFrameSelection:
    """``k`` frames at uniform intervals from the first to the last, or every n-th frame
    (:func:`~datapipe.stages.keyframes.index.uniform_indices`); demux only.

    Returns
    -------
    KeyFrameSelection
        ``indices`` int64 (K), ascending positions among all frames; ``seconds``, their
        presentation times; ``frames`` uint8 (K, H, W, 3) RGB with ``decode`` (else None).

    Examples
    --------
    >>> import os, tempfile
    >>> from datapipe import ops
    >>> from datapipe.stages.common.video_synth import moving_square_clip
    >>> tmp = tempfile.TemporaryDirectory()
    >>> clip = os.path.join(tmp.name, "clip.mp4")
    >>> _ = moving_square_clip(clip, size=(64, 48), frames=12, gop=6)  # H.264, 2 GOPs
    >>> ops.select_keyframes_uniform(clip, k=3).indices.tolist()
    [0, 6, 11]
    >>> ops.select_keyframes_uniform(clip, every=4).indices.tolist()
    [0, 4, 8]
    >>> tmp.cleanup()
    """
    table = scan_frames(path, strict=strict, max_pixels=max_pixels)
    idx = kix.uniform_indices(table.n, k, every=every, too_few=too_few)
    return _from_table(path, table, idx, decode, strict, max_pixels)


def keyframes_tsn(
    path: str | os.PathLike[str],
    k: int,
    *,
    mode: Literal["train", "test"] = "test",
    seed: int = 0,
    key: str = "",
    epoch: int = 0,
    too_few: kix.TooFew = "error",
    decode: bool = False,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> KeyFrameSelection:
    """TSN segment sampling (:func:`~datapipe.stages.keyframes.index.tsn_indices`):
    a seeded random frame in each of ``k`` segments (``train``), or their centres (``test``).

    Returns
    -------
    KeyFrameSelection
        ``indices`` int64 (K), ascending positions among all frames; ``seconds``, their
        presentation times; ``frames`` uint8 (K, H, W, 3) RGB with ``decode`` (else None).

    Examples
    --------
    >>> import os, tempfile
    >>> from datapipe import ops
    >>> from datapipe.stages.common.video_synth import moving_square_clip
    >>> tmp = tempfile.TemporaryDirectory()
    >>> clip = os.path.join(tmp.name, "clip.mp4")
    >>> _ = moving_square_clip(clip, size=(64, 48), frames=12, gop=6)  # H.264, 2 GOPs
    >>> ops.select_keyframes_tsn(clip, 3).indices.tolist()  # the centres of 3 segments
    [2, 6, 10]
    >>> len(ops.select_keyframes_tsn(clip, 3, mode="train", seed=1, decode=True).frames)
    3
    >>> tmp.cleanup()
    """
    table = scan_frames(path, strict=strict, max_pixels=max_pixels)
    idx = kix.tsn_indices(table.n, k, mode=mode, seed=seed, key=key, epoch=epoch, too_few=too_few)
    return _from_table(path, table, idx, decode, strict, max_pixels)


def keyframes_iframes(
    path: str | os.PathLike[str],
    *,
    k: int | None = None,
    too_few: kix.TooFew = "error",
    decode: bool = False,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> KeyFrameSelection:
    """The codec's key frames (I-frames), read from the packets' key flags without decoding;
    with ``k``, ``k`` of them spread evenly (fewer exist: ``too_few`` as in
    :func:`keyframes_uniform`; ``repeat`` gives exactly ``k``, key frames repeating, for a
    model that wants ``k`` segments). ``decode`` sends the decoder the key packets only
    (key-frame-only decoding).

    Returns
    -------
    KeyFrameSelection
        ``indices`` int64 (K), ascending positions among all frames; ``seconds``, their
        presentation times; ``frames`` uint8 (K, H, W, 3) RGB with ``decode`` (else None).

    Examples
    --------
    >>> import os, tempfile
    >>> from datapipe import ops
    >>> from datapipe.stages.common.video_synth import moving_square_clip
    >>> tmp = tempfile.TemporaryDirectory()
    >>> clip = os.path.join(tmp.name, "clip.mp4")
    >>> _ = moving_square_clip(clip, size=(64, 48), frames=12, gop=6)  # H.264, 2 GOPs
    >>> ops.select_keyframes_iframes(clip).indices.tolist()
    [0, 6]
    >>> ops.select_keyframes_iframes(clip, k=1, decode=True).frames.shape
    (1, 48, 64, 3)
    >>> tmp.cleanup()
    """
    table = scan_frames(path, strict=strict, max_pixels=max_pixels)
    keys = np.flatnonzero(table.key).astype(np.int64)
    if k is not None:
        kk = kix.budget(k, len(keys), too_few, what="key frames")
        keys = keys[kix.uniform_indices(len(keys), kk, too_few=too_few)]
    return _from_table(path, table, keys, decode, strict, max_pixels)


def smooth_signal(signal: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` frames (edges repeat the end values)."""
    e = np.asarray(signal, dtype=np.float64)
    if window <= 1 or len(e) == 0:
        return e
    half = window // 2
    padded = np.pad(e, (half, window - 1 - half), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


def motion_signal(
    path: str | os.PathLike[str],
    *,
    block: Literal[4, 8, 16] = 16,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, MotionField]:
    """float64 (T) motion energy of every frame, in pixels per frame, and the motion field
    it comes from: the mean magnitude over the block grid of the codec's vectors, each
    divided by its reference distance (``motion_vectors(..., normalize="per_frame")``), I-frames
    interpolated (:func:`~datapipe.stages.keyframes.signals.motion_energy`).

    >>> energy, field = motion_signal("pan.mp4")  # 2 px/frame right, 1 down # doctest: +SKIP
    >>> energy.round(2).tolist()[:4]  # doctest: +SKIP
    [2.24, 2.24, 2.24, 2.24]
    """
    from datapipe.stages.common.motion_vectors import motion_vectors

    field = motion_vectors(
        path, block=block, strict=strict, max_pixels=max_pixels, normalize="per_frame"
    )
    energy = motion_energy(mean_magnitude(field.mv), field.frame_types, field.has_vectors)
    return energy, field


def keyframes_motion(
    path: str | os.PathLike[str],
    *,
    k: int | None = None,
    threshold: float | None = None,
    min_gap: int = 5,
    smooth: int = 1,
    block: Literal[4, 8, 16] = 16,
    too_few: Literal["error", "clamp"] = "error",
    decode: bool = False,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> KeyFrameSelection:
    """Peaks of motion-vector energy, at least ``min_gap`` frames apart.

    The energy is the mean forward-motion magnitude (pixels per frame: each vector divided by
    its reference distance) over the block grid (:func:`motion_signal`), read in the
    compressed domain, optionally smoothed over ``smooth`` frames; its local maxima
    (:func:`~datapipe.stages.keyframes.index.motion_peaks`) at or above
    ``threshold`` are kept, the ``k`` highest when ``k`` is given. Fewer than ``k`` peaks
    is an error (or all of them with ``too_few="clamp"``; with no peak at all, steady motion,
    clamp keeps the frame of highest energy); with ``threshold`` alone, no peak gives an
    empty selection.

    Returns
    -------
    KeyFrameSelection
        ``indices`` int64 (K), ascending positions among all frames; ``seconds``, their
        presentation times; ``frames`` uint8 (K, H, W, 3) RGB with ``decode`` (else None);
        ``scores`` float32 (K), the peaks' energy.

    Examples
    --------
    >>> import os, tempfile
    >>> from datapipe import ops
    >>> from datapipe.stages.common.video_synth import moving_square_clip
    >>> tmp = tempfile.TemporaryDirectory()
    >>> clip = os.path.join(tmp.name, "clip.mp4")
    >>> _ = moving_square_clip(clip, size=(64, 48), frames=12, gop=6)  # H.264, 2 GOPs
    >>> sel = ops.select_keyframes_motion(clip, k=2, min_gap=3)
    >>> len(sel.indices), sel.scores.dtype, int(sel.indices[1] - sel.indices[0]) >= 3
    (2, dtype('float32'), True)
    >>> tmp.cleanup()
    """
    if k is None and threshold is None:
        raise ValueError("give k, threshold or both")
    energy, field = motion_signal(path, block=block, strict=strict, max_pixels=max_pixels)
    energy = smooth_signal(energy, smooth)
    peaks = kix.motion_peaks(energy, threshold=threshold, min_gap=min_gap)
    if k is not None and not len(peaks) and too_few == "clamp" and len(energy):
        # steady motion (a zoom whose energy only rises) has no interior peak: its most
        # moving frame stands in, so clamp still gives one frame
        peaks = np.array([int(np.argmax(energy))], dtype=np.int64)
    if k is not None:
        kk = kix.budget(k, len(peaks), too_few, what="motion peaks")
        best = np.argsort(-energy[peaks], kind="stable")[:kk]
        peaks = np.sort(peaks[best])
    table = scan_frames(path, probe=False, strict=strict, max_pixels=max_pixels)
    frames = None
    if decode:
        pos = _table_index(table, field.pts, peaks)
        frames = decode_selected(path, table, pos, strict=strict, max_pixels=max_pixels)
    return KeyFrameSelection(
        indices=peaks,
        seconds=to_seconds(field.pts, table.info)[peaks],
        frames=frames,
        n_frames=len(field.frame_types),
        damaged=field.damaged,
        scores=energy[peaks].astype(np.float32),
    )


def _table_index(table: FrameTable, pts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Table positions of decoded frames ``idx`` (matched by pts when every pts is known)."""
    want = np.asarray(pts, dtype=np.int64)[idx]
    if table.timestamps and len(want):
        pos = np.clip(np.searchsorted(table.pts, want), 0, table.n - 1)
        if (table.pts[pos] == want).all():
            return pos.astype(np.int64)
    return idx


def keyframes_scene(
    path: str | os.PathLike[str],
    *,
    threshold: float = sig.SCENE_THRESHOLD,
    min_scene_len: int = sig.MIN_SCENE_LEN,
    grid: int = sig.GRID,
    bins: int = sig.BINS,
    max_side: int = 128,
    decode: bool = False,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> KeyFrameSelection:
    """The first frame of each scene, scenes split at hard cuts found by histogram change
    (:func:`~datapipe.stages.keyframes.signals.scan_scenes`).

    Returns
    -------
    KeyFrameSelection
        ``indices`` int64 (K), ascending positions among all frames; ``seconds``, their
        presentation times; ``frames`` uint8 (K, H, W, 3) RGB with ``decode`` (else None);
        ``scores``, the change at each selected frame; ``cuts`` int64, the cuts (every
        selected frame but frame 0).

    Examples
    --------
    >>> import os, tempfile
    >>> from datapipe import ops
    >>> from datapipe.stages.common.video_synth import disc_clip
    >>> tmp = tempfile.TemporaryDirectory()
    >>> clip = os.path.join(tmp.name, "cut.mp4")
    >>> disc_clip(clip, np.random.default_rng(0), cut=True)  # 16 frames, a cut at frame 11
    >>> sel = ops.select_keyframes_scene(clip)
    >>> sel.indices.tolist(), sel.cuts.tolist()
    ([0, 11], [11])
    >>> tmp.cleanup()
    """
    scan = scan_scenes(
        path,
        threshold=threshold,
        min_scene_len=min_scene_len,
        grid=grid,
        bins=bins,
        max_side=max_side,
        decode=decode,
        strict=strict,
        max_pixels=max_pixels,
    )
    return KeyFrameSelection(
        indices=scan.starts,
        seconds=scan.seconds[scan.starts],
        frames=scan.frames,
        n_frames=len(scan.change),
        damaged=scan.damaged,
        scores=scan.change[scan.starts],
        cuts=scan.cuts,
    )

"""Reading a video for key-frame selection: the frame table from the demuxer, and RGB for
the selected frames only.

- :func:`scan_frames` demuxes the stream without decoding it (one packet is one frame) and
  lists every frame in presentation order (packets sorted by pts; decode order when the
  stream carries no timestamps) with its pts, time in seconds, key flag and packet size.
  It also decodes, bitstream only (no inverse transform, no loop filter), the packets up to
  the first frame that comes out, so a stream without one decodable frame is an error
  (``empty``, or ``corrupt``/``truncated`` when FFmpeg reported damage) while the cost
  stays that of demuxing.
- :func:`decode_selected` returns the RGB frames at given indices. It sends the decoder
  only the GOPs holding a selected frame, each from its key packet up to the last selected
  packet (in decode order), plus the previous GOP for an open-GOP leading picture; when
  the selection is key frames this is key-frame-only decoding. Frames are matched by pts
  and only the selected ones are converted to RGB (:func:`to_rgb`, one persistent
  ``VideoReformatter``). Should a selected frame not come out, or come out concealed, it
  decodes the whole stream once more in order; only then is a missing frame an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from datapipe.errors import ItemError
from datapipe.stages.common.video_open import (
    DEFAULT_MAX_PIXELS,
    PTS_UNKNOWN,
    VideoInfo,
    VideoReader,
    frame_pts,
)

if TYPE_CHECKING:  # PyAV is imported where a video is decoded
    import av
    from av.video.reformatter import VideoReformatter


@dataclass
class FrameTable:
    """Every frame of a video as the demuxer lists it, presentation order."""

    #: int64 (T) presentation timestamps in the stream time base (PTS_UNKNOWN when absent)
    pts: np.ndarray
    #: float64 (T) seconds: pts x time base, or index / frame rate without timestamps
    seconds: np.ndarray
    #: bool (T) key-frame flags of the packets
    key: np.ndarray
    #: int32 (T) packet bytes
    size: np.ndarray
    #: int64 (T) position of each frame's packet in decode order
    decode_pos: np.ndarray
    #: all packets carry a pts (frames are then matched by pts)
    timestamps: bool
    info: VideoInfo
    damaged: int

    @property
    def n(self) -> int:
        return len(self.pts)


def to_seconds(pts: np.ndarray, info: VideoInfo) -> np.ndarray:
    """float64 seconds of presentation timestamps; frame index / average frame rate where a
    pts is unknown, NaN where neither is known."""
    pts = np.asarray(pts, dtype=np.int64)
    out = np.full(len(pts), np.nan)
    known = pts != PTS_UNKNOWN
    if info.time_base:
        out[known] = pts[known] * float(info.time_base)
    else:
        known[:] = False
    if not known.all() and info.average_rate:
        missing = np.flatnonzero(~known)
        out[missing] = missing / float(info.average_rate)
    return out


def scan_frames(
    path: str | os.PathLike[str],
    *,
    probe: bool = True,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FrameTable:
    """List a video's frames from its packets (see the module docstring).

    ``probe`` checks that at least one frame decodes (bitstream only, stopping at the first).

    >>> table = scan_frames("clip.mp4")  # doctest: +SKIP
    >>> table.n, np.flatnonzero(table.key).tolist()  # doctest: +SKIP
    (24, [0, 12])
    """
    with VideoReader(path, strict=strict, max_pixels=max_pixels) as reader:
        reader.configure(skip_pixels=True)
        info = reader.info
        size: list[int] = []
        key: list[bool] = []
        pts: list[int] = []

        def source() -> Iterator[av.Packet]:
            for packet in reader.demux():
                if packet.size:
                    size.append(packet.size)
                    key.append(bool(packet.is_keyframe))
                    pts.append(PTS_UNKNOWN if packet.pts is None else int(packet.pts))
                yield packet

        packets = source()
        decoded = 0
        if probe:
            for _ in reader.frames(1, packets=packets):
                decoded += 1
        for _ in packets:  # the rest is demuxed only
            pass
        reader.stopped_early = False  # every packet was read: count the lost ones
        reader.packets_read = len(size)
        damage = reader.finish(decoded if probe else len(size))
    p = np.asarray(pts, dtype=np.int64)
    timestamps = bool(len(p)) and bool((p != PTS_UNKNOWN).all())
    order = np.argsort(p, kind="stable") if timestamps else np.arange(len(p))
    return FrameTable(
        pts=p[order],
        seconds=to_seconds(p[order], info),
        key=np.asarray(key, dtype=bool)[order],
        size=np.asarray(size, dtype=np.int32)[order],
        decode_pos=order.astype(np.int64),
        timestamps=timestamps,
        info=info,
        damaged=damage.damaged,
    )


def to_rgb(reformatter: VideoReformatter, frame: av.VideoFrame) -> np.ndarray:
    """uint8 (H, W, 3) RGB of a decoded frame; the one place key-frame stages convert."""
    return reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()


def gop_plan(table: FrameTable, wanted: np.ndarray) -> np.ndarray:
    """bool (P) over decode positions: the packets to send so that the frames ``wanted``
    (presentation indices) decode. Each needed GOP is sent from its key packet to its last
    wanted packet; a wanted leading picture (decoded after its GOP's key frame, shown
    before it: open GOP) also needs the whole previous GOP."""
    n = table.n
    key_dec = np.zeros(n, dtype=bool)
    key_dec[table.decode_pos] = table.key
    gop = np.cumsum(key_dec) - 1  # -1: packets before the first key packet
    starts = np.flatnonzero(key_dec)
    present = np.empty(n, dtype=np.int64)  # decode position -> presentation index
    present[table.decode_pos] = np.arange(n)
    plan = np.zeros(n, dtype=bool)

    def span(g: int, last: int) -> None:
        first = 0 if g < 0 else int(starts[g])
        plan[first : last + 1] = True

    for q in table.decode_pos[np.unique(wanted)]:
        g = int(gop[q])
        span(g, int(q))
        if g >= 0 and present[q] < present[starts[g]]:  # leading picture
            span(g - 1, int(starts[g]) - 1)
    return plan


def decode_selected(
    path: str | os.PathLike[str],
    table: FrameTable,
    indices: np.ndarray,
    *,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """uint8 (K, H, W, 3) RGB of the frames at ``indices`` (presentation order, repeats
    allowed), converting no other frame (see the module docstring).

    Raises ItemError ``invalid`` for an index outside the table, ``corrupt`` when a selected
    frame does not decode even in a full pass.
    """
    idx = np.asarray(indices, dtype=np.int64)
    h, w = table.info.height, table.info.width
    if len(idx) == 0:
        return np.zeros((0, h, w, 3), np.uint8)
    if idx.min() < 0 or idx.max() >= table.n:
        raise ItemError("invalid", f"frame index {int(idx.max())} outside a {table.n}-frame video")
    wanted = np.unique(idx)
    got: dict[int, np.ndarray] = {}
    if table.timestamps:
        plan = gop_plan(table, wanted)
        _decode_pass(path, table, wanted, got, plan, strict=False, max_pixels=max_pixels)
    missing = [int(i) for i in wanted if int(i) not in got]
    if missing:
        _decode_pass(path, table, wanted, got, None, strict=strict, max_pixels=max_pixels)
        missing = [int(i) for i in wanted if int(i) not in got]
    if missing:
        raise ItemError(
            "corrupt",
            f"{len(missing)} selected frame(s) could not be decoded (first: frame {missing[0]})",
        )
    return np.stack([got[int(i)] for i in idx])


def _decode_pass(
    path: str | os.PathLike[str],
    table: FrameTable,
    wanted: np.ndarray,
    got: dict[int, np.ndarray],
    plan: np.ndarray | None,
    *,
    strict: bool,
    max_pixels: int,
) -> None:
    """One decoding pass: ``plan`` (GOP skipping, concealed frames refused) or every packet
    (``plan`` None; matched by pts, else by rank; the damage policy applied)."""
    from av.video.reformatter import VideoReformatter

    want = {int(i) for i in wanted} - set(got)
    index_of = {int(p): i for i, p in enumerate(table.pts)} if table.timestamps else None
    last = int(np.flatnonzero(plan)[-1]) if plan is not None and plan.any() else -1
    with VideoReader(path, strict=strict, max_pixels=max_pixels) as reader:
        reader.configure()
        read = 0

        def source() -> Iterator[av.Packet | None]:
            nonlocal read
            for packet in reader.demux():
                if packet.size:
                    pos, read = read, read + 1
                    if plan is not None:
                        if pos > last:
                            yield None  # all that is needed was sent: flush and stop
                            return
                        if not plan[pos]:
                            continue
                yield packet

        reformatter = VideoReformatter()
        count = 0
        for frame in reader.frames(packets=source()):  # type: ignore[arg-type]
            i = index_of.get(frame_pts(frame), -1) if index_of is not None else count
            if i < 0 and plan is None:  # a frame whose pts no packet carries: its rank
                i = count
            count += 1
            if i in want and (plan is None or not frame.is_corrupt):
                got[i] = to_rgb(reformatter, frame)
                want.discard(i)
        if plan is None:
            reader.packets_read = read
            reader.finish(count)  # the damage policy (strict) of a full pass

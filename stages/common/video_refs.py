"""How many frames a motion vector spans: the reference distances behind per-frame motion.

FFmpeg's ``AVMotionVector`` gives a vector's direction (``source`` -1: list 0, a past
reference; +1: list 1, a future one) but not which frame it refers to, and its magnitude is
the motion over that whole distance. The distances are derived from the frame types, the
presentation order, and (H.264) which pictures are coded as references:

- **anchors** are I- and P-frames; **reference frames** are the anchors and the B-frames
  coded as references (H.264 B-pyramid: ``nal_ref_idc`` != 0 in the slice NAL headers, read
  from the packets; MPEG-1/2/4 B-frames are never references);
- a P-frame's vectors span the distance to the previous anchor;
- a B-frame's past vectors span the distance to the previous reference frame, its future
  vectors the distance to the next one (when a damaged stream ends first, the next reference
  is taken to be the frame after the last B-frame).

This is exact for streams coded with one reference frame per direction, with or without
B-pyramid (checked against x264 and FFmpeg's MPEG-2 encoder in the tests). With several
reference frames (x264 presets slower than ``veryfast``) a block may be predicted from an
older frame, and its vector is then divided by too small a distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    import av

T = TypeVar("T")
_SLICE_NAL_TYPES = (1, 5)  # coded slice of a non-IDR / IDR picture


def h264_reference_flag(data: bytes | memoryview, length_size: int) -> bool | None:
    """Whether an H.264 access unit is a reference picture (``nal_ref_idc`` != 0 in one of its
    slice NAL units); None when it holds no slice.

    ``length_size``: bytes of the NAL length prefix (AVCC, as in MP4 and Matroska), or 0 for
    start codes (Annex B, as in MPEG-TS and raw ``.h264``).

    >>> h264_reference_flag(b"\\x00\\x00\\x00\\x02\\x01\\x9e", 4)  # one slice, nal_ref_idc 0
    False
    >>> h264_reference_flag(b"\\x00\\x00\\x01\\x09\\xf0\\x00\\x00\\x01\\x41\\x9a", 0)
    True
    """
    data = bytes(data)
    headers: list[int] = []
    if length_size:
        pos = 0
        while pos + length_size < len(data):
            size = int.from_bytes(data[pos : pos + length_size], "big")
            headers.append(data[pos + length_size])
            pos += length_size + size
    else:
        pos = data.find(b"\x00\x00\x01")
        while 0 <= pos < len(data) - 3:
            headers.append(data[pos + 3])
            pos = data.find(b"\x00\x00\x01", pos + 3)
    refs = [(h >> 5) & 3 for h in headers if h & 0x1F in _SLICE_NAL_TYPES]
    return any(refs) if refs else None


class ReferenceFlags:
    """Watches a stream's packets (``VideoReader.frames(watch=...)``) and tells, per decoded
    frame, whether it is a reference picture."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        cc = stream.codec_context
        self.h264 = cc.name == "h264"
        extra = bytes(cc.extradata or b"")
        # avcC: configurationVersion 1, NAL length size in the low bits of byte 4
        self.length_size = (extra[4] & 3) + 1 if len(extra) > 4 and extra[0] == 1 else 0
        self.by_pts: dict[int, bool] = {}

    def see(self, packet: av.Packet) -> None:
        """Record the reference flag of an H.264 packet, by pts."""
        if self.h264 and packet.pts is not None:
            flag = h264_reference_flag(memoryview(packet), self.length_size)
            if flag is not None:
                self.by_pts[int(packet.pts)] = flag

    def reference(self, pts: int, kind: str) -> bool:
        """Whether the frame of ``pts`` and type ``kind`` ('I', 'P', 'B') is a reference;
        without a recorded flag, every I/P-frame is and no B-frame is."""
        return self.by_pts.pop(pts, kind != "B")


@dataclass
class ReferenceDistances(Generic[T]):
    """Frames pushed in presentation order; each comes back with the reference distances
    (past, future) of its vectors, in frames, once they are known (a B-frame waits for the
    next reference frame). See the module docstring for the rule."""

    anchor: int | None = None
    last_reference: int | None = None
    waiting: list[tuple[int, int, T]] = field(default_factory=list)

    def push(self, t: int, kind: str, reference: bool, item: T) -> list[tuple[T, int, int]]:
        """Frame ``t`` of type ``kind``; returns the (item, past, future) now complete."""
        before = self.last_reference if kind == "B" else self.anchor
        past = t - before if before is not None else 1
        ready = self._release(t) if reference else []
        if kind == "B":
            self.waiting.append((t, past, item))
        else:
            ready.append((item, past, 1))
        if reference:
            self.last_reference = t
            if kind != "B":
                self.anchor = t
        return ready

    def waiting_before(self, t: int) -> bool:
        """Whether a frame before ``t`` still waits for its next reference frame."""
        return any(w < t for w, _, _ in self.waiting)

    def finish(self) -> list[tuple[T, int, int]]:
        """The frames still waiting when the stream ends."""
        return self._release(self.waiting[-1][0] + 1) if self.waiting else []

    def _release(self, t: int) -> list[tuple[T, int, int]]:
        done = [(item, past, t - w) for w, past, item in self.waiting]
        self.waiting = []
        return done


def distances(types: Sequence[str], references: Sequence[bool]) -> list[tuple[int, int]]:
    """(past, future) reference distance of every frame of a clip, by the rule above.

    >>> distances("IBBPBBP", [True, False, False, True, False, False, True])
    [(1, 1), (1, 2), (2, 1), (3, 1), (1, 2), (2, 1), (3, 1)]
    >>> distances("IBBBP", [True, False, True, False, True])  # B-pyramid
    [(1, 1), (1, 1), (2, 2), (1, 1), (4, 1)]
    """
    tracker: ReferenceDistances[int] = ReferenceDistances()
    out: dict[int, tuple[int, int]] = {}
    for t, (kind, ref) in enumerate(zip(types, references, strict=True)):
        out.update((i, (p, f)) for i, p, f in tracker.push(t, kind, ref, t))
    out.update((i, (p, f)) for i, p, f in tracker.finish())
    return [out[t] for t in range(len(types))]

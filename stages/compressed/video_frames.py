"""``video.frame_types`` and ``video.iframes``: picture types per frame, and the key frames
decoded alone.

- :func:`frame_types` decodes the bitstream without the loop filter or inverse transform
  (pixels are not needed, picture types are unchanged) and reports 'I'/'P'/'B' per frame in
  presentation order. It works for every codec FFmpeg decodes, HEVC and VP9 included.
- :func:`iframes` asks the decoder to skip every non-key frame (``skip_frame="NONKEY"``), so
  its cost follows the number of key frames, not the clip length (VP8/VP9/AV1 decoders ignore
  that request, so their non-key packets are not sent), and converts each with one
  persistent ``VideoReformatter`` (``frame.to_ndarray(format="rgb24")`` builds a conversion
  context per frame). A key frame's index in the clip comes from the timestamps of all
  packets, read in the same pass (decode order when the stream has no timestamps).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
from pydantic import Field as PField

from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record
from datapipe.stages.common.video_damage import Damage
from datapipe.stages.common.video_open import (
    DEFAULT_MAX_PIXELS,
    PTS_UNKNOWN,
    VideoReader,
    frame_pts,
    pict_letter,
)

#: FFmpeg decoders that do not honour ``skip_frame`` (they would decode every frame)
_IGNORE_SKIP_FRAME = frozenset({"vp8", "vp9", "av1", "libdav1d", "libvpx", "libvpx-vp9"})


@dataclass
class FrameTypes:
    #: one letter per decoded frame, presentation order: 'I', 'P', 'B' ('?' if unknown)
    types: str
    #: int64 (T) presentation timestamps (PTS_UNKNOWN when absent)
    pts: np.ndarray
    #: bool (T): frames the decoder marks as key frames
    key: np.ndarray
    damaged: int
    codec: str


@dataclass
class KeyFrames:
    #: int64 (K): index of each key frame among all frames, presentation order
    indices: np.ndarray
    #: uint8 (K, H, W, 3) RGB
    frames: np.ndarray
    #: int64 (K)
    pts: np.ndarray
    damaged: int
    codec: str
    damage: Damage


def frame_types(
    path: str | os.PathLike[str],
    *,
    max_frames: int | None = None,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FrameTypes:
    """Picture type of every frame, presentation order (``ops.read_frame_types``).

    Returns
    -------
    FrameTypes
        ``types``, one letter per frame ('I', 'P', 'B', '?'), with each frame's ``pts`` and
        ``key`` flag, the damaged frame count and the codec.

    Examples
    --------
    >>> import os, tempfile
    >>> from datapipe.stages.common.video_synth import moving_square_clip
    >>> tmp = tempfile.TemporaryDirectory()
    >>> clip = os.path.join(tmp.name, "clip.mp4")
    >>> _ = moving_square_clip(clip, size=(64, 48), frames=12, gop=6)  # H.264, 2 GOPs
    >>> from datapipe import ops
    >>> ops.read_frame_types(clip).types
    'IPPPPPIPPPPP'
    >>> tmp.cleanup()
    """
    with VideoReader(path, strict=strict, max_pixels=max_pixels) as reader:
        reader.configure(skip_pixels=True)
        letters: list[str] = []
        pts: list[int] = []
        key: list[bool] = []
        for frame in reader.frames(max_frames):
            letters.append(pict_letter(frame))
            pts.append(frame_pts(frame))
            key.append(bool(frame.key_frame))
        damage = reader.finish(len(letters))
        codec = reader.info.codec
    return FrameTypes(
        types="".join(letters),
        pts=np.asarray(pts, dtype=np.int64),
        key=np.asarray(key, dtype=bool),
        damaged=damage.damaged,
        codec=codec,
    )


def read_iframes(
    path: str | os.PathLike[str],
    *,
    max_iframes: int | None = None,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> KeyFrames:
    """Decode only the key frames of a video to RGB, skipping every other frame.

    Returns
    -------
    KeyFrames
        ``indices`` int64 (K), the key frames' positions among all frames (presentation
        order); ``frames`` uint8 (K, H, W, 3) RGB, identical to a full decode's frames there
        (converted as ``to_ndarray(format="rgb24")``); their ``pts``, the damage, the codec.

    Examples
    --------
    >>> import os, tempfile
    >>> from datapipe.stages.common.video_synth import moving_square_clip
    >>> tmp = tempfile.TemporaryDirectory()
    >>> clip = os.path.join(tmp.name, "clip.mp4")
    >>> _ = moving_square_clip(clip, size=(64, 48), frames=12, gop=6)  # H.264, 2 GOPs
    >>> keys = read_iframes(clip)
    >>> keys.indices.tolist(), keys.frames.shape
    ([0, 6], (2, 48, 64, 3))
    >>> tmp.cleanup()
    """
    import av
    from av.video.reformatter import VideoReformatter

    with VideoReader(path, strict=strict, max_pixels=max_pixels) as reader:
        reader.configure(keyframes_only=True)
        info = reader.info
        stream = reader.stream
        packet_pts: list[int] = []
        key_packets: list[int] = []  # decode-order position of each key packet

        # these decoders ignore skip_frame: their non-key packets are not sent at all
        drop_inter = info.codec in _IGNORE_SKIP_FRAME

        def packets():  # type: ignore[no-untyped-def]
            for packet in reader.container.demux(stream):
                if packet.size:
                    if packet.is_keyframe:
                        key_packets.append(len(packet_pts))
                    packet_pts.append(PTS_UNKNOWN if packet.pts is None else int(packet.pts))
                    if drop_inter and not packet.is_keyframe:
                        continue
                yield packet

        reformatter = VideoReformatter()
        frames: list[np.ndarray] = []
        pts: list[int] = []
        source = packets()
        for frame in reader.frames(max_iframes, packets=source):
            if not frame.key_frame:
                continue
            rgb = reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
            frames.append(rgb)
            pts.append(frame_pts(frame))
        if reader.stopped_early:  # the remaining timestamps still place the key frames
            with contextlib.suppress(av.error.FFmpegError):
                for _ in source:
                    pass
        reader.packets_read = len(packet_pts)
        damage = reader.finish(len(frames))
    indices = _presentation_index(np.asarray(pts, np.int64), packet_pts, key_packets)
    stacked = np.stack(frames) if frames else np.zeros((0, info.height, info.width, 3), np.uint8)
    return KeyFrames(
        indices=indices,
        frames=stacked,
        pts=np.asarray(pts, dtype=np.int64),
        damaged=damage.damaged,
        codec=info.codec,
        damage=damage,
    )


def iframes(
    path: str | os.PathLike[str],
    *,
    max_iframes: int | None = None,
    strict: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, frames)`` of :func:`read_iframes`: what the deprecated ``ops.iframes``
    gives."""
    result = read_iframes(path, max_iframes=max_iframes, strict=strict, max_pixels=max_pixels)
    return result.indices, result.frames


def _presentation_index(
    frame_pts_: np.ndarray, packet_pts: list[int], key_packets: list[int]
) -> np.ndarray:
    """Index of each decoded key frame among all frames in presentation order: its rank among
    all packet timestamps, or (no timestamps) its key packet's decode-order position."""
    all_pts = np.asarray(packet_pts, dtype=np.int64)
    if len(frame_pts_) and (all_pts != PTS_UNKNOWN).all() and (frame_pts_ != PTS_UNKNOWN).all():
        return np.searchsorted(np.sort(all_pts), frame_pts_).astype(np.int64)
    return np.asarray(key_packets[: len(frame_pts_)], dtype=np.int64)


class _VideoParams(Params):
    strict: bool = PField(False, description="Damaged video is an error, not a count.")
    max_pixels: int = PField(DEFAULT_MAX_PIXELS, ge=1, description="Refuse larger frames.")


class FrameTypesParams(_VideoParams):
    max_frames: int | None = PField(None, ge=1, description="Read at most this many frames.")


class FrameTypesStage(Map):
    """Picture type of every frame: ``frame_types`` ('IPB...'), ``pts`` (int64, T),
    ``video_damage``. Works for every codec FFmpeg decodes (HEVC and VP9 included)."""

    name = "video.frame_types"
    description = "Picture type (I/P/B) and timestamp of every frame, without pixel output."
    Params = FrameTypesParams
    CONSUMES = (Field("path", "str", ""),)
    PRODUCES = (
        Field("frame_types", "str", "", "'I'/'P'/'B' per frame, presentation order"),
        Field("pts", "int64", "T", "presentation timestamps (stream time base)"),
        Field("video_damage", "int", "", "frames concealed or lost (0: clean)"),
    )
    isolate = True

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        ft = frame_types(
            ctx.resolve(record["path"]),
            max_frames=p.max_frames,
            strict=p.strict,
            max_pixels=p.max_pixels,
        )
        return {"frame_types": ft.types, "pts": ft.pts, "video_damage": int(ft.damaged)}


class IFramesParams(_VideoParams):
    max_iframes: int | None = PField(None, ge=1, description="Keep at most this many.")


class IFramesStage(Map):
    """Key frames decoded alone: ``iframes`` uint8 (K, H, W, 3) RGB, ``iframe_idx`` (int64,
    K: positions among all frames), ``video_damage``."""

    name = "video.iframes"
    description = "Decode only the key frames (I-frames) of a video to RGB."
    Params = IFramesParams
    CONSUMES = (Field("path", "str", ""),)
    PRODUCES = (
        Field("iframe_idx", "int64", "K", "key-frame positions among all frames"),
        Field("iframes", "uint8", "K H W 3", "key frames, RGB"),
        Field("video_damage", "int", "", "frames concealed or lost (0: clean)"),
    )
    isolate = True

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        kf = read_iframes(
            ctx.resolve(record["path"]),
            max_iframes=p.max_iframes,
            strict=p.strict,
            max_pixels=p.max_pixels,
        )
        return {"iframe_idx": kf.indices, "iframes": kf.frames, "video_damage": int(kf.damaged)}

"""Safe opening and decoding of untrusted video files with PyAV, shared by the ``video.*`` and
``keyframes.*`` stages.

What :class:`VideoReader` guarantees before a single frame is decoded:

- only a local regular file is read, through a Python file object: FFmpeg opens no URL or
  protocol, demuxers are limited to :data:`ALLOWED_FORMATS` (an HLS playlist or a
  ``concat:`` list named ``.mp4`` is refused) and any nested open a demuxer asks for fails
  (:mod:`~datapipe.stages.common.video_files`);
- a zero-byte file is ``empty``; a file with no video stream is ``unsupported``;
- the declared frame size is checked (``decode_bomb`` above ``max_pixels`` or a side above
  :data:`MAX_SIDE`; ``corrupt`` when none is declared) and the declared frame count against
  the file size (every coded frame takes at least one byte);
- decoding is single-threaded (``thread_type="NONE"``): FFmpeg's frame threading makes
  H.264 motion vectors differ from run to run, and one thread per item is what the engine's
  process pool expects.

While decoding, damage is counted instead of hidden
(:class:`~datapipe.stages.common.video_damage.Damage`): frames FFmpeg flags as
concealed (``frame.is_corrupt``), packets the decoder rejects, frames the container declares
but the file no longer holds (a truncated MP4), and FFmpeg error messages. ``strict=True``
turns any of them into an :class:`~datapipe.errors.ItemError`; by default the data decoded is
kept and the count is reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from datapipe.errors import ItemError
from datapipe.stages.common.video_damage import Damage
from datapipe.stages.common.video_files import (
    ffmpeg_reason,
    isobmff_truncated,
    open_regular,
    refuse_nested_open,
)

if TYPE_CHECKING:  # PyAV is imported where a video is opened, not with the stage
    import av

logger = logging.getLogger(__name__)

#: Demuxers a video may be read with (FFmpeg names; a demuxer matches if one of its names is here).
ALLOWED_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpeg,mpegts,mpegvideo,m4v,h264,hevc,ivf,flv,asf"
)
#: Default cap on declared pixels per frame (8K UHD).
DEFAULT_MAX_PIXELS = 7680 * 4320
#: Largest width or height accepted, whatever ``max_pixels`` says.
MAX_SIDE = 16384
#: Decoders that export motion vectors with ``flags2=+export_mvs`` (FFmpeg's H.264 decoder and
#: its MPEG-video family). HEVC, VP8/VP9 and AV1 decoders export none.
MV_CODECS = frozenset(
    {"h264", "mpeg4", "mpeg2video", "mpeg1video", "h263", "h263p", "h261", "flv"}
    | {"msmpeg4v1", "msmpeg4v2", "msmpeg4", "wmv1", "wmv2"}
)
#: ``pts`` value of frames and packets that carry none (raw elementary streams).
PTS_UNKNOWN = -(2**63)
#: ``frame.pict_type`` -> letter. S (MPEG-4 sprite/GMC) and SP are predicted; SI is intra;
#: BI (VC-1) is a B-frame coded intra.
PICT_LETTERS = {1: "I", 2: "P", 3: "B", 4: "P", 5: "I", 6: "P", 7: "B"}


@dataclass(frozen=True)
class VideoInfo:
    """What the container declares about its first video stream, read before decoding."""

    codec: str
    width: int
    height: int
    #: frames the container declares (0 when it does not say, e.g. Matroska, MPEG-PS, raw)
    declared_frames: int
    time_base: Fraction | None
    average_rate: Fraction | None
    container: str
    file_size: int
    stream_types: tuple[str, ...]


def pict_letter(frame: av.VideoFrame) -> str:
    """'I', 'P' or 'B' for a decoded frame ('?' when the decoder does not say)."""
    return PICT_LETTERS.get(int(frame.pict_type), "?")


def frame_pts(frame: av.VideoFrame) -> int:
    return PTS_UNKNOWN if frame.pts is None else int(frame.pts)


class VideoReader:
    """Open one untrusted video safely and decode its first video stream.

    Use as a context manager::

        with VideoReader(path, strict=False) as reader:
            reader.configure(export_mvs=True, skip_pixels=True)
            for frame in reader.frames():
                ...
            damage = reader.finish(n_decoded)

    Errors become :class:`~datapipe.errors.ItemError` with a class from ``ERROR_CLASSES``.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, strict: bool = False, max_pixels: int | None = None
    ) -> None:
        self.path = os.fspath(path)
        self.strict = strict
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        self.damage = Damage()
        self.packets_read = 0
        self.stopped_early = False
        self._fh: Any = None
        self._container: Any = None
        self._capture: Any = None
        self._log_level: int | None = None
        self._logs: list[tuple[int, str, str]] = []
        self._logs_seen = 0

    # -- opening ------------------------------------------------------------------------------
    def __enter__(self) -> VideoReader:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> None:
        import av
        import av.logging

        self._fh, size = open_regular(self.path)
        if size == 0:
            raise ItemError("empty", "zero-byte video file")
        self._log_level = av.logging.get_level()  # None: FFmpeg's messages are dropped
        if self._log_level is None or self._log_level < av.logging.ERROR:
            av.logging.set_level(av.logging.ERROR)  # restored in close()
        self._capture = av.logging.Capture()
        self._logs = self._capture.__enter__()
        try:
            self._container = av.open(
                self._fh,
                mode="r",
                container_options={"format_whitelist": ALLOWED_FORMATS},
                io_open=refuse_nested_open,
                metadata_errors="replace",
            )
        except av.error.FFmpegError as exc:
            raise self._open_error(exc, size) from None
        except PermissionError as exc:  # from refuse_nested_open
            raise ItemError("security", str(exc)) from None
        container = self._container
        videos = container.streams.video
        types = tuple(s.type for s in container.streams)
        if not videos:
            found = ", ".join(types) or "none"
            raise ItemError("unsupported", f"no video stream in the file (streams: {found})")
        stream = videos[0]
        if stream.codec_context is None:
            raise ItemError("unsupported", "no decoder available for the video stream's codec")
        cc = stream.codec_context
        width, height = int(cc.width or 0), int(cc.height or 0)
        if width <= 0 or height <= 0:
            raise ItemError("corrupt", f"the {cc.name} stream declares no frame size")
        if width > MAX_SIDE or height > MAX_SIDE or width * height > self.max_pixels:
            raise ItemError(
                "decode_bomb",
                f"declared frame size {width}x{height} exceeds the limit "
                f"({self.max_pixels} pixels, {MAX_SIDE} per side)",
            )
        declared = int(stream.frames or 0)
        if declared > size:
            raise ItemError(
                "decode_bomb", f"the stream declares {declared} frames in a {size}-byte file"
            )
        self.stream = stream
        self.container = container
        self.info = VideoInfo(
            codec=cc.name,
            width=width,
            height=height,
            declared_frames=declared,
            time_base=stream.time_base,
            average_rate=stream.average_rate,
            container=container.format.name,
            file_size=size,
            stream_types=types,
        )

    def _open_error(self, exc: av.error.FFmpegError, size: int) -> ItemError:
        detail = ffmpeg_reason(exc)
        if isobmff_truncated(self._fh, size):
            return ItemError("truncated", f"truncated MP4/MOV file: {detail}")
        return ItemError("corrupt", f"not a readable video file ({detail})")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None
            import av.logging

            av.logging.set_level(self._log_level)
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    # -- decoding -----------------------------------------------------------------------------
    def require_motion_vectors(self) -> None:
        """Raise ``unsupported`` when FFmpeg's decoder for this codec exports no vectors."""
        codec = self.info.codec
        if codec not in MV_CODECS:
            raise ItemError(
                "unsupported",
                f"FFmpeg's {codec} decoder exports no motion vectors "
                f"(supported: {', '.join(sorted(MV_CODECS))}); frame types, I-frames and "
                "packets still work",
            )

    def configure(
        self, *, export_mvs: bool = False, skip_pixels: bool = False, keyframes_only: bool = False
    ) -> None:
        """Set decoder options before the first packet.

        ``skip_pixels`` skips the loop filter and the inverse transform: the bitstream is
        still parsed in full, so frame types and motion vectors are unchanged (tested), but
        the pixels are not usable. ``keyframes_only`` makes the decoder drop non-key frames.
        """
        cc = self.stream.codec_context
        cc.thread_type = "NONE"
        cc.thread_count = 1
        options = {"max_pixels": str(self.max_pixels)}
        if export_mvs:
            options["flags2"] = "+export_mvs"
        if skip_pixels:
            options["skip_loop_filter"] = "all"
            options["skip_idct"] = "all"
        cc.options = options
        if keyframes_only:
            cc.skip_frame = "NONKEY"

    def demux(self) -> Iterator[av.Packet]:
        """The stream's packets, in decode order; a demux error is recorded as damage and
        ends the stream (what was read before it stays usable)."""
        import av

        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                self.damage.packet_errors += 1
                self.damage.note(f"demux: {ffmpeg_reason(exc)}")
                return
            yield packet

    def frames(
        self,
        max_frames: int | None = None,
        packets: Iterator[av.Packet] | None = None,
        watch: Callable[[av.Packet], None] | None = None,
    ) -> Iterator[av.VideoFrame]:
        """Decoded frames in presentation order; damage is counted, never raised here.

        ``packets`` replaces the demuxer (a caller that also looks at every packet); that
        caller then sets ``packets_read`` itself. ``watch`` sees every non-empty packet
        before it is decoded."""
        import av

        decode = self.stream.decode
        count_packets = packets is None
        if packets is None:
            packets = self.container.demux(self.stream)
        n = 0
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                self.damage.packet_errors += 1
                self.damage.note(f"demux: {ffmpeg_reason(exc)}")
                packet = None  # flush what the decoder holds
            if packet is not None and packet.size:
                if count_packets:
                    self.packets_read += 1
                if watch is not None:
                    watch(packet)
            try:
                decoded = decode(packet)
            except av.error.FFmpegError as exc:
                self.damage.packet_errors += 1
                self.damage.note(f"decode: {ffmpeg_reason(exc)}")
                decoded = []
            decoded.reverse()
            while decoded:
                frame = decoded.pop()
                if frame.width != self.info.width or frame.height != self.info.height:
                    raise ItemError(
                        "unsupported",
                        f"the frame size changes mid-stream ({self.info.width}x"
                        f"{self.info.height} -> {frame.width}x{frame.height})",
                    )
                if frame.is_corrupt:
                    self.damage.corrupt_frames += 1
                yield frame
                del frame  # no reference kept here: the frame and its buffers go back at once
                n += 1
                if max_frames is not None and n >= max_frames:
                    self.stopped_early = True
                    return
            if packet is None:
                break

    def finish(self, decoded: int) -> Damage:
        """Close the books after decoding ``decoded`` frames (or reading that many packets
        for demux-only work): count lost frames and logged errors, apply the policy."""
        d = self.damage
        self._collect_logs()
        if not self.stopped_early:
            missing = 0
            if self.info.declared_frames and self.info.container.startswith("mov"):
                missing = max(0, self.info.declared_frames - self.packets_read)
            d.lost_frames = missing + d.packet_errors
            if d.lost_frames:
                d.truncated = isobmff_truncated(self._fh, self.info.file_size)
        error_class = "truncated" if d.truncated else "corrupt"
        if decoded == 0:
            if d.damaged:
                raise ItemError(error_class, f"no frame could be decoded: {d.describe()}")
            raise ItemError("empty", f"the {self.info.codec} stream holds no decodable frame")
        if self.strict and d.damaged:
            raise ItemError(error_class, f"damaged video (strict): {d.describe()}")
        if d.damaged:
            logger.debug("%s: %s", self.path, d.describe())
        return d

    def _collect_logs(self) -> None:
        import av.logging

        for level, name, message in self._logs[self._logs_seen :]:
            if level <= av.logging.ERROR:
                self.damage.error_logs += 1
                self.damage.note(f"[{name}] {message}")
        self._logs_seen = len(self._logs)

"""Damage seen while reading one video: what :class:`~datapipe.stages.common.video_open.VideoReader`
counts instead of hiding (concealed frames, rejected packets, frames the container declares
but the file no longer holds, FFmpeg error messages) and how it is reported."""

from __future__ import annotations

from dataclasses import dataclass, field

_MAX_MESSAGES = 20


@dataclass
class Damage:
    """Damage seen while reading one video. ``damaged`` is the number reported in records."""

    corrupt_frames: int = 0
    packet_errors: int = 0
    lost_frames: int = 0
    error_logs: int = 0
    truncated: bool = False
    messages: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> int:
        """Frames concealed + frames lost; at least 1 when FFmpeg reported any error."""
        n = self.corrupt_frames + self.lost_frames
        return max(n, 1) if (self.error_logs or self.packet_errors) else n

    def note(self, message: str) -> None:
        if len(self.messages) < _MAX_MESSAGES:
            self.messages.append(message.strip())

    def describe(self) -> str:
        parts = []
        if self.corrupt_frames:
            parts.append(f"{self.corrupt_frames} frame(s) concealed by the decoder")
        if self.lost_frames:
            parts.append(f"{self.lost_frames} declared frame(s) lost")
        if self.truncated:
            parts.append("the file is truncated")
        if self.error_logs and not parts:
            parts.append(f"{self.error_logs} decoder error(s)")
        first = f"; first: {self.messages[0]}" if self.messages else ""
        return ", ".join(parts) + first

"""The file side of opening an untrusted video: only a local regular file is handed to FFmpeg
(through a Python file object, so FFmpeg opens no URL or protocol), any nested open a demuxer
asks for is refused, FFmpeg's errors become one readable reason, and a truncated MP4/MOV is
told apart from a corrupt one by walking its top-level boxes."""

from __future__ import annotations

import os
import stat
import struct
from typing import Any

from datapipe.errors import ItemError

_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp"}
_MAX_BOXES = 10_000  # top-level MP4 boxes walked when diagnosing a truncated file


def open_regular(path: str) -> tuple[Any, int]:
    """Open a local regular file for reading; refuse devices, FIFOs, sockets and directories."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ItemError("io", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ItemError("io", f"a directory, not a video file: {path}") from None
    except OSError as exc:
        raise ItemError("io", f"cannot open {path}: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ItemError("io", f"a directory, not a video file: {path}")
        raise ItemError("security", f"not a regular file (device, FIFO or socket): {path}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st.st_size


def refuse_nested_open(url: str, flags: int, options: dict[str, str]) -> Any:
    raise PermissionError(f"datapipe: the input tried to open another resource ({url!r})")


def ffmpeg_reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    log = getattr(exc, "log", None)
    if log and len(log) >= 3 and log[2]:
        text = f"{text}: [{log[1]}] {str(log[2]).strip()}"
    return text


def isobmff_truncated(fh: Any, size: int) -> bool:
    """Whether an MP4/MOV file's top-level boxes run past the end of the file."""
    if fh is None:
        return False
    pos, boxes = 0, 0
    try:
        while pos + 8 <= size and boxes < _MAX_BOXES:
            boxes += 1
            fh.seek(pos)
            head = fh.read(16)
            box_size, kind = struct.unpack(">I4s", head[:8])
            if pos == 0 and kind not in _ISO_BOXES:
                return False
            if box_size == 1:
                if len(head) < 16:
                    return True
                box_size = struct.unpack(">Q", head[8:16])[0]
            elif box_size == 0:
                return False  # extends to the end of the file by definition
            if box_size < 8:
                return False  # malformed, not truncated
            pos += box_size
        return boxes < _MAX_BOXES and (pos > size or 0 < size - pos < 8)
    except (OSError, struct.error):
        return False

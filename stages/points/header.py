"""Header checks for PLY, PCD and PTS point clouds, run before any decoder allocates.

What every format shares is here: reading the head of the file, splitting a header into
lines, and checking declared counts against ``max_points`` and the bytes the file holds; and
the one-line PTS header. The formats' own headers: :mod:`.header_ply`, :mod:`.header_pcd`;
ASCII point rows: :mod:`.rows`.

Open3D sizes its buffers from the declared point count and reports failure only in a log
line: a truncated, garbled or lying file comes back as a cloud of the declared size whose
tail is zeros or uninitialised memory (measured with Open3D 0.20). So datapipe parses the
header itself and checks the declared counts and types against the file size first.

Classes of :class:`~datapipe.errors.ItemError` raised here:

- ``corrupt``: not a header of the format, or one that contradicts itself;
- ``unsupported``: a valid file datapipe cannot read as a point cloud (no x/y/z, types
  Open3D would silently read as 0.0, an unknown version);
- ``truncated``: the data the header declares needs more bytes than the file holds, by at
  most :data:`BOMB_RATIO` times;
- ``decode_bomb``: more points than ``max_points``, or declared data needing more than
  :data:`BOMB_RATIO` times the bytes the file holds (refused before allocating).
"""

from __future__ import annotations

from pathlib import Path

from datapipe.errors import ItemError

#: A header must end within this many bytes.
MAX_HEADER_BYTES = 1 << 16
#: Declared data needing more than this many times the bytes present is a decode bomb, not a
#: truncated file.
BOMB_RATIO = 16


def read_head(path: Path, size: int) -> bytes:
    """The first bytes of ``path``, enough for any header datapipe accepts."""
    with open(path, "rb") as fh:
        return fh.read(min(size, MAX_HEADER_BYTES))


def header_lines(head: bytes, size: int, end: bytes, what: str) -> tuple[list[str], int]:
    """Split the header up to and including the line ``end`` (matched by its first word);
    return its lines and its length in bytes."""
    pos = 0
    lines: list[str] = []
    while True:
        nl = head.find(b"\n", pos)
        if nl < 0:
            if len(head) >= MAX_HEADER_BYTES:
                raise ItemError("corrupt", f"no end of the {what} header in the first 64 KiB")
            raise ItemError("truncated", f"the file ends inside the {what} header")
        raw = head[pos:nl]
        pos = nl + 1
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ItemError("corrupt", f"non-ASCII bytes in the {what} header") from None
        lines.append(line)
        if line.split()[:1] == [end.decode()]:
            return lines, pos


def size_check(what: str, needed: int, have: int) -> None:
    """Compare the bytes the header's counts need with the bytes the file holds."""
    if needed <= have:
        return
    if needed > BOMB_RATIO * max(have, 1):
        raise ItemError(
            "decode_bomb",
            f"{what} needs at least {needed:,} bytes but the file holds {have:,} after its "
            "header; refused before allocating",
        )
    raise ItemError(
        "truncated", f"{what} needs at least {needed:,} bytes but the file holds {have:,}"
    )


def count_check(n: int, max_points: int, what: str) -> None:
    """Refuse a declared point count above ``max_points`` (``decode_bomb``)."""
    if n > max_points:
        raise ItemError(
            "decode_bomb", f"{what} declares {n:,} points, more than max_points={max_points:,}"
        )


def check_pts(head: bytes, size: int, max_points: int) -> tuple[int | None, int]:
    """A PTS file may start with a line holding the point count; Open3D then reads exactly
    that many lines, whatever the file holds. Return (count or None, bytes of that line)."""
    stripped = head.lstrip()
    first = stripped.split(b"\n", 1)[0].split()
    if len(first) != 1 or not first[0].isdigit():
        return None, 0
    n = int(first[0])
    offset = len(head) - len(stripped) + stripped.index(b"\n") + 1 if b"\n" in stripped else size
    count_check(n, max_points, "PTS header")
    size_check(f"PTS data ({n:,} points)", n * 6 - 1, size - offset)  # "0 0 0\n" per point
    return n, offset

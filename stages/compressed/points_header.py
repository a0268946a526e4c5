"""Header checks for PLY, PCD and PTS point clouds, run before any decoder allocates, and a
strict parser for ASCII point rows.

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

import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datapipe.errors import ItemError

#: A header must end within this many bytes.
MAX_HEADER_BYTES = 1 << 16
#: Declared data needing more than this many times the bytes present is a decode bomb, not a
#: truncated file.
BOMB_RATIO = 16
#: LZF (PCD ``binary_compressed``) cannot expand data by more than about 100x.
LZF_MAX_RATIO = 100

PLY_TYPES: dict[str, str] = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
PLY_FORMATS = ("ascii", "binary_little_endian", "binary_big_endian")
#: PCD (TYPE, SIZE) pairs Open3D decodes; others it reads as 0.0 without a word.
PCD_SUPPORTED = {("F", 4), ("F", 8), ("I", 1), ("I", 2), ("I", 4), ("U", 1), ("U", 2), ("U", 4)}
PCD_DATA = ("ascii", "binary", "binary_compressed")


def read_head(path: Path, size: int) -> bytes:
    """The first bytes of ``path``, enough for any header datapipe accepts."""
    with open(path, "rb") as fh:
        return fh.read(min(size, MAX_HEADER_BYTES))


def _header_lines(head: bytes, size: int, end: bytes, what: str) -> tuple[list[str], int]:
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


def _size_check(what: str, needed: int, have: int) -> None:
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


def _count_check(n: int, max_points: int, what: str) -> None:
    if n > max_points:
        raise ItemError(
            "decode_bomb", f"{what} declares {n:,} points, more than max_points={max_points:,}"
        )


# --------------------------------------------------------------------------- PLY


@dataclass(frozen=True)
class PlyProperty:
    name: str
    #: numpy type code of the value (of each item, for a list)
    dtype: str
    #: numpy type code of a list's length prefix; None for a scalar property
    count_dtype: str | None = None


@dataclass(frozen=True)
class PlyElement:
    name: str
    count: int
    properties: tuple[PlyProperty, ...]

    def has_lists(self) -> bool:
        return any(p.count_dtype for p in self.properties)

    def min_bytes(self, binary: bool) -> int:
        """The fewest bytes one instance can take (exact for binary without lists)."""
        if not binary:  # every value at least one character and one separator
            return 2 * len(self.properties)
        return sum(
            int(p.count_dtype[1]) if p.count_dtype else int(p.dtype[1]) for p in self.properties
        )

    def prop(self, name: str) -> PlyProperty | None:
        return next((p for p in self.properties if p.name == name), None)

    def has(self, *names: str) -> bool:
        return all(self.prop(n) is not None and not self.prop(n).count_dtype for n in names)


@dataclass(frozen=True)
class PlyHeader:
    format: str
    elements: tuple[PlyElement, ...]
    #: bytes and lines before the body
    header_bytes: int
    header_lines: int

    @property
    def vertex(self) -> PlyElement:
        return next(e for e in self.elements if e.name == "vertex")

    def rows_before_vertex(self) -> int:
        """ASCII lines of the elements that come before ``vertex`` in the body."""
        rows = 0
        for e in self.elements:
            if e.name == "vertex":
                return rows
            rows += e.count
        return rows


def parse_ply_header(head: bytes, size: int) -> PlyHeader:
    """Parse a PLY header from the first bytes of a file of ``size`` bytes."""
    if not head.startswith(b"ply\n") and not head.startswith(b"ply\r\n"):
        raise ItemError("corrupt", "not a PLY file (no 'ply' magic line)")
    lines, nbytes = _header_lines(head, size, b"end_header", "PLY")
    fmt = None
    elements: list[tuple[str, int, list[PlyProperty]]] = []
    for i, line in enumerate(lines[1:-1], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        bad = f"PLY header line {i}: {line[:80]!r}"
        if words[0] == "format":
            if len(words) != 3 or words[1] not in PLY_FORMATS:
                raise ItemError("corrupt", bad)
            if words[2] != "1.0":
                raise ItemError("unsupported", f"PLY version {words[2]!r} (only 1.0)")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise ItemError("corrupt", bad)
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise ItemError("corrupt", f"{bad} (a property before any element)")
            if len(words) == 3 and words[1] in PLY_TYPES:
                prop = PlyProperty(words[2], PLY_TYPES[words[1]])
            elif (
                len(words) == 5
                and words[1] == "list"
                and words[2] in PLY_TYPES
                and words[3] in PLY_TYPES
                and not PLY_TYPES[words[2]].startswith("f")
            ):
                prop = PlyProperty(words[4], PLY_TYPES[words[3]], PLY_TYPES[words[2]])
            else:
                raise ItemError("corrupt", bad)
            elements[-1][2].append(prop)
        else:
            raise ItemError("corrupt", bad)
    if fmt is None:
        raise ItemError("corrupt", "PLY header has no 'format' line")
    elems = tuple(PlyElement(n, c, tuple(p)) for n, c, p in elements)
    return PlyHeader(fmt, elems, nbytes, len(lines))


def check_ply(header: PlyHeader, size: int, max_points: int) -> None:
    """Refuse a PLY whose vertex element is unusable or whose counts the file cannot hold."""
    names = [e.name for e in header.elements]
    if "vertex" not in names:
        raise ItemError("unsupported", f"PLY has no 'vertex' element (elements: {names})")
    v = header.vertex
    if not v.has("x", "y", "z"):
        got = [p.name for p in v.properties]
        raise ItemError("unsupported", f"PLY vertex element lacks scalar x, y, z (has {got})")
    _count_check(v.count, max_points, "PLY header")
    binary = header.format != "ascii"
    needed = sum(e.count * e.min_bytes(binary) for e in header.elements)
    if not binary:
        needed -= 1  # the last line may lack its newline
    _size_check(f"PLY body ({v.count:,} vertices)", needed, size - header.header_bytes)


# --------------------------------------------------------------------------- PCD


@dataclass(frozen=True)
class PcdHeader:
    fields: tuple[str, ...]
    sizes: tuple[int, ...]
    types: tuple[str, ...]
    counts: tuple[int, ...]
    points: int
    data: str
    header_bytes: int
    header_lines: int

    @property
    def point_bytes(self) -> int:
        return sum(s * c for s, c in zip(self.sizes, self.counts, strict=True))

    @property
    def columns(self) -> int:
        return sum(self.counts)

    def column(self, name: str) -> int | None:
        """Index of a field's first value in an ASCII row, or None when absent."""
        if name not in self.fields:
            return None
        i = self.fields.index(name)
        return sum(self.counts[:i])

    def kind(self, name: str) -> tuple[str, int]:
        i = self.fields.index(name)
        return self.types[i], self.sizes[i]

    def has(self, *names: str) -> bool:
        return all(n in self.fields and self.counts[self.fields.index(n)] == 1 for n in names)

    def color_field(self) -> str | None:
        return next((f for f in ("rgb", "rgba") if self.has(f) and self.kind(f)[1] == 4), None)


def _ints(words: list[str], what: str) -> tuple[int, ...]:
    if not words or not all(w.isdigit() for w in words):
        raise ItemError("corrupt", f"PCD header: {what} must be non-negative integers")
    return tuple(int(w) for w in words)


def parse_pcd_header(head: bytes, size: int) -> PcdHeader:
    """Parse a PCD (v0.5-0.7) header from the first bytes of a file of ``size`` bytes."""
    start = head.lstrip()[:10].upper()
    if not (start.startswith(b"#") or start.startswith(b"VERSION") or start.startswith(b"FIELDS")):
        raise ItemError("corrupt", "not a PCD file (no VERSION or FIELDS line)")
    lines, nbytes = _header_lines(head, size, b"DATA", "PCD")
    kv: dict[str, list[str]] = {}
    for line in lines:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        key = words[0].upper()
        if key == "COLUMNS":  # PCD v0.5
            key = "FIELDS"
        kv[key] = words[1:]
    fields = tuple(kv.get("FIELDS", ()))
    if not fields:
        raise ItemError("corrupt", "PCD header has no FIELDS")
    sizes = _ints(kv.get("SIZE", []), "SIZE")
    types = tuple(t.upper() for t in kv.get("TYPE", []))
    counts = _ints(kv["COUNT"], "COUNT") if "COUNT" in kv else (1,) * len(fields)
    if not len(sizes) == len(types) == len(counts) == len(fields):
        raise ItemError("corrupt", "PCD header: FIELDS, SIZE, TYPE and COUNT differ in length")
    for f, t, s, c in zip(fields, types, sizes, counts, strict=True):
        if t not in ("F", "I", "U") or s not in (1, 2, 4, 8) or (t == "F" and s not in (4, 8)):
            raise ItemError("corrupt", f"PCD field {f!r}: TYPE {t} SIZE {s}")
        if c < 1:
            raise ItemError("corrupt", f"PCD field {f!r}: COUNT {c}")
    (width,) = _ints(kv.get("WIDTH", [])[:1], "WIDTH")
    (height,) = _ints(kv.get("HEIGHT", ["1"])[:1], "HEIGHT")
    points = _ints(kv["POINTS"][:1], "POINTS")[0] if "POINTS" in kv else width * height
    if points != width * height:
        raise ItemError("corrupt", f"PCD POINTS {points} but WIDTH x HEIGHT = {width * height}")
    data = (kv.get("DATA") or ["?"])[0].lower()
    return PcdHeader(fields, sizes, types, counts, points, data, nbytes, len(lines))


def check_pcd(header: PcdHeader, path: Path, size: int, max_points: int) -> None:
    """Refuse a PCD whose xyz types Open3D misreads or whose counts the file cannot hold."""
    if header.data not in PCD_DATA:
        raise ItemError("unsupported", f"PCD DATA {header.data!r} (expected one of {PCD_DATA})")
    if not header.has("x", "y", "z"):
        raise ItemError("unsupported", f"PCD lacks single-valued x, y, z (has {header.fields})")
    for name in ("x", "y", "z", "normal_x", "normal_y", "normal_z"):
        if name in header.fields and header.kind(name) not in PCD_SUPPORTED:
            t, s = header.kind(name)
            raise ItemError("unsupported", f"PCD field {name!r} of TYPE {t} SIZE {s}")
    _count_check(header.points, max_points, "PCD header")
    have = size - header.header_bytes
    what = f"PCD data ({header.points:,} points)"
    if header.data == "ascii":
        _size_check(what, header.points * 2 * header.columns - 1, have)
    elif header.data == "binary":
        _size_check(what, header.points * header.point_bytes, have)
    else:
        _check_compressed(header, path, have, what)


def _check_compressed(header: PcdHeader, path: Path, have: int, what: str) -> None:
    """binary_compressed: two uint32 sizes, then LZF data; Open3D trusts both sizes."""
    if have < 8:
        raise ItemError("truncated", "PCD binary_compressed data ends before its sizes")
    with open(path, "rb") as fh:
        fh.seek(header.header_bytes)
        compressed, uncompressed = struct.unpack("<II", fh.read(8))
    expected = header.points * header.point_bytes
    if uncompressed != expected:
        raise ItemError(
            "corrupt",
            f"PCD binary_compressed: uncompressed size {uncompressed:,} bytes, but "
            f"{header.points:,} points x {header.point_bytes} bytes = {expected:,}",
        )
    if uncompressed > LZF_MAX_RATIO * compressed + 1024:
        raise ItemError(
            "decode_bomb",
            f"PCD binary_compressed: {compressed:,} compressed bytes cannot hold "
            f"{uncompressed:,}; refused before allocating",
        )
    _size_check(what, compressed, have - 8)


# --------------------------------------------------------------------------- PTS


def check_pts(head: bytes, size: int, max_points: int) -> tuple[int | None, int]:
    """A PTS file may start with a line holding the point count; Open3D then reads exactly
    that many lines, whatever the file holds. Return (count or None, bytes of that line)."""
    stripped = head.lstrip()
    first = stripped.split(b"\n", 1)[0].split()
    if len(first) != 1 or not first[0].isdigit():
        return None, 0
    n = int(first[0])
    offset = len(head) - len(stripped) + stripped.index(b"\n") + 1 if b"\n" in stripped else size
    _count_check(n, max_points, "PTS header")
    _size_check(f"PTS data ({n:,} points)", n * 6 - 1, size - offset)  # "0 0 0\n" per point
    return n, offset


# --------------------------------------------------------------------------- ASCII bodies


def load_rows(
    path: Path,
    offset: int,
    ncols: int | None,
    *,
    skip: int = 0,
    rows: int | None = None,
    max_points: int | None = None,
    comments: str | None = None,
) -> np.ndarray:
    """Parse whitespace-separated numbers from byte ``offset`` on: ``rows`` rows exactly when
    given (after skipping ``skip`` lines), else every row up to ``max_points``."""
    if rows == 0:
        return np.zeros((0, ncols or 3))
    limit = rows if rows is not None else (max_points or 0) + 1
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # blank lines, no data at all
            fh.seek(offset)
            table = np.loadtxt(
                fh,
                dtype=np.float64,
                comments=comments,
                skiprows=skip,
                max_rows=limit,
                ndmin=2,
                encoding="latin-1",
            )
    except ValueError as exc:
        if ends_mid_line(path, ncols):
            raise ItemError("truncated", "the file ends in the middle of a line") from None
        why = str(exc).split("; use `usecols`")[0]
        raise ItemError("corrupt", f"cannot parse the point data: {why}") from None
    if table.size == 0:
        return np.zeros((0, ncols or 3))
    if rows is not None and len(table) < rows:
        raise ItemError(
            "truncated", f"the header declares {rows:,} points; the file holds {len(table):,}"
        )
    if rows is None and max_points is not None and len(table) > max_points:
        raise ItemError("decode_bomb", f"the file holds more than max_points={max_points:,} points")
    if len(table) and ncols is not None and table.shape[1] != ncols:
        if ends_mid_line(path, ncols):
            raise ItemError("truncated", "the file ends in the middle of a line")
        raise ItemError("corrupt", f"rows hold {table.shape[1]} values; expected {ncols}")
    return table


def ends_mid_line(path: Path, ncols: int | None) -> bool:
    """Whether the last line is shorter than a full row (what a cut-off file looks like)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        fh.seek(max(0, end - 4096))
        tail = fh.read()
    if tail.endswith(b"\n"):
        return False
    lines = tail.split(b"\n")
    expected = ncols or (len(lines[-2].split()) if len(lines) > 1 else 0)
    return len(lines[-1].split()) < expected

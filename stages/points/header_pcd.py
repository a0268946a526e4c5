"""PCD (v0.5-0.7) headers: parsed from the first bytes of the file, then checked against the
file size (:func:`check_pcd`; for ``binary_compressed`` also the two LZF sizes) before Open3D
or the ASCII parser allocates (see :mod:`.header`)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from datapipe.errors import ItemError
from datapipe.stages.points.header import count_check, header_lines, size_check

#: LZF (PCD ``binary_compressed``) cannot expand data by more than about 100x.
LZF_MAX_RATIO = 100
#: PCD (TYPE, SIZE) pairs Open3D decodes; others it reads as 0.0 without a word.
PCD_SUPPORTED = {("F", 4), ("F", 8), ("I", 1), ("I", 2), ("I", 4), ("U", 1), ("U", 2), ("U", 4)}
PCD_DATA = ("ascii", "binary", "binary_compressed")


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
    lines, nbytes = header_lines(head, size, b"DATA", "PCD")
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
    count_check(header.points, max_points, "PCD header")
    have = size - header.header_bytes
    what = f"PCD data ({header.points:,} points)"
    if header.data == "ascii":
        size_check(what, header.points * 2 * header.columns - 1, have)
    elif header.data == "binary":
        size_check(what, header.points * header.point_bytes, have)
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
    size_check(what, compressed, have - 8)

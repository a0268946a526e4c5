"""PLY headers: parsed from the first bytes of the file, then checked against the file size
(:func:`check_ply`) before Open3D or the ASCII parser allocates (see :mod:`.header`)."""

from __future__ import annotations

from dataclasses import dataclass

from datapipe.errors import ItemError
from datapipe.stages.points.header import count_check, header_lines, size_check

PLY_TYPES: dict[str, str] = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
PLY_FORMATS = ("ascii", "binary_little_endian", "binary_big_endian")


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
    lines, nbytes = header_lines(head, size, b"end_header", "PLY")
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
    count_check(v.count, max_points, "PLY header")
    binary = header.format != "ascii"
    needed = sum(e.count * e.min_bytes(binary) for e in header.elements)
    if not binary:
        needed -= 1  # the last line may lack its newline
    size_check(f"PLY body ({v.count:,} vertices)", needed, size - header.header_bytes)

"""Point clouds: ``points.read`` and its function :func:`read_points` (voxel grids are in
:mod:`.voxelize`).

Reading. Binary PLY and binary / binary_compressed PCD go through Open3D
(``o3d.io.read_point_cloud`` with an explicit ``format``) after datapipe has checked the
header against the file size (:mod:`.header`), because Open3D allocates the declared
count first and reports failure only in a log line. ASCII bodies (PLY, PCD, XYZ, XYZN, PTS)
are parsed with numpy instead: on a truncated line, a garbage token or a short file, Open3D
0.20 returns the declared number of points with zeros or uninitialised memory in the tail,
and its XYZ reader skips lines it cannot parse. The numpy parser reads the same values
(tests compare both on well-formed files) and fails loudly on anything else.

Colours come back in [0, 1]: integer channels divided by their type's maximum (uchar 255,
ushort 65535), float channels taken as they are, then clipped. Open3D itself divides every
PLY colour by 255 whatever its type; datapipe undoes that for float and 16-bit channels.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field as PField

from datapipe.errors import ItemError
from datapipe.fields import Field
from datapipe.stage import Context, Map, Params, Record
from datapipe.stages.points.header import check_pts, read_head
from datapipe.stages.points.header_pcd import check_pcd, parse_pcd_header
from datapipe.stages.points.header_ply import check_ply, parse_ply_header
from datapipe.stages.points.rows import ends_mid_line, load_rows

if TYPE_CHECKING:
    import open3d

#: file suffix -> Open3D format name
FORMATS = {".ply": "ply", ".pcd": "pcd", ".xyz": "xyz", ".xyzn": "xyzn", ".pts": "pts"}
#: about 2.2 GB at Open3D's float64 points + normals + colours and datapipe's float32 copy
DEFAULT_MAX_POINTS = 20_000_000
Attribute = Literal["normals", "colors"]


@dataclass(frozen=True)
class PointCloud:
    """A cloud as read: ``xyz`` float32 (N, 3); ``normals`` float32 (N, 3) or None;
    ``colors`` float32 (N, 3) in [0, 1] or None; ``num_nonfinite``: points dropped for
    NaN/inf coordinates (only with ``drop_nonfinite``)."""

    xyz: np.ndarray
    normals: np.ndarray | None = None
    colors: np.ndarray | None = None
    num_nonfinite: int = 0

    def __len__(self) -> int:
        return len(self.xyz)


def read_points(
    path: str | os.PathLike[str],
    *,
    drop_nonfinite: bool = False,
    max_points: int = DEFAULT_MAX_POINTS,
    fmt: str | None = None,
) -> PointCloud:
    """Read a PLY, PCD, XYZ, XYZN or PTS point cloud into float32 arrays.

    Parameters
    ----------
    path : a local regular file; its suffix picks the format unless ``fmt`` is given.
    drop_nonfinite : drop points with a NaN or infinite coordinate (counted in
        ``num_nonfinite``) instead of raising.
    max_points : refuse files declaring more points, before allocating (``decode_bomb``).
    fmt : ``ply``, ``pcd``, ``xyz``, ``xyzn`` or ``pts``.

    Raises
    ------
    ItemError
        ``empty``, ``truncated``, ``corrupt``, ``unsupported``, ``decode_bomb``, ``nonfinite``
        or ``io``, with a message naming what is wrong.

    Returns
    -------
    PointCloud
        ``xyz`` float32 (N, 3); ``normals`` and ``colors`` float32 (N, 3) or None.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> p = pathlib.Path(tmp.name) / "c.xyz"
    >>> _ = p.write_text("0 0 0\\n1 2 3\\n")
    >>> read_points(p).xyz.tolist()
    [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]
    >>> tmp.cleanup()
    """
    path = Path(path)
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt not in FORMATS.values():
        raise ItemError("unsupported", f"no point-cloud reader for {path.name!r}")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ItemError("io", f"cannot read {path.name!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ItemError("io", f"{path.name!r} is not a regular file")
    if st.st_size == 0:
        raise ItemError("empty", "zero-byte file")
    if fmt == "ply":
        xyz, normals, colors = _read_ply(path, st.st_size, max_points)
    elif fmt == "pcd":
        xyz, normals, colors = _read_pcd(path, st.st_size, max_points)
    else:
        xyz, normals, colors = _read_text(path, fmt, st.st_size, max_points)
    return _finish(xyz, normals, colors, drop_nonfinite)


def _finish(
    xyz: np.ndarray, normals: np.ndarray | None, colors: np.ndarray | None, drop: bool
) -> PointCloud:
    n = len(xyz)
    if n == 0:
        raise ItemError("empty", "the file holds no points")
    with np.errstate(over="ignore", invalid="ignore"):
        xyz = np.ascontiguousarray(xyz, dtype=np.float32)  # beyond float32 range -> inf
        normals = None if normals is None else np.ascontiguousarray(normals, dtype=np.float32)
        if colors is not None:
            colors = np.clip(np.ascontiguousarray(colors, dtype=np.float32), 0.0, 1.0)
    bad, finite = 0, None
    if not np.isfinite(xyz).all():  # the flat test first: all(axis=1) costs 10x more
        finite = np.isfinite(xyz).all(axis=1)
        bad = n - int(np.count_nonzero(finite))
    if bad and not drop:
        first = int(np.argmin(finite))
        raise ItemError(
            "nonfinite",
            f"{bad:,} of {n:,} points have a NaN or infinite coordinate (the first is point "
            f"{first}); set drop_nonfinite to drop them",
        )
    if bad:
        if bad == n:
            raise ItemError("nonfinite", f"all {n:,} points have a NaN or infinite coordinate")
        xyz = xyz[finite]
        normals = None if normals is None else normals[finite]
        colors = None if colors is None else colors[finite]
    return PointCloud(xyz, normals, colors, bad)


# --------------------------------------------------------------------------- PLY / PCD


def _read_ply(path: Path, size: int, max_points: int) -> tuple[np.ndarray, ...]:
    header = parse_ply_header(read_head(path, size), size)
    check_ply(header, size, max_points)
    v = header.vertex
    has_n, has_c = v.has("nx", "ny", "nz"), v.has("red", "green", "blue")
    if header.format == "ascii":
        if v.has_lists():
            raise ItemError("unsupported", "ASCII PLY with a list property in 'vertex'")
        names = [p.name for p in v.properties]
        table = load_rows(
            path,
            header.header_bytes,
            len(names),
            skip=header.rows_before_vertex(),
            rows=v.count,
        )
        xyz = table[:, [names.index(c) for c in "xyz"]]
        normals = table[:, [names.index(c) for c in ("nx", "ny", "nz")]] if has_n else None
        colors = None
        if has_c:
            colors = table[:, [names.index(c) for c in ("red", "green", "blue")]]
            colors = colors / [_color_max(v.prop(c).dtype) for c in ("red", "green", "blue")]
        return xyz, normals, colors
    pc = _open3d(path, "ply", v.count)
    normals = np.asarray(pc.normals) if has_n else None
    colors = None
    if has_c:  # Open3D divides by 255 whatever the type
        scale = [255.0 / _color_max(v.prop(c).dtype) for c in ("red", "green", "blue")]
        colors = np.asarray(pc.colors) * scale
    return np.asarray(pc.points), normals, colors


def _read_pcd(path: Path, size: int, max_points: int) -> tuple[np.ndarray, ...]:
    header = parse_pcd_header(read_head(path, size), size)
    check_pcd(header, path, size, max_points)
    has_n = header.has("normal_x", "normal_y", "normal_z")
    color = header.color_field()
    if header.data != "ascii":
        pc = _open3d(path, "pcd", header.points)
        normals = np.asarray(pc.normals) if has_n and pc.has_normals() else None
        colors = np.asarray(pc.colors) if color and pc.has_colors() else None
        return np.asarray(pc.points), normals, colors
    table = load_rows(path, header.header_bytes, header.columns, rows=header.points)
    xyz = table[:, [header.column(c) for c in "xyz"]]
    normals = None
    if has_n:
        normals = table[:, [header.column(f"normal_{c}") for c in "xyz"]]
    colors = None
    if color:  # packed 0x(aa)rrggbb: a float's bits (TYPE F) or an integer
        packed = table[:, header.column(color)]
        if header.kind(color)[0] == "F":
            bits = packed.astype(np.float32).view(np.uint32)
        else:
            bits = packed.astype(np.int64).astype(np.uint32)
        channels = [(bits >> shift) & 0xFF for shift in (16, 8, 0)]
        colors = np.stack(channels, axis=1) / 255.0
    return xyz, normals, colors


def _color_max(dtype: str) -> float:
    return {"u2": 65535.0, "i2": 32767.0}.get(dtype, 1.0 if dtype.startswith("f") else 255.0)


def _open3d(path: Path, fmt: str, expected: int) -> open3d.geometry.PointCloud:
    """Open3D's reader on a file whose header datapipe has checked; its log is silenced
    because its failures are reported here."""
    import open3d as o3d

    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        pc = o3d.io.read_point_cloud(str(path), format=fmt)
    got = len(pc.points)
    if got != expected:
        raise ItemError(
            "corrupt", f"Open3D read {got:,} of the {expected:,} points the header declares"
        )
    return pc


# --------------------------------------------------------------------------- text bodies


def _read_text(path: Path, fmt: str, size: int, max_points: int) -> tuple[np.ndarray, ...]:
    """XYZ (x y z ...), XYZN (x y z nx ny nz), PTS ([count line] x y z [i] [r g b])."""
    offset, declared = 0, None
    if fmt == "pts":
        declared, offset = check_pts(read_head(path, size), size, max_points)
    ncols = {"xyz": None, "xyzn": 6, "pts": None}[fmt]
    table = load_rows(path, offset, ncols, rows=declared, max_points=max_points, comments="#")
    cols = table.shape[1]
    if fmt == "xyz":
        if cols < 3:
            if ends_mid_line(path, 3):
                raise ItemError("truncated", "the file ends in the middle of a line")
            raise ItemError("corrupt", f"XYZ rows hold {cols} values; expected at least 3")
        return table[:, :3], None, None
    if fmt == "xyzn":
        return table[:, :3], table[:, 3:6], None
    if cols not in (3, 4, 6, 7):
        raise ItemError("corrupt", f"PTS rows hold {cols} values; expected 3, 4, 6 or 7")
    colors = table[:, cols - 3 :] / 255.0 if cols >= 6 else None
    return table[:, :3], None, colors


# --------------------------------------------------------------------------- stages


class PointsReadParams(Params):
    attributes: list[Attribute] = PField(
        default_factory=list,
        description="Per-point fields to produce besides points: 'normals', 'colors'. "
        "An item whose file lacks one becomes an error row ('unsupported').",
    )
    drop_nonfinite: bool = PField(
        False,
        description="Drop points with a NaN/inf coordinate (counted in num_nonfinite) "
        "instead of failing the item.",
    )
    max_points: int = PField(
        DEFAULT_MAX_POINTS, ge=1, description="Refuse files declaring more points."
    )


class PointsRead(Map):
    """Read a point cloud file into ``points`` float32 (N, 3), plus ``normals`` and
    ``colors`` float32 (N, 3) when asked for in ``attributes``; ``num_points`` and
    ``num_nonfinite`` (points dropped with ``drop_nonfinite``). Runs isolated: Open3D is
    not safe on hostile files."""

    name = "points.read"
    description = "Read a PLY/PCD/XYZ/XYZN/PTS point cloud into float32 points (+normals, colours)."
    Params = PointsReadParams
    CONSUMES = (Field("path", "str", ""),)
    isolate = True

    def produces(self) -> tuple[Field, ...]:
        docs = {"normals": "normals as stored", "colors": "RGB in [0, 1]"}
        return (
            Field("points", "float32", "N 3", "xyz coordinates"),
            *(Field(a, "float32", "N 3", docs[a]) for a in dict.fromkeys(self.params.attributes)),
            Field("num_points", "int", "", "points read (after dropping non-finite ones)"),
            Field("num_nonfinite", "int", "", "points dropped for a NaN/inf coordinate"),
        )

    def process(self, record: Record, ctx: Context) -> Record:
        p = self.params
        cloud = read_points(
            record["path"], drop_nonfinite=p.drop_nonfinite, max_points=p.max_points
        )
        out: Record = {
            "points": cloud.xyz,
            "num_points": len(cloud),
            "num_nonfinite": cloud.num_nonfinite,
        }
        for name in p.attributes:
            value = getattr(cloud, name)
            if value is None:
                raise ItemError("unsupported", f"the file has no {name} (asked for in attributes)")
            out[name] = value
        return out

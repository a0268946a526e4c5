"""Point clouds: reading every format against Open3D and the written data, bad files refused
with the right error class (bombs before allocating), voxelization against Open3D's
``voxel_down_sample`` and a brute-force oracle, and both stages through the engine."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d
import pytest

from datapipe import registry
from datapipe.errors import ConfigError, ItemError
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stage import Context
from datapipe.stages.points.read import PointsRead, read_points
from datapipe.stages.points.voxelize import PointsVoxelize, voxel_groups, voxelize
from datapipe.store import iter_samples
from datapipe.store.manifest import Manifest

STAGES = (PointsRead, PointsVoxelize)


@pytest.fixture(autouse=True, scope="module")
def _register() -> Iterator[None]:
    for cls in STAGES:
        registry.register(cls)
    yield
    for cls in STAGES:
        registry.unregister(cls.name)


def cloud(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32-exact points, unit normals, colours on the uchar grid."""
    rng = np.random.default_rng(seed)
    xyz = (rng.normal(size=(n, 3)) * 2).astype(np.float32)
    nrm = rng.normal(size=(n, 3))
    nrm = (nrm / np.linalg.norm(nrm, axis=1, keepdims=True)).astype(np.float32)
    rgb = (rng.integers(0, 256, size=(n, 3)) / 255.0).astype(np.float32)
    return xyz, nrm, rgb


def o3d_cloud(xyz: np.ndarray, nrm: np.ndarray | None, rgb: np.ndarray | None):
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    if nrm is not None:
        pc.normals = o3d.utility.Vector3dVector(nrm.astype(np.float64))
    if rgb is not None:
        pc.colors = o3d.utility.Vector3dVector(rgb.astype(np.float64))
    return pc


def ply_bytes(fmt: str, props: list[tuple[str, str]], rows: np.ndarray, extra: str = "") -> bytes:
    """A PLY with one vertex element; ``props`` are (name, PLY type); ``extra`` goes in the
    header before the vertex element (an element with no instances, say)."""
    codes = {"float": "f4", "double": "f8", "uchar": "u1", "ushort": "u2", "int": "i4"}
    head = f"ply\nformat {fmt} 1.0\n{extra}element vertex {len(rows)}\n"
    head += "".join(f"property {t} {n}\n" for n, t in props) + "end_header\n"
    if fmt == "ascii":
        body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in rows)
        return head.encode() + body.encode()
    order = "<" if fmt == "binary_little_endian" else ">"
    dt = np.dtype([(n, order + codes[t]) for n, t in props])
    rec = np.zeros(len(rows), dt)
    for i, (n, _) in enumerate(props):
        rec[n] = rows[:, i]
    return head.encode() + rec.tobytes()


XYZ_PROPS = [("x", "float"), ("y", "float"), ("z", "float")]


def read_err(path: Path, **kw: Any) -> ItemError:
    with pytest.raises(ItemError) as info:
        read_points(path, **kw)
    return info.value


# --------------------------------------------------------------------------- good files

# (suffix, write_point_cloud kwargs, normals kept, colours kept, exact float32 round trip)
OPEN3D_FILES = [
    ("ply", {"write_ascii": True}, True, True, False),
    ("ply", {}, True, True, True),
    ("pcd", {"write_ascii": True}, True, True, False),
    ("pcd", {}, True, True, True),
    ("pcd", {"compressed": True}, True, True, True),
    ("xyz", {}, False, False, False),
    ("xyzn", {}, True, False, False),
    ("pts", {}, False, True, False),
]


@pytest.mark.parametrize("with_attrs", [True, False], ids=["attrs", "xyz_only"])
@pytest.mark.parametrize(("suffix", "kw", "has_n", "has_c", "exact"), OPEN3D_FILES)
def test_open3d_written_files_read_back(
    tmp_path: Path, suffix: str, kw: dict, has_n: bool, has_c: bool, exact: bool, with_attrs: bool
) -> None:
    xyz, nrm, rgb = cloud(300, seed=len(suffix))
    path = tmp_path / f"c.{suffix}"
    with_n = with_attrs or suffix == "xyzn"  # XYZN cannot be written without normals
    src = o3d_cloud(xyz, nrm if with_n else None, rgb if with_attrs else None)
    assert o3d.io.write_point_cloud(str(path), src, **kw)
    got = read_points(path)
    assert got.xyz.dtype == np.float32 and got.xyz.shape == (300, 3) and got.num_nonfinite == 0
    oracle = o3d.io.read_point_cloud(str(path), format=suffix)
    # the same values Open3D reads (numpy parses the ASCII bodies), and the written ones
    np.testing.assert_array_equal(got.xyz, np.asarray(oracle.points).astype(np.float32))
    if exact:
        np.testing.assert_array_equal(got.xyz, xyz)
    else:
        np.testing.assert_allclose(got.xyz, xyz, rtol=1e-5, atol=1e-5)
    if with_n and has_n:
        assert got.normals is not None and got.normals.dtype == np.float32
        np.testing.assert_allclose(got.normals, nrm, rtol=1e-5, atol=1e-5)
    else:
        assert got.normals is None
    if with_attrs and has_c:
        assert got.colors is not None and got.colors.dtype == np.float32
        np.testing.assert_allclose(got.colors, rgb, atol=1e-6)
        np.testing.assert_allclose(got.colors, np.asarray(oracle.colors), atol=1e-6)
    else:
        assert got.colors is None


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_numpy_written_ply_with_mixed_types(tmp_path: Path, fmt: str) -> None:
    """Interleaved extra property, double x, int z, ushort colours; Open3D would scale
    16-bit colours by 1/255 (values up to 257)."""
    xyz = np.array([[1.5, -2.0, 3.0], [4.25, 5.0, -6.0], [0.0, 0.5, 7.0]])
    rgb16 = np.array([[0, 65535, 32768], [65535, 0, 1], [100, 200, 300]])
    props = [("x", "double"), ("intensity", "float"), ("y", "float"), ("z", "int")]
    props += [("red", "ushort"), ("green", "ushort"), ("blue", "ushort")]
    rows = np.column_stack([xyz[:, 0], [9, 8, 7], xyz[:, 1], xyz[:, 2], rgb16])
    path = tmp_path / "m.ply"
    path.write_bytes(ply_bytes(fmt, props, rows, extra="element camera 0\n"))
    got = read_points(path)
    np.testing.assert_array_equal(got.xyz, xyz.astype(np.float32))
    assert got.normals is None
    np.testing.assert_allclose(got.colors, rgb16 / 65535.0, atol=1e-7)


def test_float_colours_and_partial_normals(tmp_path: Path) -> None:
    """Open3D's tensor writer stores float colours (the legacy reader divides them by 255
    again); a vertex with only nx has no normals (Open3D fills the rest with garbage)."""
    xyz, nrm, rgb = cloud(50)
    t = o3d.t.geometry.PointCloud(o3d.core.Tensor(xyz))
    t.point.colors = o3d.core.Tensor(rgb)
    t.point.normals = o3d.core.Tensor(nrm)
    path = tmp_path / "t.ply"
    assert o3d.t.io.write_point_cloud(str(path), t)
    got = read_points(path)
    np.testing.assert_array_equal(got.xyz, xyz)
    np.testing.assert_array_equal(got.normals, nrm)
    np.testing.assert_allclose(got.colors, rgb, atol=1e-7)
    rows = np.column_stack([xyz[:2], [[0.5], [0.25]]])
    (tmp_path / "nx.ply").write_bytes(
        ply_bytes("binary_little_endian", [*XYZ_PROPS, ("nx", "float")], rows)
    )
    assert read_points(tmp_path / "nx.ply").normals is None


def test_pcd_ascii_float_packed_rgb_and_extra_fields(tmp_path: Path) -> None:
    packed = np.array([(10 << 16) | (20 << 8) | 30, (255 << 16) | 1], dtype=np.uint32)
    as_float = packed.view(np.float32)
    body = "".join(f"{i} {2 * i} {3 * i} 0.5 {float(f)!r}\n" for i, f in enumerate(as_float))
    head = (
        "# a comment\nVERSION .7\nFIELDS x y z intensity rgb\nSIZE 4 4 4 4 4\n"
        "TYPE F F F F F\nCOUNT 1 1 1 1 1\nWIDTH 2\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
        "POINTS 2\nDATA ascii\n"
    )
    path = tmp_path / "f.pcd"
    path.write_text(head + body)
    got = read_points(path)
    np.testing.assert_array_equal(got.xyz, [[0, 0, 0], [1, 2, 3]])
    np.testing.assert_allclose(got.colors * 255, [[10, 20, 30], [255, 0, 1]], atol=1e-4)
    oracle = o3d.io.read_point_cloud(str(path), format="pcd")
    np.testing.assert_allclose(got.colors, np.asarray(oracle.colors), atol=1e-7)


@pytest.mark.parametrize(
    ("text", "expected_cols"),
    [
        ("3\n1 2 3\n4 5 6\n7 8 9\n", None),  # count line, xyz
        ("1 2 3 0.5\n4 5 6 0.5\n", None),  # no count line, intensity
        ("2\n1 2 3 0.5 255 0 51\n4 5 6 0.7 0 255 0\n", [[1, 0, 0.2], [0, 1, 0]]),
        ("2\n1 2 3 255 0 51\n4 5 6 0 255 0\n", [[1, 0, 0.2], [0, 1, 0]]),
    ],
)
def test_pts_variants(tmp_path: Path, text: str, expected_cols: list | None) -> None:
    path = tmp_path / "p.pts"
    path.write_text(text)
    got = read_points(path)
    assert got.xyz[1].tolist() == [4, 5, 6]
    if expected_cols is None:
        assert got.colors is None
    else:
        np.testing.assert_allclose(got.colors, expected_cols, atol=1e-7)


# --------------------------------------------------------------------------- bad files


def _truncate(path: Path, frac: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


@pytest.fixture
def no_open3d(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if Open3D's reader is reached (the file should be refused first)."""

    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("Open3D was called on a file that should have been refused")

    monkeypatch.setattr(o3d.io, "read_point_cloud", refuse)


def test_garbage_zero_and_missing(tmp_path: Path, no_open3d: None) -> None:
    rng = np.random.default_rng(5)
    for suffix in ("ply", "pcd", "xyz", "pts"):
        (tmp_path / f"g.{suffix}").write_bytes(rng.integers(0, 256, 1000, np.uint8).tobytes())
        (tmp_path / f"z.{suffix}").write_bytes(b"")
        assert read_err(tmp_path / f"g.{suffix}").error_class == "corrupt"
        assert read_err(tmp_path / f"z.{suffix}").error_class == "empty"
    assert read_err(tmp_path / "missing.ply").error_class == "io"
    (tmp_path / "dir.ply").mkdir()
    assert read_err(tmp_path / "dir.ply").error_class == "io"
    (tmp_path / "c.obj").write_text("v 1 2 3\n")
    assert read_err(tmp_path / "c.obj").error_class == "unsupported"


@pytest.mark.parametrize(("suffix", "kw"), [(s, k) for s, k, *_ in OPEN3D_FILES])
def test_truncated_files(tmp_path: Path, suffix: str, kw: dict) -> None:
    xyz, nrm, rgb = cloud(400)
    path = tmp_path / f"c.{suffix}"
    assert o3d.io.write_point_cloud(str(path), o3d_cloud(xyz, nrm, rgb), **kw)
    _truncate(path, 0.6)
    if suffix in ("xyz", "xyzn"):  # no declared count: a cut line is all there is to see
        assert read_err(path).error_class == "truncated"
        data = path.read_bytes()
        path.write_bytes(data[: data.rindex(b"\n") + 1])  # cut at a line end: a smaller cloud
        assert 0 < len(read_points(path)) < 400
    else:
        err = read_err(path)
        assert err.error_class == "truncated", err
    # cut inside the header (PLY, PCD) or the first line; a PTS count line is all that is left,
    # declaring 400 points in 20 bytes: more than BOMB_RATIO times what the file holds
    path.write_bytes(path.read_bytes()[:25])
    expected = {"pts": "decode_bomb", "xyz": "truncated", "xyzn": "truncated"}
    assert read_err(path).error_class == expected.get(suffix, "truncated")


def test_bombs_refused_before_allocating(tmp_path: Path, no_open3d: None) -> None:
    pad = b"\0" * 900
    huge = 10**9
    (tmp_path / "b.ply").write_bytes(
        f"ply\nformat binary_little_endian 1.0\nelement vertex {huge}\n"
        "property float x\nproperty float y\nproperty float z\nend_header\n".encode()
        + pad
    )
    (tmp_path / "a.ply").write_bytes(
        f"ply\nformat ascii 1.0\nelement vertex {huge}\nproperty float x\n"
        "property float y\nproperty float z\nend_header\n".encode()
        + b"1 2 3\n" * 100
    )
    pcd_head = "VERSION .7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
    for data in ("binary", "ascii"):
        (tmp_path / f"{data}.pcd").write_bytes(
            f"{pcd_head}WIDTH {huge}\nHEIGHT 1\nPOINTS {huge}\nDATA {data}\n".encode() + pad
        )
    (tmp_path / "p.pts").write_bytes(f"{huge}\n".encode() + b"1 2 3\n" * 100)
    for name in ("b.ply", "a.ply", "binary.pcd", "ascii.pcd", "p.pts"):
        err = read_err(tmp_path / name, max_points=2 * huge)
        assert err.error_class == "decode_bomb", (name, err)
        assert "refused before allocating" in err.message
    # more points than max_points, whatever the file size
    err = read_err(tmp_path / "b.ply")
    assert err.error_class == "decode_bomb" and "max_points" in err.message
    rows = cloud(100)[0]
    (tmp_path / "ok.ply").write_bytes(ply_bytes("binary_little_endian", XYZ_PROPS, rows))
    assert read_err(tmp_path / "ok.ply", max_points=99).error_class == "decode_bomb"
    (tmp_path / "many.xyz").write_text("1 2 3\n" * 100)
    assert read_err(tmp_path / "many.xyz", max_points=99).error_class == "decode_bomb"


def test_binary_compressed_pcd_sizes_checked(tmp_path: Path, no_open3d: None) -> None:
    head = (
        b"VERSION .7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
        b"WIDTH 1000000\nHEIGHT 1\nPOINTS 1000000\nDATA binary_compressed\n"
    )
    (tmp_path / "lie.pcd").write_bytes(head + struct.pack("<II", 40, 999) + b"\0" * 40)
    assert read_err(tmp_path / "lie.pcd").error_class == "corrupt"
    (tmp_path / "bomb.pcd").write_bytes(head + struct.pack("<II", 40, 12_000_000) + b"\0" * 40)
    assert read_err(tmp_path / "bomb.pcd").error_class == "decode_bomb"


def test_malformed_headers(tmp_path: Path, no_open3d: None) -> None:
    rows = cloud(10)[0]
    cases = {
        "noz.ply": (ply_bytes("binary_little_endian", XYZ_PROPS[:2], rows[:, :2]), "unsupported"),
        "ver.ply": (b"ply\nformat ascii 2.0\nend_header\n", "unsupported"),
        "junk.ply": (b"ply\nformat ascii 1.0\nelement vertex 1\nbogus\nend_header\n", "corrupt"),
        "nohdr.ply": (b"ply\nformat ascii 1.0\nelement vertex 1\n", "truncated"),
        "u64.pcd": (
            b"FIELDS x y z\nSIZE 8 8 8\nTYPE U U U\nWIDTH 1\nPOINTS 1\nDATA binary\n" + bytes(24),
            "unsupported",
        ),
        "wh.pcd": (
            b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 2\nPOINTS 1\nDATA ascii\n",
            "corrupt",
        ),
    }
    for name, (data, cls) in cases.items():
        (tmp_path / name).write_bytes(data)
        err = read_err(tmp_path / name)
        assert err.error_class == cls, (name, err)


def test_garbage_token_in_ascii_bodies(tmp_path: Path) -> None:
    """Open3D returns the declared count with uninitialised memory after a bad token."""
    xyz, nrm, rgb = cloud(200)
    for suffix, kw in [("ply", {"write_ascii": True}), ("pcd", {"write_ascii": True})]:
        path = tmp_path / f"c.{suffix}"
        o3d.io.write_point_cloud(str(path), o3d_cloud(xyz, nrm, rgb), **kw)
        lines = path.read_bytes().split(b"\n")
        lines[-50] = b"abc" + lines[-50][1:]
        path.write_bytes(b"\n".join(lines))
        err = read_err(path)
        assert err.error_class == "corrupt" and "abc" in err.message
    (tmp_path / "comma.xyz").write_text("1,2,3\n4,5,6\n")  # Open3D: silently empty
    assert read_err(tmp_path / "comma.xyz").error_class == "corrupt"


def test_nonfinite_coordinates(tmp_path: Path) -> None:
    rows = cloud(20)[0].astype(np.float64)
    rows[3, 1], rows[7, 0], rows[11, 2] = np.nan, np.inf, 1e39  # 1e39: beyond float32
    for fmt in ("ascii", "binary_little_endian"):
        path = tmp_path / f"{fmt}.ply"
        path.write_bytes(ply_bytes(fmt, [("x", "double"), ("y", "double"), ("z", "double")], rows))
        err = read_err(path)
        assert (
            err.error_class == "nonfinite" and "3 of 20" in err.message and "point 3" in err.message
        )
        got = read_points(path, drop_nonfinite=True)
        assert len(got) == 17 and got.num_nonfinite == 3
        np.testing.assert_array_equal(got.xyz, np.delete(rows, [3, 7, 11], 0).astype(np.float32))
    allnan = tmp_path / "allnan.xyz"
    allnan.write_text("nan 1 2\n3 inf 4\n")
    assert read_err(allnan, drop_nonfinite=True).error_class == "nonfinite"


def test_empty_clouds(tmp_path: Path) -> None:
    (tmp_path / "e.ply").write_bytes(ply_bytes("binary_little_endian", XYZ_PROPS, np.zeros((0, 3))))
    (tmp_path / "e.xyz").write_text("\n  \n# only a comment\n")
    (tmp_path / "e.pcd").write_text(
        "FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 0\nHEIGHT 1\nPOINTS 0\nDATA ascii\n"
    )
    for name in ("e.ply", "e.xyz", "e.pcd"):
        err = read_err(tmp_path / name)
        assert err.error_class == "empty", (name, err)


# --------------------------------------------------------------------------- voxelize


def brute_force_voxels(xyz: np.ndarray, size: float, mode: str) -> dict[tuple, tuple]:
    """voxel -> (point, count), one point at a time, on Open3D's grid (min - size / 2)."""
    p = xyz.astype(np.float64)
    lo = p.min(0) - size * 0.5
    acc: dict[tuple, list] = {}
    for row in p:
        cell = tuple(int(c) for c in np.floor((row - lo) / size))
        entry = acc.setdefault(cell, [np.zeros(3), 0, row])
        entry[0] = entry[0] + row
        entry[1] += 1
    return {c: ((s / k) if mode == "centroid" else first, k) for c, (s, k, first) in acc.items()}


@pytest.mark.parametrize("size", [0.05, 0.3, 1.7])
def test_voxelize_equals_open3d(size: float) -> None:
    xyz, nrm, rgb = cloud(20000, seed=3)
    got, counts = voxelize(xyz, size)
    ref = o3d_cloud(xyz, nrm, rgb).voxel_down_sample(size)
    ref_pts = np.asarray(ref.points)
    assert got.dtype == np.float32 and len(got) == len(ref_pts) == len(counts)
    assert counts.sum() == len(xyz) and counts.min() >= 1
    mine, theirs = np.lexsort(got.T), np.lexsort(ref_pts.astype(np.float32).T)
    np.testing.assert_allclose(got[mine], ref_pts[theirs], rtol=0, atol=1e-6)
    # normals and colours averaged the way Open3D does (normals not renormalised)
    groups = voxel_groups(xyz, size)
    for values, ref_values in ((nrm, ref.normals), (rgb, ref.colors)):
        np.testing.assert_allclose(
            groups.reduce(values)[mine], np.asarray(ref_values)[theirs], atol=1e-6
        )


@pytest.mark.parametrize("mode", ["centroid", "first"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voxelize_equals_brute_force(mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-3, 3, size=(500, 3)).astype(np.float32)
    xyz[:50] = xyz[50:100]  # duplicates
    size = float(rng.uniform(0.2, 2.0))
    got, counts = voxelize(xyz, size, mode=mode)
    oracle = brute_force_voxels(xyz, size, mode)
    cells = sorted(oracle)  # our voxels come in lexicographic (i, j, k) order
    assert len(got) == len(cells)
    np.testing.assert_allclose(got, [oracle[c][0] for c in cells], rtol=1e-6, atol=1e-6)
    assert counts.tolist() == [oracle[c][1] for c in cells]
    if mode == "first":  # exact input rows
        assert {tuple(r) for r in got.tolist()} <= {tuple(r) for r in xyz.tolist()}


def test_voxelize_huge_extent_and_bad_input() -> None:
    xyz = np.array([[0, 0, 0], [3e9, 3e9, 3e9], [0.4, 0, 0], [3e9, 3e9, 2.9e9]], np.float64)
    got, counts = voxelize(xyz, 2.0)  # 1.5e9 voxels per axis: more cells than an int64 key
    assert counts.tolist() == [2, 1, 1]
    np.testing.assert_allclose(got[0], [0.2, 0, 0])
    with pytest.raises(ItemError) as info:
        voxelize(xyz, 1e-3)
    assert info.value.error_class == "invalid" and "too small" in info.value.message
    for bad, cls in (
        (np.zeros((0, 3)), "empty"),
        (np.array([[np.nan, 0, 0]]), "nonfinite"),
        (np.zeros((4, 2)), "invalid"),
    ):
        with pytest.raises(ItemError) as info:
            voxelize(bad, 0.1)
        assert info.value.error_class == cls


# --------------------------------------------------------------------------- stages


def test_stage_contracts() -> None:
    for cls in STAGES:
        stage = cls(**cls.EXAMPLE_PARAMS)
        clone = pickle.loads(pickle.dumps(stage))
        assert clone == stage and vars(clone).keys() == {"params"}
        assert cls(**stage.get_params()).token() == stage.token()
    with pytest.raises(ConfigError):
        PointsVoxelize(voxel_size=0)
    with pytest.raises(ConfigError):
        PointsVoxelize(voxel_size=float("inf"))
    read = PointsRead(attributes=["colors"])
    assert [f.name for f in read.produces()] == ["points", "colors", "num_points", "num_nonfinite"]


def test_stages_in_process(tmp_path: Path) -> None:
    xyz, nrm, _ = cloud(1000)
    path = tmp_path / "c.xyzn"
    o3d.io.write_point_cloud(str(path), o3d_cloud(xyz, nrm, None))
    ctx = Context(base_dir=tmp_path)
    rec = PointsRead(attributes=["normals"]).process({"path": str(path)}, ctx)
    with pytest.raises(ItemError) as info:
        PointsRead(attributes=["colors"]).process({"path": str(path)}, ctx)
    assert info.value.error_class == "unsupported"
    vox = PointsVoxelize(voxel_size=0.5, also=["normals"])
    out = vox.process(rec, ctx)
    for spec in vox.produces():
        assert spec.check_value(out[spec.name]) is None
    assert out["voxel_counts"].sum() == rec["num_points"] == 1000
    assert out["normals"].shape == out["points"].shape
    ref, _ = voxelize(rec["points"], 0.5)
    np.testing.assert_array_equal(out["points"], ref)


def _write_tree(root: Path) -> None:
    good = root / "good"
    good.mkdir(parents=True)
    for i, (suffix, kw) in enumerate([("ply", {}), ("pcd", {}), ("xyz", {})]):
        xyz, nrm, rgb = cloud(500, seed=i)
        o3d.io.write_point_cloud(str(good / f"c{i}.{suffix}"), o3d_cloud(xyz, nrm, rgb), **kw)
    bad = root / "bad"
    bad.mkdir()
    xyz, nrm, rgb = cloud(500, seed=9)
    o3d.io.write_point_cloud(str(bad / "trunc.ply"), o3d_cloud(xyz, nrm, rgb))
    _truncate(bad / "trunc.ply", 0.5)
    (bad / "zero.ply").write_bytes(b"")
    (bad / "garbage.ply").write_bytes(np.random.default_rng(1).bytes(2000))
    (bad / "bomb.ply").write_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement vertex 1000000000\n"
        b"property float x\nproperty float y\nproperty float z\nend_header\n" + bytes(900)
    )
    rows = xyz[:20].astype(np.float64)
    rows[4] = np.nan
    (bad / "nan.ply").write_bytes(ply_bytes("ascii", XYZ_PROPS, rows))
    (bad / "empty.ply").write_bytes(ply_bytes("binary_little_endian", XYZ_PROPS, np.zeros((0, 3))))


def _pipeline(root: Path, also: list[str], **read: Any) -> Pipeline:
    return Pipeline.from_dict(
        {
            "name": "clouds",
            "nodes": {
                "files": {"stage": "files", "params": {"root": str(root), "kinds": ["pointcloud"]}},
                "read": {"stage": "points.read", "inputs": "files", "params": read},
                "vox": {
                    "stage": "points.voxelize",
                    "inputs": "read",
                    "params": {"voxel_size": 0.4, "also": also},
                },
            },
        }
    )


def test_engine_good_and_bad_clouds(tmp_path: Path) -> None:
    root = tmp_path / "in"
    _write_tree(root)
    # voxelize wants normals that points.read only produces when asked
    with pytest.raises(ConfigError, match="normals"):
        _pipeline(root, ["normals"])
    run_local(_pipeline(root, ["normals"], attributes=["normals"]), tmp_path / "out", workers=2)
    rows = {r.key: r for r in Manifest(tmp_path / "out" / "manifest.sqlite").iter_rows()}
    expected = {
        "bad/trunc": "truncated",
        "bad/zero": "empty",
        "bad/garbage": "corrupt",
        "bad/bomb": "decode_bomb",
        "bad/nan": "nonfinite",
        "bad/empty": "empty",
        "good/c2": "unsupported",  # .xyz has no normals
    }
    for key, cls in expected.items():
        assert rows[key].status == "error" and rows[key].error_class == cls, rows[key]
        assert rows[key].stage == "read"
    assert rows["good/c0"].status == rows["good/c1"].status == "ok"
    samples = {s["key"]: s for s in iter_samples(sorted((tmp_path / "out" / "shards").glob("*")))}
    for key in ("good/c0", "good/c1"):
        s = samples[key]
        assert s["points"].dtype == np.float32 and s["points"].shape[1] == 3
        assert s["voxel_counts"].dtype == np.int32 and len(s["voxel_counts"]) == len(s["points"])
        assert int(s["voxel_counts"].sum()) == s["num_points"] == 500
        assert s["normals"].shape == s["points"].shape
        xyz = cloud(500, seed=int(key[-1]))[0]
        np.testing.assert_allclose(s["points"], voxelize(xyz, 0.4)[0], atol=1e-6)

    # second pipeline: xyz only, non-finite points dropped and counted
    out2 = tmp_path / "out2"
    run_local(_pipeline(root, [], drop_nonfinite=True), out2, workers=2)
    rows = {r.key: r for r in Manifest(out2 / "manifest.sqlite").iter_rows()}
    assert rows["bad/nan"].status == "ok" and rows["good/c2"].status == "ok"
    samples = {s["key"]: s for s in iter_samples(sorted((out2 / "shards").glob("*")))}
    assert samples["bad/nan"]["num_nonfinite"] == 1 and samples["bad/nan"]["num_points"] == 19

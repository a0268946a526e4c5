"""Benchmark point-cloud reading and voxelization against Open3D (a benchmark, not a test).

Clouds are N random points (default 1,000,000, a normal distribution scaled by 2), written
to a temporary folder once. Rows:

- ``read PLY binary (xyz f64)``: the file Open3D's ``write_point_cloud`` writes for xyz only;
  ``read_points`` (header check + Open3D + float32 copy) against a plain
  ``o3d.io.read_point_cloud(path, format="ply")`` (Open3D's float64 cloud, no conversion);
- ``read PLY binary (xyz+normals+colours f32)``: Open3D's tensor writer, float32 everywhere;
- ``read PCD binary``: xyz, normals and packed rgb;
- ``read PLY ascii``: datapipe parses ASCII bodies with numpy (Open3D returns garbage on bad
  ones); ``--ascii-n`` points (default 200,000);
- ``PLY header check only``: parsing and checking the header, what ``read_points`` adds in
  front of Open3D on binary files;
- ``voxelize``: :func:`voxelize` on float32 (N, 3) against Open3D's ``voxel_down_sample`` on
  an already built ``PointCloud`` (the conversion from numpy is not counted for Open3D).

Times are the best of ``--repeats`` runs; throughput is input points per second and the
ratio is datapipe's time over Open3D's (below 1 is faster). ``--quick`` reads and voxelizes
200,000 points (50,000 in ASCII) instead. ``--report PATH`` writes the rows with an Open3D
peer (reads and centroid voxelization), every repeat's ms, in the shared format of
``results.py``.

Run from the repository root::

    .venv/bin/python scripts/bench/bench_points.py
    .venv/bin/python scripts/bench/bench_points.py --n 2000000 --voxel 0.02 --repeats 7
    .venv/bin/python scripts/bench/bench_points.py --quick --report points.json
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open3d as o3d
from results import Row, write_report

from datapipe.stages.points.header import read_head
from datapipe.stages.points.header_ply import check_ply, parse_ply_header
from datapipe.stages.points.read import read_points
from datapipe.stages.points.voxelize import voxelize


def timed(fns: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Seconds of each run of each function, run in turns (so drift on a shared machine hits
    all)."""
    for fn in fns:
        fn()  # warm the page cache and any lazy imports
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return times


def write_files(root: Path, n: int, ascii_n: int, seed: int) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    xyz = (rng.normal(size=(n, 3)) * 2).astype(np.float32)
    nrm = rng.normal(size=(n, 3)).astype(np.float32)
    rgb = rng.uniform(size=(n, 3)).astype(np.float32)
    legacy = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
    files = {"ply_xyz": root / "xyz.ply", "ply_all": root / "all.ply", "pcd": root / "all.pcd"}
    o3d.io.write_point_cloud(str(files["ply_xyz"]), legacy)
    t = o3d.t.geometry.PointCloud(o3d.core.Tensor(xyz))
    t.point.normals = o3d.core.Tensor(nrm)
    t.point.colors = o3d.core.Tensor(rgb)
    o3d.t.io.write_point_cloud(str(files["ply_all"]), t)
    legacy.normals = o3d.utility.Vector3dVector(nrm.astype(np.float64))
    legacy.colors = o3d.utility.Vector3dVector(rgb.astype(np.float64))
    o3d.io.write_point_cloud(str(files["pcd"]), legacy)
    small = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz[:ascii_n].astype(np.float64)))
    files["ply_ascii"] = root / "ascii.ply"
    o3d.io.write_point_cloud(str(files["ply_ascii"]), small, write_ascii=True)
    files["xyz"] = root / "xyz.npy"
    np.save(files["xyz"], xyz)
    return files


def header_only(path: Path) -> None:
    size = os.path.getsize(path)
    check_ply(parse_ply_header(read_head(path, size), size), size, 10**12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help="points per cloud (1,000,000)")
    ap.add_argument("--ascii-n", type=int, default=None, help="points in the ASCII PLY (200,000)")
    ap.add_argument("--voxel", type=float, nargs="+", default=[0.05, 0.2], help="voxel sizes")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="200,000 points (50,000 in ASCII)")
    ap.add_argument("--report", type=Path, default=None, help="write rows (results.py)")
    args = ap.parse_args()
    args.n = args.n or (200_000 if args.quick else 1_000_000)
    args.ascii_n = args.ascii_n or (50_000 if args.quick else 200_000)

    rows: list[tuple[str, int, list[float], list[float] | None, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(Path(tmp), args.n, args.ascii_n, args.seed)
        for label, key, fmt, n in [
            ("read PLY binary (xyz f64)", "ply_xyz", "ply", args.n),
            ("read PLY binary (xyz+normals+colours f32)", "ply_all", "ply", args.n),
            ("read PCD binary (xyz+normals+rgb)", "pcd", "pcd", args.n),
            ("read PLY ascii (xyz)", "ply_ascii", "ply", args.ascii_n),
        ]:
            path = files[key]
            ours, theirs = timed(
                [
                    lambda p=path: read_points(p),
                    lambda p=path, f=fmt: o3d.io.read_point_cloud(str(p), format=f),
                ],
                args.repeats,
            )
            size = f"{os.path.getsize(path) / 2**20:.0f} MiB"
            rows.append((label, n, ours, theirs, size))
        path = files["ply_xyz"]
        rows.append(
            ("PLY header check only", args.n, timed([lambda: header_only(path)], 50)[0], None, "")
        )
        xyz = np.load(files["xyz"])
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
        for size in args.voxel:
            m = len(voxelize(xyz, size)[0])
            for mode in ("centroid", "first"):
                fns = [lambda s=size, md=mode: voxelize(xyz, s, mode=md)]
                if mode == "centroid":
                    fns.append(lambda s=size: cloud.voxel_down_sample(s))
                ours, *rest = timed(fns, args.repeats)
                theirs = rest[0] if rest else None
                rows.append(
                    (f"voxelize {mode}, voxel {size}", args.n, ours, theirs, f"{m:,} voxels")
                )

    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Open3D {o3d.__version__}, numpy {np.__version__}, best of {args.repeats}"
    )
    print(
        "| task | points | datapipe ms | Open3D ms | datapipe Mpt/s | Open3D Mpt/s | ratio | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    report: list[Row] = []
    for label, n, runs, peer_runs, note in rows:
        if peer_runs is not None:
            ours_ms, peer_ms = ([1e3 * t for t in ts] for ts in (runs, peer_runs))
            task = f"{label}, {n:,} points"
            report.append(
                Row(task, "ms", False, "datapipe", ours_ms, {"Open3D": peer_ms}, note=note)
            )
        ours, theirs = min(runs), min(peer_runs) if peer_runs else None
        t_ms = f"{theirs * 1e3:.1f}" if theirs else "-"
        t_rate = f"{n / theirs / 1e6:.1f}" if theirs else "-"
        ratio = f"{ours / theirs:.2f}" if theirs else "-"
        print(
            f"| {label} | {n:,} | {ours * 1e3:.2f} | {t_ms} | {n / ours / 1e6:.1f} | {t_rate} | "
            f"{ratio} | {note} |"
        )
    write_report(args.report, report)


if __name__ == "__main__":
    main()

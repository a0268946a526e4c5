"""Farthest point sampling: datapipe's exact pruned FPS against Open3D and fpsample.

For N -> M in (4096 -> 512, 16384 -> 1024, 131072 -> 4096), on a uniform cube and on a noisy
sphere surface, median ms per call over ``--repeats`` rounds in which the methods run in
turns (numba compilation excluded by a warm-up call). Also checks that ours selects the same
set as Open3D from the same start.

``--quick`` measures the two smaller sizes only. ``--report PATH`` writes one row per cloud
and size (every repeat of ours, Open3D and each fpsample variant) in the shared format of
``results.py``.

    pip install fpsample   # or: pip install -e .[bench]
    python scripts/bench/bench_fps.py [--repeats 5] [--quick] [--report fps.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import open3d as o3d
from results import Row, write_report

from datapipe.stages.points.sampling import farthest_point_sample

SIZES = [(4096, 512), (16384, 1024), (131072, 4096)]
QUICK_SIZES = SIZES[:2]


def clouds(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 3))
    s = s / np.linalg.norm(s, axis=1, keepdims=True) + rng.normal(0, 0.01, (n, 3))
    return {"cube": rng.uniform(-1, 1, (n, 3)), "sphere": s}


def interleaved_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Ms of each call of each function, run in turns (so drift on a shared machine hits all)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return times


def fpsample_fns(fpsample: Any, pts: np.ndarray, m: int) -> dict[str, Callable[[], object]]:
    """fpsample's vanilla FPS (honours start_idx) and its KD-line bucket variants (h=5, 7)."""
    f32 = pts.astype(np.float32)
    return {
        "fps.van": lambda: fpsample.fps_sampling(f32, m, start_idx=0),
        "fps.kd5": lambda: fpsample.bucket_fps_kdline_sampling(f32, m, h=5),
        "fps.kd7": lambda: fpsample.bucket_fps_kdline_sampling(f32, m, h=7),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the two smaller sizes only")
    parser.add_argument("--report", type=Path, default=None, help="write rows (results.py)")
    args = parser.parse_args()
    try:
        import fpsample
    except ImportError:
        fpsample = None
    farthest_point_sample(np.random.default_rng(0).normal(size=(64, 3)), 8)  # compile
    print(
        f"{'cloud':>7} {'N -> M':>14} {'open3d':>9} {'fps.van':>9} {'fps.kd5':>9} "
        f"{'fps.kd7':>9} {'ours':>8} {'o3d/ours':>9} {'same set':>9}"
    )
    note = (
        "fps.*: fpsample; kd5, kd7: its KD-line buckets, which ignore the start index"
        if fpsample is not None
        else "fpsample not installed"
    )
    rows: list[Row] = []
    for n, m in QUICK_SIZES if args.quick else SIZES:
        for name, pts in clouds(n).items():
            pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
            fns: dict[str, Callable[[], object]] = {
                "open3d": lambda pc=pc, m=m: pc.farthest_point_down_sample(m, 0),
                "ours": lambda pts=pts, m=m: farthest_point_sample(pts, m, start=0),
            }
            if fpsample is not None:
                fns |= fpsample_fns(fpsample, pts, m)
            peers = interleaved_ms(fns, args.repeats)
            ours = peers.pop("ours")
            med = {k: statistics.median(v) for k, v in peers.items()}
            o3d_ms, ours_ms = med["open3d"], statistics.median(ours)
            shown = [
                f"{med[k]:.1f}" if k in med else "-" for k in ("fps.van", "fps.kd5", "fps.kd7")
            ]
            chosen = np.asarray(pc.farthest_point_down_sample(m, 0).points)
            where = {tuple(p): i for i, p in enumerate(pts)}
            same = {where[tuple(p)] for p in chosen} == set(farthest_point_sample(pts, m, start=0))
            print(
                f"{name:>7} {f'{n} -> {m}':>14} {o3d_ms:9.1f} {shown[0]:>9} {shown[1]:>9} "
                f"{shown[2]:>9} {ours_ms:8.1f} {o3d_ms / ours_ms:9.1f} {same!s:>9}"
            )
            task, why = f"FPS {n} -> {m} ({name})", f"{note}; same set as open3d: {same}"
            rows.append(Row(task, "ms/call", False, "ours", ours, peers, note=why))
    print("ms per call, median; fpsample's bucket (kd) variants ignore start_idx (1.0.2)")
    write_report(args.report, rows)


if __name__ == "__main__":
    main()

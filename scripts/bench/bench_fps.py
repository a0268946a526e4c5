"""Farthest point sampling: datapipe's exact pruned FPS against Open3D and fpsample.

For N -> M in (4096 -> 512, 16384 -> 1024, 131072 -> 4096), on a uniform cube and on a noisy
sphere surface, median ms per call over ``--repeats`` runs (numba compilation excluded by a
warm-up call). Also checks that ours selects the same set as Open3D from the same start.

    pip install fpsample   # or: pip install -e .[bench]
    python scripts/bench/bench_fps.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import open3d as o3d

from datapipe.stages.points.sampling import farthest_point_sample

SIZES = [(4096, 512), (16384, 1024), (131072, 4096)]


def clouds(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n, 3))
    s = s / np.linalg.norm(s, axis=1, keepdims=True) + rng.normal(0, 0.01, (n, 3))
    return {"cube": rng.uniform(-1, 1, (n, 3)), "sphere": s}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def fpsample_ms(fpsample: object, pts: np.ndarray, m: int, repeats: int) -> list[float]:
    """fpsample's vanilla FPS (honours start_idx) and its KD-line bucket variants (h=5, 7)."""
    f32 = pts.astype(np.float32)
    return [
        median_ms(lambda: fpsample.fps_sampling(f32, m, start_idx=0), repeats),
        median_ms(lambda: fpsample.bucket_fps_kdline_sampling(f32, m, h=5), repeats),
        median_ms(lambda: fpsample.bucket_fps_kdline_sampling(f32, m, h=7), repeats),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
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
    for n, m in SIZES:
        for name, pts in clouds(n).items():
            pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
            o3d_ms = median_ms(lambda pc=pc, m=m: pc.farthest_point_down_sample(m, 0), args.repeats)
            ours_ms = median_ms(
                lambda pts=pts, m=m: farthest_point_sample(pts, m, start=0), args.repeats
            )
            peers = ["-", "-", "-"]
            if fpsample is not None:
                peers = [f"{ms:.1f}" for ms in fpsample_ms(fpsample, pts, m, args.repeats)]
            chosen = np.asarray(pc.farthest_point_down_sample(m, 0).points)
            where = {tuple(p): i for i, p in enumerate(pts)}
            same = {where[tuple(p)] for p in chosen} == set(farthest_point_sample(pts, m, start=0))
            print(
                f"{name:>7} {f'{n} -> {m}':>14} {o3d_ms:9.1f} {peers[0]:>9} {peers[1]:>9} "
                f"{peers[2]:>9} {ours_ms:8.1f} {o3d_ms / ours_ms:9.1f} {same!s:>9}"
            )
    print("ms per call, median; fpsample's bucket (kd) variants ignore start_idx (1.0.2)")


if __name__ == "__main__":
    main()

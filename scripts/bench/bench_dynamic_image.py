"""Dynamic images: ``ops.pool_dynamic_image`` against one weighted pass over the frames.

A clip of T frames of SIZE x SIZE x 3 (random, seeded), float32 and uint8. Every method is
timed interleaved round-robin (A, B, C, A, B, C, ...) after a warm-up call; the table gives the
median, the IQR / median, and the ratio to the group's reference:

- float32: ``np.tensordot(alpha, X, 1)`` (one matrix-vector product over the frame axis, the
  weights precomputed) against ``dynamic_image`` on the array, and on an iterator (T unknown:
  running sums);
- uint8: the floor of one pass over the bytes (a sum of the clip viewed as uint64), converting
  the whole clip to float32 then one pass, and ``dynamic_image`` (chunked conversion).

``--quick`` pools 150 frames (still far larger than the caches). ``--report PATH`` writes, in
the shared format of ``results.py``, one row per input (float32 array, uint8 array, uint8 and
float32 iterators) for ``dynamic_image`` against the methods timed beside it (every repeat, in
ms per clip).

    python scripts/bench/bench_dynamic_image.py [--frames 300] [--size 224] [--repeats 15]
        [--quick] [--json F] [--report F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from results import Row, write_report
from threadpoolctl import threadpool_limits

from datapipe.stages.represent.dynamic_image import dynamic_image
from datapipe.stages.represent.rank_weights import rank_pool_weights

REF32 = "tensordot(alpha, X, 1) [reference]"
FLOOR = "one pass over the bytes [floor]"


def measure(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    for fn in methods.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def table(title: str, times: dict[str, list[float]], ref: str) -> list[dict[str, object]]:
    base = float(np.median(times[ref]))
    print(f"\n{title}\n")
    print("| method | ms (median) | IQR / median | x reference |")
    print("|---|---|---|---|")
    rows = []
    for name, ts in times.items():
        med = float(np.median(ts))
        q1, q3 = np.percentile(ts, [25, 75])
        rows.append({"method": name, "ms": med * 1e3, "iqr": (q3 - q1) / med, "ratio": med / base})
        print(f"| {name} | {med * 1e3:.2f} | {(q3 - q1) / med:.2f} | {med / base:.2f} |")
    return rows


def rel_error(got: np.ndarray, frames: np.ndarray) -> float:
    want = np.tensordot(rank_pool_weights(len(frames)), frames.astype(np.float64), 1)
    return float(np.abs(got - want).max() / np.abs(want).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=None, help="300 (--quick: 150)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="150 frames")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--report", type=Path, default=None, help="write rows (results.py)")
    args = parser.parse_args()
    args.frames = args.frames or (150 if args.quick else 300)

    rng = np.random.default_rng(0)
    shape = (args.frames, args.size, args.size, 3)
    x8 = rng.integers(0, 256, shape, dtype=np.uint8)
    x32 = x8.astype(np.float32)
    alpha = rank_pool_weights(args.frames).astype(np.float32)
    print(f"clip {shape}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; numpy {np.__version__}")  # fmt: skip
    print(f"error vs float64: float32 array {rel_error(dynamic_image(x32), x8):.1e}, "
          f"uint8 array {rel_error(dynamic_image(x8), x8):.1e}, "
          f"uint8 iterator {rel_error(dynamic_image(iter(x8)), x8):.1e}")  # fmt: skip

    # float32, BLAS with its default threads, like the reference
    f32 = measure(
        {
            "tensordot(alpha, X, 1) [reference]": lambda: np.tensordot(alpha, x32, 1),
            "dynamic_image(X)": lambda: dynamic_image(x32),
            "dynamic_image(X, psi='mean')": lambda: dynamic_image(x32, psi="mean"),
        },
        args.repeats,
    )
    # single-threaded BLAS for every method: threads of a multi-threaded product keep spinning
    # after it and slow down the next method, which is single-threaded (numpy conversions)
    with threadpool_limits(1, user_api="blas"):
        u8 = measure(
            {
                "one pass over the bytes [floor]": lambda: x8.reshape(-1).view(np.uint64).sum(),
                "X.astype(float32), tensordot": lambda: np.tensordot(
                    alpha, x8.astype(np.float32), 1
                ),
                "dynamic_image(X)": lambda: dynamic_image(x8),
                "dynamic_image(X, psi='mean')": lambda: dynamic_image(x8, psi="mean"),
                "dynamic_image(X, window=16)": lambda: dynamic_image(x8, window=16),
                "dynamic_image(X, window=16, stride=8)": lambda: dynamic_image(
                    x8, window=16, stride=8
                ),
                "dynamic_image(iter(X)) (T unknown)": lambda: dynamic_image(iter(x8)),
                "float32: tensordot(alpha, X, 1), 1 thread": lambda: np.tensordot(alpha, x32, 1),
                "float32: dynamic_image(iter(X)) (T unknown)": lambda: dynamic_image(iter(x32)),
            },
            args.repeats,
        )
    rows = {
        "float32": table(f"float32 {shape}, BLAS default threads", f32, REF32),
        "uint8": table(f"uint8 {shape} (and iterators), BLAS 1 thread", u8, FLOOR),
    }
    whole = float(np.median(u8["X.astype(float32), tensordot"]))
    ours = float(np.median(u8["dynamic_image(X)"]))
    print(f"\nuint8: dynamic_image(X) takes {ours / whole:.2f}x the convert-then-pass time")
    if args.json:
        args.json.write_text(json.dumps({"shape": shape, "tables": rows}, indent=2))
    write_report(args.report, report_rows(shape, f32, u8))


def report_rows(
    shape: tuple[int, ...], f32: dict[str, list[float]], u8: dict[str, list[float]]
) -> list[Row]:
    """``dynamic_image`` on each input against the methods timed beside it, in ms per clip."""
    clip = "x".join(map(str, shape))
    ms = {group: {k: [t * 1e3 for t in v] for k, v in times.items()}
          for group, times in (("float32", f32), ("uint8", u8))}  # fmt: skip
    u8_peers = {k: ms["uint8"][k] for k in (FLOOR, "X.astype(float32), tensordot")}
    one_thread = "float32: tensordot(alpha, X, 1), 1 thread"
    return [
        Row(f"dynamic image, float32 {clip}", "ms/clip", False, "dynamic_image(X)",
            ms["float32"]["dynamic_image(X)"], {REF32: ms["float32"][REF32]},
            note="BLAS default threads"),
        Row(f"dynamic image, uint8 {clip}", "ms/clip", False, "dynamic_image(X)",
            ms["uint8"]["dynamic_image(X)"], u8_peers, note="BLAS 1 thread"),
        Row(f"dynamic image, uint8 iterator {clip}", "ms/clip", False,
            "dynamic_image(iter(X)) (T unknown)", ms["uint8"]["dynamic_image(iter(X)) (T unknown)"],
            u8_peers, note="BLAS 1 thread; the peers take the whole array"),
        Row(f"dynamic image, float32 iterator {clip}", "ms/clip", False,
            "float32: dynamic_image(iter(X)) (T unknown)",
            ms["uint8"]["float32: dynamic_image(iter(X)) (T unknown)"],
            {one_thread: ms["uint8"][one_thread]},
            note="BLAS 1 thread; the peer takes the whole array"),
    ]  # fmt: skip


if __name__ == "__main__":
    main()

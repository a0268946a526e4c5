"""Benchmark: k-center greedy (``datapipe.ops.select_kcenter``) against the dense norm-trick
loop (the anchor's formulation) and a straightforward numpy loop, side by side in one run.

    .venv/bin/python scripts/bench/bench_kcenter.py                # 50k->5k and 100k->10k
    .venv/bin/python scripts/bench/bench_kcenter.py --quick        # 8k->800 only
    .venv/bin/python scripts/bench/bench_kcenter.py --quick --report kcenter.json

Methods run interleaved round-robin (A, B, C, A, B, C, ...) after a warm-up, 5 rounds each
by default; the table shows medians. ``--report PATH`` writes one row per size and data
(every round's seconds of ours, the norm trick and, where run, the straightforward loop) in
the shared format of ``results.py``. Peak memory is measured in a separate, untimed call
under tracemalloc (numpy reports its buffers to it), above the input array itself.

Data (float32, seeded): ``mix64-sN``: 64 Gaussian clusters, unit variance, means drawn with
standard deviation N per coordinate (s1 overlaps, s4 is well separated); ``iid``: one
Gaussian, no structure — the worst case for triangle-inequality pruning. The anchor measured
2.45 s for 5,000 of 50,000 x 128 ("a mixture of 64 Gaussians", parameters not given) on a
2-vCPU Xeon; its 10x over the straightforward loop is the ratio to compare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
from results import Row, write_report

from datapipe.stages.subset.kcenter import kcenter_greedy

OURS = "ours (pruned norm trick)"


def norm_trick(x: np.ndarray, k: int, first: int) -> np.ndarray:
    """The anchor's formulation: one gemv per step, preallocated buffers, no pruning."""
    n = len(x)
    xn = np.einsum("ij,ij->i", x, x)
    mind = np.full(n, np.inf, np.float32)
    buf = np.empty(n, np.float32)
    idx = np.empty(k, np.int64)
    c = first
    for j in range(k):
        idx[j] = c
        np.dot(x, x[c], out=buf)
        buf *= -2.0
        buf += xn
        buf += xn[c]
        np.minimum(mind, buf, out=mind)
        mind[c] = 0.0
        c = int(np.argmax(mind))
    return idx


def straightforward(x: np.ndarray, k: int, first: int) -> np.ndarray:
    """Recompute every distance to the new centre from scratch each step."""
    mind = np.full(len(x), np.inf, np.float32)
    idx = np.empty(k, np.int64)
    c = first
    for j in range(k):
        idx[j] = c
        mind = np.minimum(mind, ((x - x[c]) ** 2).sum(axis=1))
        c = int(np.argmax(mind))
    return idx


def ours(x: np.ndarray, k: int, first: int) -> np.ndarray:
    return kcenter_greedy(x, k, start=first)[0]


def make_data(kind: str, n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return rng.standard_normal((n, d), dtype=np.float32)
    spread = float(kind.split("-s")[1])
    means = rng.standard_normal((64, d), dtype=np.float32) * spread
    x = means[rng.integers(64, size=n)]
    x += rng.standard_normal((n, d), dtype=np.float32)
    return x


def peak_mib(fn: Callable[..., object], *args: object) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn(*args)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


def thousands(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def bench(
    n: int, d: int, k: int, kinds: list[str], methods: dict[str, Callable], repeats: dict[str, int]
) -> list[dict[str, object]]:
    rows = []
    for kind in kinds:
        x = make_data(kind, n, d)
        times: dict[str, list[float]] = {m: [] for m in methods}
        picks: dict[str, np.ndarray] = {}
        for fn in methods.values():  # warm-up on a small slice
            fn(x[:2000], 50, 0)
        for r in range(max(repeats.values())):
            for name, fn in methods.items():
                if r >= repeats[name]:
                    continue
                t0 = time.perf_counter()
                picks[name] = fn(x, k, 0)
                times[name].append(time.perf_counter() - t0)
                print(f"  {kind} {n}->{k} {name}: {times[name][-1]:.2f} s", file=sys.stderr)
        ref = picks["norm trick (anchor formulation)"]
        for name, fn in methods.items():
            med = statistics.median(times[name])
            same = len(set(picks[name].tolist()) & set(ref.tolist())) / k
            rows.append(
                {
                    "data": kind,
                    "task": f"{thousands(n)} x {d} -> {thousands(k)}",
                    "method": name,
                    "median_s": med,
                    "runs": times[name],
                    "peak_mib": peak_mib(fn, x, k, 0) if name != "straightforward numpy" else None,
                    "same_set": same,
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--straight-repeats", type=int, default=5, help="the slow loop: 26 s a run")
    ap.add_argument("--quick", action="store_true", help="8k x 128 -> 800, iid and mix64-s2")
    ap.add_argument("--report", type=Path, default=None, help="write rows (results.py)")
    args = ap.parse_args()
    import threadpoolctl

    blas = [(i["internal_api"], i["num_threads"]) for i in threadpoolctl.threadpool_info()]
    print(f"numpy {np.__version__}; BLAS {blas}; load average {os.getloadavg()}")
    methods = {OURS: ours, "norm trick (anchor formulation)": norm_trick}
    rep = {m: args.repeats for m in methods}
    slow = {**methods, "straightforward numpy": straightforward}
    slow_rep = {**rep, "straightforward numpy": args.straight_repeats}
    if args.quick:
        jobs = [  # the straightforward loop (10x the others) on one data set only
            (8_000, 128, 800, ["iid"], methods, rep),
            (8_000, 128, 800, ["mix64-s2"], slow, slow_rep),
        ]
    else:
        jobs = [
            (50_000, 128, 5_000, ["iid", "mix64-s1", "mix64-s2", "mix64-s4"], slow, slow_rep),
            (100_000, 128, 10_000, ["iid", "mix64-s2"], methods, rep),
        ]
    rows = []
    for n, d, k, kinds, meth, reps in jobs:
        rows += bench(n, d, k, kinds, meth, reps)
    print()
    print(
        "| task | data | method | median s | runs | speed-up vs norm trick (this run) "
        "| peak MiB | same set as norm trick |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(
            q["median_s"]
            for q in rows
            if q["task"] == r["task"]
            and q["data"] == r["data"]
            and q["method"] == "norm trick (anchor formulation)"
        )
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        runs = ", ".join(f"{t:.2f}" for t in r["runs"])  # type: ignore[union-attr]
        print(
            f"| {r['task']} | {r['data']} | {r['method']} | {r['median_s']:.2f} | {runs} | "
            f"{base / r['median_s']:.2f} | {peak} | {r['same_set']:.3f} |"
        )
    print(f"load average after: {os.getloadavg()}")
    write_report(args.report, report_rows(rows))


def report_rows(rows: list[dict[str, object]]) -> list[Row]:
    """One row per task and data: ours against the other methods, every run in seconds."""
    out = []
    for r in (r for r in rows if r["method"] == OURS):
        alike = [q for q in rows if q["task"] == r["task"] and q["data"] == r["data"]]
        peers = {str(q["method"]): cast(list[float], q["runs"]) for q in alike if q is not r}
        peak = {str(q["method"]).split(" (")[0]: q["peak_mib"] for q in alike}
        mib = ", ".join(f"{m} {v:.1f}" for m, v in peak.items() if v is not None)
        note = f"same set as the norm trick: {r['same_set']:.3f}; peak MiB: {mib}"
        task = f"k-center {r['task']} ({r['data']})"
        out.append(Row(task, "s/run", False, OURS, cast(list[float], r["runs"]), peers, note=note))
    return out


if __name__ == "__main__":
    main()

"""Throughput of the Dask executor against the local executor on a CPU-bound pipeline.

Decodes and resizes generated JPEG photos (``files -> image.resize``) four ways, each into a
fresh output: local with 1 and 2 worker processes, and Dask with 1 and 2 workers (a
LocalCluster of each size, started once; its start-up is printed, not counted). Each runs on
N/5 and on N items, and the difference gives the marginal cost per item. Two loads: small
items (``--n`` photos 640x480 -> 112, where overhead shows) and heavy ones (``--big-n`` photos
1280x854 -> 448, ~15 ms of work each, where scaling shows). The configs take turns for
``--repeats`` rounds; figures are medians.

``--report`` writes the rows for ``scripts/bench.py`` with the targets: Dask's overhead per
item <= 150 us over local (1 worker each), 2 Dask workers >= 1.7x one, and Dask >= 0.9x local
at 2 workers each.

    python scripts/bench/bench_dask.py [--n 1500] [--big-n 600] [--json out.json]
    python scripts/bench/bench_dask.py --quick      # 300 small photos only
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from results import Row, median, write_report
from sklearn.datasets import load_sample_images

from datapipe.executors.dask_executor import dask_client, run_dask
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline
from datapipe.stages.io.files import Files
from datapipe.stages.io.image_resize import ImageResize


def make_photos(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> None:
    """``n`` JPEG crops of scikit-learn's sample photos in 4 class folders."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(im) for im in load_sample_images().images]
    w, h = size
    for i in range(n):
        src = photos[i % len(photos)]
        y = int(rng.integers(0, src.shape[0] - h)) if src.shape[0] > h else 0
        x = int(rng.integers(0, src.shape[1] - w)) if src.shape[1] > w else 0
        crop = Image.fromarray(src[y : y + h, x : x + w])
        folder = root / f"class_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=90)
        (folder / f"img_{i:06d}.jpg").write_bytes(buf.getvalue())


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, dict[str, int]]:
    t0 = time.perf_counter()
    report = fn(*args, **kwargs)
    return time.perf_counter() - t0, report.counts


CONFIGS = (("local", 1), ("local", 2), ("dask", 1), ("dask", 2))


Timings = dict[tuple[str, int], dict[str, list[float]]]


def workload(
    work: Path,
    name: str,
    n: int,
    size: tuple[int, int],
    resize: int,
    repeats: int,
    clusters: dict[int, str],
) -> Timings:
    """Every config on ``n/5`` and ``n`` photos, ``repeats`` rounds taking turns: per config
    the seconds of each round at each size and the marginal us/item."""
    small = max(1, n // 5)
    for count in (small, n):
        make_photos(work / f"in-{name}-{count}", count, size)
    out: Timings = {c: {"small_s": [], "seconds": [], "us_per_item": []} for c in CONFIGS}
    for _ in range(repeats):
        for executor, workers in CONFIGS:
            seconds = {}
            for count in (small, n):
                pipeline = Pipeline.chain(
                    Files(root=str(work / f"in-{name}-{count}")), ImageResize(size=resize)
                )
                target = work / f"out-{name}-{executor}-{workers}-{count}"
                shutil.rmtree(target, ignore_errors=True)
                if executor == "local":
                    seconds[count], counts = timed(run_local, pipeline, target, workers=workers)
                else:
                    seconds[count], counts = timed(
                        run_dask, pipeline, target, scheduler=clusters[workers]
                    )
                assert counts["ok"] == count, counts
            row = out[executor, workers]
            row["small_s"].append(seconds[small])
            row["seconds"].append(seconds[n])
            row["us_per_item"].append((seconds[n] - seconds[small]) / (n - small) * 1e6)
    return out


def rows_for(label: str, res: Timings) -> list[Row]:
    """The issue's three targets: overhead per item against local (1 worker each), scaling
    from 1 to 2 Dask workers, and Dask against local at 2 workers."""
    per = {c: res[c]["us_per_item"] for c in CONFIGS}
    local1 = median(per["local", 1])
    bound = local1 / (local1 + 150)  # Dask at most 150 us/item slower than local
    return [
        Row(
            f"{label}: marginal cost per item, 1 worker",
            "us/item",
            False,
            "Dask executor",
            per["dask", 1],
            {"local executor": per["local", 1]},
            {"local executor": f">= {bound:.2f}"},
            "target: Dask's overhead <= 150 us/item",
        ),
        Row(
            f"{label}: Dask, 2 workers against 1",
            "us/item",
            False,
            "Dask, 2 workers",
            per["dask", 2],
            {"Dask, 1 worker": per["dask", 1]},
            {"Dask, 1 worker": ">= 1.7"},
        ),
        Row(
            f"{label}: Dask against local, 2 workers each",
            "us/item",
            False,
            "Dask executor",
            per["dask", 2],
            {"local executor": per["local", 2]},
            {"local executor": ">= 0.9"},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1500, help="photos of the small-item load")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--resize", type=int, default=112)
    parser.add_argument("--big-n", type=int, default=600, help="photos of the heavy load (0: none)")
    parser.add_argument("--big-size", default="1280x854")
    parser.add_argument("--big-resize", type=int, default=448)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="300 small photos, no heavy load")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--report", type=Path, help="rows for scripts/bench.py")
    args = parser.parse_args()
    if args.quick:
        args.n, args.big_n = 300, 0
    loads = [("small", args.n, args.size, args.resize)]
    if args.big_n:
        loads.append(("heavy", args.big_n, args.big_size, args.big_resize))
    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    rows, table = [], []
    try:
        with contextlib.ExitStack() as stack:
            clusters, start_s = {}, {}
            for workers in (1, 2):
                t0 = time.perf_counter()
                client = stack.enter_context(dask_client(None, workers))
                start_s[workers] = time.perf_counter() - t0
                clusters[workers] = client.scheduler.address
            for name, n, size, resize in loads:
                w, h = (int(v) for v in size.split("x"))
                res = workload(work, name, n, (w, h), resize, args.repeats, clusters)
                label = f"{n} JPEGs {w}x{h} -> image.resize({resize})"
                rows += rows_for(label, res)
                for (executor, workers), r in res.items():
                    table.append({"load": label, "executor": executor, "workers": workers,
                                  "seconds": median(r["seconds"]),
                                  "small_seconds": median(r["small_s"]),
                                  "us_per_item": median(r["us_per_item"])})  # fmt: skip
        print(f"marginal cost per item from runs of N/5 and N items; median of {args.repeats} "
              "rounds on running clusters")  # fmt: skip
        head = ("load", "executor", "workers", "N s", "us/item", "vs local")
        print("{:>40} {:>8} {:>7} {:>7} {:>8} {:>9}".format(*head))
        for r in table:
            local = next(t for t in table if t["load"] == r["load"] and t["executor"] == "local"
                         and t["workers"] == r["workers"])  # fmt: skip
            r["vs_local"] = local["us_per_item"] / r["us_per_item"]
            print(f"{r['load']:>40} {r['executor']:>8} {r['workers']:>7} {r['seconds']:7.2f} "
                  f"{r['us_per_item']:8.0f} {r['vs_local']:8.2f}x")  # fmt: skip
        print("cluster start-up (not in the figures): "
              + ", ".join(f"{w} worker(s) {s:.1f} s" for w, s in start_s.items()))  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps({"rows": table, "cluster_start_s": start_s}, indent=2))
        write_report(args.report, rows)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

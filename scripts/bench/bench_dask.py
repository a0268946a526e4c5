"""Throughput of the Dask executor against the local executor on a CPU-bound pipeline.

Decodes and resizes N generated JPEG photos (``files -> image.resize``) four ways, each into a
fresh output: local with 1 and 2 worker processes, and Dask (LocalCluster) with 1 and 2
workers. Each runs on N/5 and on N items; the difference gives the marginal cost per item,
and the rest the fixed cost (cluster start, worker imports, decoder processes, listing).
Reports items/s of the N run, the fixed seconds, and the marginal us/item against local with
as many workers.

    python scripts/bench/bench_dask.py [--n 2000] [--size 640x480] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_sample_images

from datapipe.executors.dask_executor import run_dask
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


def timed(fn, *args, **kwargs) -> tuple[float, dict]:
    t0 = time.perf_counter()
    report = fn(*args, **kwargs)
    return time.perf_counter() - t0, report.counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    small = max(1, args.n // 5)
    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    try:
        for n in (small, args.n):
            make_photos(work / f"in-{n}", n, (w, h))
        rows = []
        for name, fn, kw in [
            ("local", run_local, {"workers": 1}),
            ("local", run_local, {"workers": 2}),
            ("dask", run_dask, {"workers": 1}),
            ("dask", run_dask, {"workers": 2}),
        ]:
            seconds = {}
            for n in (small, args.n):
                pipeline = Pipeline.chain(Files(root=str(work / f"in-{n}")), ImageResize(size=112))
                out = work / f"out-{name}-{kw['workers']}-{n}"
                seconds[n], counts = timed(fn, pipeline, out, **kw)
                assert counts["ok"] == n, counts
            per_item = (seconds[args.n] - seconds[small]) / (args.n - small)
            rows.append(
                {
                    "executor": name,
                    "workers": kw["workers"],
                    "seconds": seconds[args.n],
                    "items_per_s": args.n / seconds[args.n],
                    "marginal_us_per_item": per_item * 1e6,
                    "fixed_s": seconds[args.n] - args.n * per_item,
                }
            )
        local = {r["workers"]: r for r in rows if r["executor"] == "local"}
        print(f"{args.n} JPEGs {w}x{h} -> 112x112 (files -> image.resize); marginal cost "
              f"from runs of {small} and {args.n} items")  # fmt: skip
        print(
            f"{'executor':>8} {'workers':>7} {'total s':>8} {'items/s':>8} {'fixed s':>8} "
            f"{'us/item':>8} {'vs local':>9}"
        )
        for r in rows:
            r["vs_local"] = r["marginal_us_per_item"] / local[r["workers"]]["marginal_us_per_item"]
            print(
                f"{r['executor']:>8} {r['workers']:>7} {r['seconds']:8.2f} "
                f"{r['items_per_s']:8.1f} {r['fixed_s']:8.2f} {r['marginal_us_per_item']:8.0f} "
                f"{r['vs_local']:8.2f}x"
            )
        print("fixed: start-up (cluster, worker imports, decoder processes) and listing")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

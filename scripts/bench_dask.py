"""Throughput of the Dask executor against the local executor on a CPU-bound pipeline.

Decodes and resizes N generated JPEG photos (``files -> image.resize``) four ways, each into a
fresh output: local with 1 and 2 worker processes, and Dask (LocalCluster) with 1 and 2
workers. Reports items/s, and the Dask per-item overhead against local with as many workers
(cluster start-up included, then excluded by timing a second, empty run).

    python scripts/bench_dask.py [--n 2000] [--size 640x480] [--json out.json]
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
    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    try:
        make_photos(work / "in", args.n, (w, h))
        pipeline = Pipeline.chain(Files(root=str(work / "in")), ImageResize(size=112))
        rows = []
        for name, fn, kw in [
            ("local", run_local, {"workers": 1}),
            ("local", run_local, {"workers": 2}),
            ("dask", run_dask, {"workers": 1}),
            ("dask", run_dask, {"workers": 2}),
        ]:
            out = work / f"out-{name}-{kw['workers']}"
            seconds, counts = timed(fn, pipeline, out, **kw)
            assert counts["ok"] == args.n, counts
            empty_s, again = timed(fn, pipeline, out, **kw)  # fixed cost: start-up, listing
            assert again["processed"] == 0
            rows.append(
                {
                    "executor": name,
                    "workers": kw["workers"],
                    "seconds": seconds,
                    "fixed_s": empty_s,
                    "items_per_s": args.n / seconds,
                    "items_per_s_excl_fixed": args.n / max(1e-9, seconds - empty_s),
                }
            )
        local = {r["workers"]: r for r in rows if r["executor"] == "local"}
        print(f"{args.n} JPEGs {w}x{h} -> 112x112 (files -> image.resize)")
        print(
            f"{'executor':>8} {'workers':>7} {'total s':>8} {'fixed s':>8} {'items/s':>8} "
            f"{'items/s*':>9} {'overhead us/item*':>18}"
        )
        for r in rows:
            base = local[r["workers"]]
            over = ((r["seconds"] - r["fixed_s"]) - (base["seconds"] - base["fixed_s"])) / args.n
            r["overhead_us_per_item"] = over * 1e6
            print(
                f"{r['executor']:>8} {r['workers']:>7} {r['seconds']:8.2f} {r['fixed_s']:8.2f} "
                f"{r['items_per_s']:8.1f} {r['items_per_s_excl_fixed']:9.1f} "
                f"{r['overhead_us_per_item']:18.0f}"
            )
        print("* excluding the fixed cost measured by an unchanged re-run (cluster start, listing)")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark a first run through a Select barrier (a benchmark, not a test).

A Select node needs every item's light view before it decides, so the stages before it run
in a first pass; the main pass then carries the kept items on. The run keeps what the first
pass computed (``OUT/.stash``) so no input is decoded twice. This script measures, on
generated data, a first run of ``files -> DECODE -> select`` against the same pipeline with
the select node removed (every input decoded once, nothing kept back): the ratio shows what
the barrier costs beyond its own decision. It also counts decode calls per input (inline
runs, ``workers=0``), which must be 1.0.

``--quick`` takes 40 photos and no clips (a first run over even a few short clips takes
seconds: too long for ten runs). ``--report PATH`` writes one row per kind (every first run's
seconds with the select node, against the run without it) in the shared format of
``results.py``; there a speed-up below 1 is the barrier's cost, as expected.

Run from the repository root::

    .venv/bin/python scripts/bench/bench_barrier.py              # photos and clips, 5 repeats
    .venv/bin/python scripts/bench/bench_barrier.py --repeats 7 --workers 2
    .venv/bin/python scripts/bench/bench_barrier.py --quick --report barrier.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from results import Row, write_report

from datapipe.engine import runner
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline


def make_photos(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"c{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        ramp = np.linspace(0, 255, 640)[None, :, None] * rng.random(3)
        img = np.clip(ramp + rng.normal(0, 20, (480, 640, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"p{i:04d}.jpg", quality=90)


def make_clips(root: Path, n: int) -> None:
    from datapipe.stages.common.video_synth import panning_clip

    for i in range(n):
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        panning_clip(folder / f"v{i:02d}.mp4", size=(320, 240), frames=90, seed=i)


def pipeline(root: Path, kind: str, select: bool) -> Pipeline:
    decode: dict[str, Any] = (
        {"stage": "image.resize", "params": {"size": 112}}
        if kind == "image"
        else {"stage": "video.motion_vectors"}
    )
    nodes: dict[str, Any] = {
        "files": {"stage": "files", "params": {"root": str(root), "kinds": [kind]}},
        "decode": {**decode, "inputs": "files"},
    }
    if select:
        nodes["subset"] = {
            "stage": "select.random",
            "inputs": "decode",
            "params": {"fraction": 0.5},
        }
    return Pipeline.from_dict({"name": f"bench-{kind}", "nodes": nodes})


def decodes_per_input(p: Pipeline, out: Path, stage: str) -> float:
    """Decode calls per listed input in an inline run (stages made trusted for counting)."""
    calls: Counter[str] = Counter()
    original = runner.apply_map

    def counting(st: Any, inputs: Any, ctx: Any, *rest: Any) -> Any:
        calls[st.name] += 1
        return original(st, inputs, ctx, *rest)

    isolated = {n.stage.name: type(n.stage).isolate for n in p.nodes}
    runner.apply_map = counting  # type: ignore[assignment]
    for n in p.nodes:
        type(n.stage).isolate = False
    try:
        report = run_local(p, out, workers=0)
    finally:
        runner.apply_map = original  # type: ignore[assignment]
        for n in p.nodes:
            type(n.stage).isolate = isolated[n.stage.name]
    return calls[stage] / report.counts["listed"]


def first_run(p: Pipeline, out: Path, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    run_local(p, out, workers=workers)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=None, help="JPEGs (400; quick: 40)")
    ap.add_argument("--clips", type=int, default=None, help="H.264 clips (40; quick: 0)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="40 photos, no clips")
    ap.add_argument("--report", type=Path, default=None, help="write rows (results.py)")
    args = ap.parse_args()
    args.photos = (40 if args.quick else 400) if args.photos is None else args.photos
    args.clips = (0 if args.quick else 40) if args.clips is None else args.clips
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cases = [
            ("image", "image.resize", args.photos, make_photos),
            ("video", "video.motion_vectors", args.clips, make_clips),
        ]
        for kind, stage, n, make in (c for c in cases if c[2] > 0):
            make(base / kind, n)
            with_select = pipeline(base / kind, kind, True)
            plain = pipeline(base / kind, kind, False)
            per_input = decodes_per_input(with_select, base / "count", stage)
            shutil.rmtree(base / "count")
            times: dict[str, list[float]] = {"select": [], "plain": []}
            for _ in range(args.repeats):  # interleaved
                times["select"].append(first_run(with_select, base / "o1", args.workers))
                times["plain"].append(first_run(plain, base / "o2", args.workers))
            sel, pl = statistics.median(times["select"]), statistics.median(times["plain"])
            print(
                f"{kind}: {n} inputs, {stage} decodes per input with a select node: "
                f"{per_input:.2f}; first run (median of {args.repeats}, {args.workers} workers) "
                f"with select {sel:.2f} s, without {pl:.2f} s, ratio {sel / pl:.2f}"
            )
            note = (
                f"ours: with the select node; below 1x is expected (the barrier's cost); "
                f"{per_input:.2f} decodes per input (must be 1.00); {args.workers} workers"
            )
            task = f"first run, {n} {kind} inputs: files -> {stage} -> select.random"
            peers = {"without select": times["plain"]}
            rows.append(Row(task, "s/run", False, "with select", times["select"], peers, note=note))
    write_report(args.report, rows)


if __name__ == "__main__":
    main()

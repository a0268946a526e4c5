"""CPU cost of sampling before classifying: PointNet on 1024 points against a sampler that
keeps M points followed by PointNet on those M (the survey's S-NET cascade, 1024 -> 16).

Timing only: the cost of a forward pass does not depend on the weights, so the networks are
freshly initialised (their accuracy is the evidence script's business). Cascades:

- ``pointnet(1024)``: the task network on the whole cloud;
- ``fps(M) + pointnet(M)``: exact farthest point sampling (``points.fps``), then the network;
- ``snet(M) + match + pointnet(M)``: the S-NET sampler (``points.learned``, width 32 by
  default), its generated points matched to distinct input points, then the network;
- ``random(M) + pointnet(M)``: the floor.

Median ms per batch at ``--threads`` for batch 1 and 64 (clouds of ``make_point_dataset``),
over ``--rounds`` rounds in which every cascade and sampler runs in turns, after a warm-up;
the sampler's share is shown on its own. ``--quick`` takes batch 1 and 16.
``--report PATH`` writes one row per cascade and batch size (every round's ms, against
``pointnet(N)`` at that batch size) in the shared format of ``results.py``.

    .venv/bin/python scripts/bench/bench_point_cascade.py [--m 16] [--threads 2] [--rounds 7]
        [--task-width 32] [--sampler-width 32] [--quick] [--report cascade.json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from results import Row, write_report

from datapipe.demo.point_data import POINT_CLASSES, make_cloud
from datapipe.models import pointnet
from datapipe.stages.points.sampling import farthest_point_sample
from datapipe.stages.points.snet import SNet, match_to_input


def interleaved_ms(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Ms of each round of each function, run in turns after one untimed call each (so drift
    on a shared machine hits all)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--task-width", type=int, default=32, help="PointNet width")
    parser.add_argument("--sampler-width", type=int, default=32, help="S-NET width")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="batch 1 and 16 (not 64)")
    parser.add_argument("--report", type=Path, default=None, help="write rows (results.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    clouds = np.stack(
        [make_cloud(POINT_CLASSES[i % len(POINT_CLASSES)], rng, args.points) for i in range(64)]
    )
    task = pointnet(num_classes=len(POINT_CLASSES), width=args.task_width).eval()
    snet = SNet(args.m, args.sampler_width).eval()

    def classify(batch: np.ndarray) -> None:
        with torch.no_grad():
            task(torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 2, 1))))

    def fps(batch: np.ndarray) -> np.ndarray:
        idx = farthest_point_sample(list(batch), args.m)
        return np.stack([c[i] for c, i in zip(batch, idx, strict=True)])

    def learned(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            generated = snet(torch.from_numpy(batch)).numpy()
        return np.stack([c[match_to_input(g, c)] for g, c in zip(generated, batch, strict=True)])

    def random(batch: np.ndarray) -> np.ndarray:
        return np.stack([c[rng.choice(len(c), args.m, replace=False)] for c in batch])

    print(
        f"{args.points} -> {args.m} points, {args.threads} threads, median of {args.rounds}; "
        f"PointNet width {args.task_width}, S-NET width {args.sampler_width}"
    )
    print("| cascade | batch | sampler ms | total ms | x pointnet(all) |")
    print("|---|---|---|---|---|")
    rows: list[Row] = []
    whole_name = f"pointnet({args.points})"
    samplers = {"fps": fps, "snet + match": learned, "random": random}
    for b in (1, 16) if args.quick else (1, 64):
        batch = clouds[:b]
        fns: dict[str, Callable[[], object]] = {whole_name: lambda batch=batch: classify(batch)}
        for name, sampler in samplers.items():
            fns[name] = lambda batch=batch, s=sampler: s(batch)
            fns[f"{name} + pointnet"] = lambda batch=batch, s=sampler: classify(s(batch))
        times = interleaved_ms(fns, args.rounds)
        whole = statistics.median(times[whole_name])
        print(f"| {whole_name} | {b} | - | {whole:.2f} | 1.00 |")
        for name in samplers:
            cost, total = (statistics.median(times[k]) for k in (name, f"{name} + pointnet"))
            cascade = f"{name}({args.m}) + pointnet({args.m})"
            print(f"| {cascade} | {b} | {cost:.2f} | {total:.2f} | {total / whole:.2f} |")
            note = f"the sampler alone: {cost:.2f} ms (median)"
            if name == "random":
                note += "; random sampling is the floor"
            label, peers = f"{cascade}, batch {b}", {whole_name: times[whole_name]}
            ours = times[f"{name} + pointnet"]
            rows.append(Row(label, "ms/batch", False, cascade, ours, peers, note=note))
    write_report(args.report, rows)


if __name__ == "__main__":
    main()

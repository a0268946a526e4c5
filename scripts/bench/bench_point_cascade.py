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
after a warm-up; the sampler's share is shown on its own.

    .venv/bin/python scripts/bench/bench_point_cascade.py [--m 16] [--threads 2] [--rounds 7]
        [--task-width 32] [--sampler-width 32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from datapipe.demo.point_data import POINT_CLASSES, make_cloud
from datapipe.models import pointnet
from datapipe.stages.points.sampling import farthest_point_sample
from datapipe.stages.points.snet import SNet, match_to_input


def median_ms(fn: Callable[[], object], rounds: int) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--points", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--task-width", type=int, default=32, help="PointNet width")
    parser.add_argument("--sampler-width", type=int, default=32, help="S-NET width")
    parser.add_argument("--rounds", type=int, default=7)
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
    for b in (1, 64):
        batch = clouds[:b]
        whole = median_ms(lambda batch=batch: classify(batch), args.rounds)
        print(f"| pointnet({args.points}) | {b} | - | {whole:.2f} | 1.00 |")
        for name, sampler in (("fps", fps), ("snet + match", learned), ("random", random)):
            cost = median_ms(lambda batch=batch, s=sampler: s(batch), args.rounds)
            total = median_ms(lambda batch=batch, s=sampler: classify(s(batch)), args.rounds)
            print(
                f"| {name}({args.m}) + pointnet({args.m}) | {b} | {cost:.2f} | {total:.2f} | "
                f"{total / whole:.2f} |"
            )


if __name__ == "__main__":
    main()

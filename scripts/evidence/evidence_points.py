"""Does task-aware sampling beat FPS and random at small budgets? (issue 5 evidence)

Labelled clouds come from the built-in sample data (Open3D primitives with random pose,
scale and noise; 5 classes), read back from their PLY files. A PointNet is trained on full
clouds (resampled to 512 points); then test clouds are sampled to M = 16/32/64/128 points by
random sampling, exact FPS and the learned S-NET sampler (trained per M against the frozen
PointNet on the training clouds), and the PointNet's accuracy on the sampled test clouds is
reported, mean +- std over seeds.

    python scripts/evidence/evidence_points.py [--scale 20] [--seeds 3] [--epochs 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import open3d as o3d
import torch

from datapipe.demo.sample_data import generate_sample_data
from datapipe.stages.points.sampling import farthest_point_sample, random_point_sample
from datapipe.stages.points.snet import (
    TrainConfig,
    normalize,
    sample_learned,
    train_snet,
    train_task_net,
)

BUDGETS = (16, 32, 64, 128)


def load_clouds(root: Path) -> tuple[list[np.ndarray], list[str]]:
    clouds, labels = [], []
    for path in sorted((root / "pointclouds").rglob("*.ply")):
        clouds.append(normalize(np.asarray(o3d.io.read_point_cloud(str(path)).points)))
        labels.append(path.parent.name)
    return clouds, labels


def accuracy(task: torch.nn.Module, clouds: list[np.ndarray], y: np.ndarray) -> float:
    with torch.no_grad():
        pred = [int(task(torch.from_numpy(normalize(c))[None]).argmax()) for c in clouds]
    return float(np.mean(np.array(pred) == y))


def run_seed(
    clouds: list[np.ndarray], y: np.ndarray, n_classes: int, seed: int, epochs: int
) -> dict[tuple[str, int], float]:
    rng = np.random.default_rng(seed)
    test = np.zeros(len(clouds), bool)
    for c in range(n_classes):  # a stratified 30% test split
        members = np.flatnonzero(y == c)
        test[rng.choice(members, size=max(1, int(0.3 * len(members))), replace=False)] = True
    train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
    cfg = TrainConfig(epochs=epochs, seed=seed)
    train_clouds = [clouds[i] for i in train_idx]
    task = train_task_net(train_clouds, y[train_idx], n_classes, cfg)
    test_clouds = [clouds[i] for i in test_idx]
    out = {("full", 0): accuracy(task, test_clouds, y[test_idx])}
    for m in BUDGETS:
        snet = train_snet(train_clouds, y[train_idx], task, m, cfg)
        picks = {
            "random": [
                c[random_point_sample(len(c), m, seed + i)] for i, c in enumerate(test_clouds)
            ],
            "fps": [c[farthest_point_sample(c, m, start=0)] for c in test_clouds],
            "learned": [c[sample_learned(c, snet)] for c in test_clouds],
        }
        for name, sampled in picks.items():
            out[(name, m)] = accuracy(task, sampled, y[test_idx])
    return out


def _fmt(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.pstdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=20, help="clouds per class / 3")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        generate_sample_data(tmp, seed=0, scale=args.scale, modalities=("pointclouds",))
        clouds, labels = load_clouds(Path(tmp))
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    results: dict[tuple[str, int], list[float]] = {}
    for seed in range(args.seeds):
        for k, v in run_seed(clouds, y, len(classes), seed, args.epochs).items():
            results.setdefault(k, []).append(v)
    print(
        f"{len(clouds)} clouds, {len(classes)} classes, {args.seeds} seeds, "
        f"{args.epochs} epochs; PointNet accuracy on sampled test clouds"
    )
    print(f"full clouds: {_fmt(results[('full', 0)])}")
    print(f"{'M':>5} {'random':>15} {'fps':>15} {'learned':>15}")
    for m in BUDGETS:
        cells = [
            f"{statistics.mean(results[(n, m)]):.3f} +- {statistics.pstdev(results[(n, m)]):.3f}"
            for n in ("random", "fps", "learned")
        ]
        print(f"{m:>5} " + " ".join(f"{c:>15}" for c in cells))


if __name__ == "__main__":
    main()

"""Does a learned sampler beat FPS and random at small budgets? (Dovrat et al. 2019, S-NET;
Lang et al. 2020, SampleNet)

The papers' protocol on the built-in point set (``make_point_dataset``: 12 classes of z-up
objects that differ by small parts, 1024 points each), per seed:

1. a stratified split (``--test-fraction`` held out); every cloud normalised once (centred,
   unit radius), and never again: a sampled subset stays in its cloud's frame;
2. a PointNet task network trained on the full training clouds (1024 points, rotation about
   z / scale / jitter augmentation, Adam with cosine decay, ``--task-steps``);
3. per budget M: S-NET and SampleNet (soft projection) samplers trained against the frozen
   task network (``--sampler-steps``), matched to distinct input points at inference
   (nearest neighbour, duplicates filled by FPS);
4. the task network's accuracy on the test clouds sampled to M points by random sampling,
   exact FPS, S-NET and SampleNet, and on the full clouds.

Also the sampler's cost per cloud against ``points.fps`` and each training's time. Jobs run
in ``--jobs`` processes of one thread each. Prints a table (mean ± sd over seeds), writes
``--json`` and, with ``--picture``, a PNG of one test cloud with the points S-NET and FPS
keep at M=32.

    .venv/bin/python scripts/evidence/evidence_points.py [--seeds 3] [--jobs 2] \\
        [--task-steps 800] [--sampler-steps 1000] [--json points.json] [--picture pts.png]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from evidence_common import mean_sd, write_json

from datapipe.demo.point_data import iter_point_clouds
from datapipe.models import pointnet
from datapipe.stages.points.picture import draw_samplers
from datapipe.stages.points.sampling import farthest_point_sample, random_point_sample
from datapipe.stages.points.snet import normalize, sample_learned
from datapipe.stages.points.snet_train import TrainConfig, train_sampler, train_task_net

METHODS = ("random", "fps", "snet", "samplenet")


@cache
def dataset(per_class: int, seed: int, test_fraction: float) -> dict[str, Any]:
    """Normalised clouds, labels and the seed's stratified train/test split."""
    data = list(iter_point_clouds(per_class=per_class))
    names = sorted({name for name, _, _ in data})
    y = np.array([names.index(name) for name, _, _ in data])
    clouds = [normalize(c) for _, _, c in data]
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in range(len(names)):
        members = np.flatnonzero(y == c)
        test[rng.choice(members, round(test_fraction * len(members)), replace=False)] = True
    return {"clouds": clouds, "y": y, "classes": len(names), "test": test}


def accuracy(task: torch.nn.Module, subsets: list[np.ndarray], y: np.ndarray) -> float:
    with torch.no_grad():
        x = torch.from_numpy(np.stack(subsets)).transpose(1, 2)
        pred = torch.cat([task(chunk).argmax(1) for chunk in x.split(64)]).numpy()
    return float((pred == y).mean())


def _setup(args: argparse.Namespace, seed: int) -> tuple[dict[str, Any], TrainConfig]:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    cfg = TrainConfig(
        task_steps=args.task_steps,
        sampler_steps=args.sampler_steps,
        task_width=args.task_width,
        sampler_width=args.sampler_width,
        tnet=args.tnet,
        seed=seed,
    )
    return dataset(args.per_class, seed, args.test_fraction), cfg


def _task_path(args: argparse.Namespace, seed: int) -> Path:
    return Path(args.work) / f"task_{seed}.pt"


def task_job(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Train the seed's task network; accuracy on full, random- and FPS-sampled clouds."""
    d, cfg = _setup(args, seed)
    train = [c for c, t in zip(d["clouds"], d["test"], strict=True) if not t]
    test = [c for c, t in zip(d["clouds"], d["test"], strict=True) if t]
    y_test = d["y"][d["test"]]
    t0 = time.perf_counter()
    task = train_task_net(train, d["y"][~d["test"]], d["classes"], cfg)
    out: dict[str, Any] = {"task_train_s": time.perf_counter() - t0}
    torch.save(task.state_dict(), _task_path(args, seed))
    out["full"] = accuracy(task, test, y_test)
    farthest_point_sample(test[0], 2)  # compile (or load) the kernel before timing it
    for m in args.budgets:
        picks = [c[random_point_sample(len(c), m, seed * 100003 + i)] for i, c in enumerate(test)]
        out[f"random_{m}"] = accuracy(task, picks, y_test)
        t0 = time.perf_counter()
        idx = [farthest_point_sample(c, m, start=0) for c in test]
        out[f"fps_ms_{m}"] = (time.perf_counter() - t0) * 1000 / len(test)
        out[f"fps_{m}"] = accuracy(task, [c[i] for c, i in zip(test, idx, strict=True)], y_test)
    return out


def sampler_job(args: argparse.Namespace, seed: int, m: int, method: str) -> dict[str, Any]:
    """Train one sampler against the seed's task network; accuracy on its test subsets."""
    d, cfg = _setup(args, seed)
    cfg.method = method  # type: ignore[assignment]
    task = pointnet(num_classes=d["classes"], width=cfg.task_width, tnet=cfg.tnet)
    task.load_state_dict(torch.load(_task_path(args, seed), weights_only=True))
    task.eval()
    train = [c for c, t in zip(d["clouds"], d["test"], strict=True) if not t]
    test = [c for c, t in zip(d["clouds"], d["test"], strict=True) if t]
    t0 = time.perf_counter()
    sampler = train_sampler(train, d["y"][~d["test"]], task, m, cfg)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx = [sample_learned(c, sampler) for c in test]
    ms = (time.perf_counter() - t0) * 1000 / len(test)
    acc = accuracy(task, [c[i] for c, i in zip(test, idx, strict=True)], d["y"][d["test"]])
    if args.picture and seed == 0 and m == 32 and method == "snet":
        fps = farthest_point_sample(test[0], m, start=0)
        draw_samplers(args.picture, test[0], {"S-NET": idx[0], "FPS": fps})
    return {f"{method}_{m}": acc, f"{method}_ms_{m}": ms, f"{method}_train_s_{m}": train_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=200)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--methods", nargs="+", default=["snet", "samplenet"])
    parser.add_argument("--task-steps", type=int, default=800)
    parser.add_argument("--sampler-steps", type=int, default=1000)
    parser.add_argument("--task-width", type=int, default=32)
    parser.add_argument("--sampler-width", type=int, default=32)
    parser.add_argument("--tnet", action="store_true", help="task network with a T-Net")
    parser.add_argument("--jobs", type=int, default=2, help="processes (one thread each)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--picture", type=Path)
    args = parser.parse_args()
    results: dict[int, dict[str, Any]] = {s: {} for s in range(args.seeds)}
    with tempfile.TemporaryDirectory() as work, ProcessPoolExecutor(args.jobs) as pool:
        args.work = work
        for seed, r in zip(results, pool.map(task_job, [args] * args.seeds, results), strict=True):
            results[seed].update(r)
        jobs = [(s, m, k) for s in results for m in args.budgets for k in args.methods]
        futures = [pool.submit(sampler_job, args, *job) for job in jobs]
        for (seed, _, _), f in zip(jobs, futures, strict=True):
            results[seed].update(f.result())
    del args.work
    per_key = {k: [r[k] for r in results.values()] for k in results[0]}
    print(
        f"{args.seeds} seeds; {args.per_class} clouds per class, {args.test_fraction:.0%} "
        f"test; task steps {args.task_steps}, sampler steps {args.sampler_steps}"
    )
    print(f"PointNet on full clouds (1024 points): {mean_sd(per_key['full'])}")
    methods = [k for k in METHODS if f"{k}_{args.budgets[0]}" in per_key]
    print("| M | " + " | ".join(methods) + " |")
    print("|---" * (len(methods) + 1) + "|")
    for m in args.budgets:
        print(f"| {m} | " + " | ".join(mean_sd(per_key[f"{k}_{m}"]) for k in methods) + " |")
    print("cost per cloud (ms, one thread) and training time (s):")
    for m in args.budgets:
        cells = [f"fps {mean_sd(per_key[f'fps_ms_{m}'], '{:.2f}')}"]
        for k in args.methods:
            cells.append(f"{k} {mean_sd(per_key[f'{k}_ms_{m}'], '{:.2f}')}")
            cells.append(f"train {mean_sd(per_key[f'{k}_train_s_{m}'], '{:.0f}')}")
        print(f"M={m}: " + ", ".join(cells))
    print(f"task network training: {mean_sd(per_key['task_train_s'], '{:.0f}')} s")
    write_json(args.json, args, results)


if __name__ == "__main__":
    main()

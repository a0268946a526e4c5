"""Evidence: does progressive resizing reach the fixed-size accuracy in less time?

The fast.ai / FFCV recipe (ffcv-imagenet's ``rn50_*_epochs.yaml``: 160 px for most epochs,
a linear ramp, the last epochs at 192 px; "ImageNet in 18 minutes"): training at a lower
resolution first costs less per epoch, and the final epochs at full size recover the
accuracy. The protocol here, scaled to a 2-core CPU:

- data: ``make_image_dataset`` (``--classes`` x ``--per-class`` shape-over-photo-texture
  JPEGs, 64-160 px);
- both sides: ``files -> represent.resize -> train.image`` (ResNet-``--depth``, width
  ``--width``), the same seeds, epochs, batch size, learning rate, flips and key-hash split,
  validation at the final size ``--size``;
- fixed: ``represent.resize`` at ``--size`` (decoded once into the shards);
- progressive: a ``schedule`` from ``--size / 2`` (the first quarter of the epochs), a linear
  ramp, ``--size`` for the last quarter; the trainer recomputes the resize every epoch in a
  DataLoader worker (the stage decodes JPEGs at a reduced DCT scale);
- time: the whole run (decode, write, train, validate), and the trainer's own wall time.

Claim checked: the schedule reaches the fixed-size final accuracy within 1 point in <= 0.75x
the wall time. Reports mean and sample standard deviation over ``--seeds``.

    .venv/bin/python scripts/evidence/evidence_train_progressive.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from evidence_common import add_training_args, mean_sd, train_params, write_json

import datapipe
from datapipe.demo.training_data import make_image_dataset
from datapipe.graph import Pipeline


def schedule(size: int, epochs: int) -> dict[str, int]:
    """Half size for the first quarter, a linear ramp, full size for the last quarter."""
    return {
        "start_size": size // 2,
        "end_size": size,
        "start_epoch": epochs // 4,
        "end_epoch": max(epochs // 4, epochs - epochs // 4 - 1),
        "multiple": 8,
    }


def pipeline(data: Path, progressive: bool, seed: int, args: argparse.Namespace) -> Pipeline:
    resize: dict[str, Any] = (
        {"schedule": schedule(args.size, args.epochs)} if progressive else {"size": args.size}
    )
    train = train_params(args, seed, depth=args.depth, workers=1)
    return Pipeline.from_dict(
        {
            "name": "progressive" if progressive else "fixed",
            "nodes": {
                "photos": {"stage": "files", "params": {"root": str(data), "kinds": ["image"]}},
                "resize": {"stage": "represent.resize", "inputs": "photos", "params": resize},
                "model": {"stage": "train.image", "inputs": "resize", "params": train},
            },
            "run": {"workers": args.threads},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(parser, classes=10, per_class=100, size=64, epochs=16, threads=2)
    parser.add_argument("--depth", type=int, default=8)
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="evidence_progressive_"))
    data = work / "data"
    if not data.exists():
        make_image_dataset(
            data, classes=args.classes, per_class=args.per_class, seed=0, workers=None
        )
    results: dict[str, dict[str, list[float]]] = {}
    for progressive in (False, True):
        name = "progressive" if progressive else "fixed"
        r: dict[str, list[float]] = {"val_accuracy": [], "run_s": [], "train_s": []}
        for seed in args.seeds:
            out = work / f"{name}_{seed}"
            t0 = time.perf_counter()
            datapipe.run(pipeline(data, progressive, seed, args), out)
            run_s = time.perf_counter() - t0
            report = json.loads((out / "train/model/report.json").read_text())
            r["val_accuracy"].append(report["val_accuracy"])
            r["run_s"].append(run_s)
            r["train_s"].append(report["wall_s"])
            sizes = [h["input_shapes"][0][1] for h in report["history"]]
            print(
                f"{name} seed {seed}: val {report['val_accuracy']:.3f}, run {run_s:.0f} s, "
                f"trainer {report['wall_s']:.0f} s, sizes {sizes}",
                flush=True,
            )
        results[name] = r
    fixed = results["fixed"]
    print(
        f"\n{args.classes} classes x {args.per_class} JPEGs (64-160 px) -> {args.size} px, "
        f"ResNet-{args.depth} width {args.width}, {args.epochs} epochs, seeds {args.seeds}, "
        f"schedule {schedule(args.size, args.epochs)}"
    )
    print("| resize | val accuracy | run s | x fixed | trainer s | x fixed |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        run_x = statistics.mean(r["run_s"]) / statistics.mean(fixed["run_s"])
        train_x = statistics.mean(r["train_s"]) / statistics.mean(fixed["train_s"])
        print(
            f"| {name} | {mean_sd(r['val_accuracy'])} | {mean_sd(r['run_s'], '{:.0f}')} | "
            f"{run_x:.2f} | {mean_sd(r['train_s'], '{:.0f}')} | {train_x:.2f} |"
        )
    write_json(args.json, args, results)


if __name__ == "__main__":
    main()

"""Evidence: training on half the data per epoch, re-selected from the model's own scores.

Does a subset re-chosen every ``--every`` epochs by loss / EL2N / forgetting / gradient
k-center (``train.image``'s ``reselect:`` block) keep the accuracy of training on every
sample, and beat a fixed random subset of the same size, for less wall time? Protocol:

- data: ``make_image_dataset`` (``--classes`` x ``--per-class`` shape-over-texture JPEGs),
  ``files -> image.resize(--size) -> train.image`` (ResNet, ``--width``), the trainer's own
  key-hash validation split (the same held-out images for every arm);
- arms: all training samples every epoch; the same for ``fraction * epochs`` epochs (as
  many steps as a subset arm: the equal-compute reference); a fixed class-balanced random
  ``--fraction`` (``reselect`` with ``every`` past the last epoch: never rescored); the four
  scores, rescoring all training samples every ``--every`` epochs; the same batch size and
  learning rate, and (but for the equal-compute arm) the same epochs;
- seeds: ``--seeds`` (the trainer's seed: split, order, weights and draws);
- reported: validation accuracy mean ± sample sd over seeds, training samples seen, and the
  trainer's wall time (training + validation + rescoring, from its report).

    .venv/bin/python scripts/evidence/evidence_reselect.py [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from evidence_common import add_training_args, mean_sd, write_json

from datapipe.demo.training_data import make_image_dataset
from datapipe.executors.local import run_local
from datapipe.graph import Pipeline

SCORES = ("loss", "el2n", "forgetting", "grad_kcenter")


def arms(args: argparse.Namespace) -> dict[str, tuple[dict[str, Any] | None, int]]:
    """Arm name -> (the trainer's reselect block (None: every sample), epochs)."""
    fixed = {"every": 10_000, "fraction": args.fraction}
    short = max(1, round(args.fraction * args.epochs))
    out: dict[str, tuple[dict[str, Any] | None, int]] = {
        "all samples": (None, args.epochs),
        f"all samples, {short} epochs": (None, short),
        "fixed random": (fixed, args.epochs),
    }
    for score in args.scores:
        block = {"every": args.every, "fraction": args.fraction, "score": score}
        out[f"reselect {score}"] = (block, args.epochs)
    return out


def pipeline(
    data: Path, reselect: dict[str, Any] | None, epochs: int, seed: int, args: argparse.Namespace
) -> Pipeline:
    train = {"epochs": epochs, "width": args.width, "batch_size": args.batch, "lr": args.lr,
             "seed": seed, "threads": args.threads, "reselect": reselect}  # fmt: skip
    return Pipeline.from_dict(
        {
            "nodes": {
                "photos": {"stage": "files", "params": {"root": str(data), "kinds": ["image"]}},
                "resize": {
                    "stage": "image.resize",
                    "inputs": "photos",
                    "params": {"size": args.size},
                },
                "model": {"stage": "train.image", "inputs": "resize", "params": train},
            }
        }
    )


def one(
    data: Path, out: Path, arm: tuple[dict[str, Any] | None, int], seed: int, args: Any
) -> dict:
    """One training: its validation accuracy, samples seen and seconds."""
    run_local(pipeline(data, *arm, seed, args), out, workers=0)
    report = json.loads((out / "train" / "model" / "report.json").read_text())
    return {
        "val_accuracy": report["val_accuracy"],
        "samples_seen": sum(r["samples"] for r in report["history"]),
        "wall_s": report["wall_s"] + sum(r.get("rescore_s", 0.0) for r in report["history"]),
        "rescore_s": (report.get("reselect") or {}).get("rescore_s", 0.0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_training_args(ap, classes=8, per_class=60, size=32, epochs=12)
    ap.add_argument("--fraction", type=float, default=0.5)
    ap.add_argument("--every", type=int, default=2)
    ap.add_argument("--scores", nargs="+", default=list(SCORES), choices=SCORES)
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="evidence_reselect_"))
    data = work / "data"
    if not data.exists():
        make_image_dataset(data, classes=args.classes, per_class=args.per_class,
                           size=(40, 64), seed=0)  # fmt: skip
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for name, arm in arms(args).items():
            out = work / f"out-{name.replace(' ', '_').replace(',', '')}-{seed}"
            results.setdefault(name, []).append(one(data, out, arm, seed, args))
            print(f"seed {seed} {name}: {results[name][-1]}", flush=True)
    base = statistics.mean(r["val_accuracy"] for r in results["all samples"])
    fixed = statistics.mean(r["val_accuracy"] for r in results["fixed random"])
    print(f"\n{args.classes} classes x {args.per_class}, {args.epochs} epochs, "
          f"fraction {args.fraction}, every {args.every}, seeds {args.seeds}\n")  # fmt: skip
    print("| arm | val accuracy | Δ vs all | Δ vs fixed | samples seen | wall s | rescoring s |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        acc = [r["val_accuracy"] for r in rows]
        mean = statistics.mean(acc)
        print(f"| {name} | {mean_sd(acc)} | {mean - base:+.3f} | {mean - fixed:+.3f} | "
              f"{rows[0]['samples_seen']} | {mean_sd([r['wall_s'] for r in rows], '{:.1f}')} | "
              f"{mean_sd([r['rescore_s'] for r in rows], '{:.1f}')} |")  # fmt: skip
    write_json(args.json, args, results)


if __name__ == "__main__":
    main()

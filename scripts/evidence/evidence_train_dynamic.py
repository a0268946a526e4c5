"""Evidence: does a CNN on dynamic images beat the same CNN on the middle frame for motion?

Bilen et al., "Dynamic Image Networks for Action Recognition" (CVPR 2016): a clip's frames
pooled by approximate rank pooling into one "dynamic image" that a plain image CNN
(CaffeNet, ImageNet-initialised) classifies; on UCF-101 the dynamic image beat a single RGB
frame of the same network by a few points (and the two combined beat either). The claim
checked here (issue text): a ``train.image`` on dynamic images beats the same model on the
middle frame on the motion classes. The protocol, scaled to a 2-core CPU:

- data: ``make_video_dataset`` (``--classes`` x ``--per-class`` H.264 clips, ``--frames``
  frames of ``--side`` px, ``--camera``: background pan speed), the same clips as
  ``evidence_train_coviar.py``; the classes are motions of a textured object, so a single
  frame does not tell the class. The *motion classes* are all but ``flicker`` (with 6
  classes, the default, every class is one);
- dynamic image: ``files -> keyframes.uniform (every: --every, decode: true) ->
  represent.dynamic_image (field: keyframes, rescale: minmax) -> train.image``: one image
  per clip over the whole clip (the paper's single dynamic image per video, ``psi: frame``);
- middle frame: ``files -> keyframes.tsn (k: 1, mode: test, decode: true) -> train.image
  (field: keyframes)``: the centre frame of the clip, 1 H W 3;
- both: the same ResNet-``--depth`` (``--stages``: 4, the ImageNet-style stride-2 stem, as
  the paper's CaffeNet reduces early; 3 keeps full resolution) width ``--width`` on the
  clips' ``--side`` px images, the same epochs, batch, learning rate (SGD + cosine), seeds,
  key-hash validation split, and no flips (a flip turns pan_left into pan_right).

Reports validation accuracy, over all classes and over the motion classes' clips, as the mean
and sample standard deviation over ``--seeds``.

``--camera 0`` (the default here) keeps the background still; ``--camera 1`` is the generator's
default, a background panning up to 1 px per frame, which turns the class into motion
*relative to* the background (see ``make_video_dataset``). ``--threads 1`` (the default):
torch threads and stage workers per process, for a 2-core machine shared with other jobs.

    .venv/bin/python scripts/evidence/evidence_train_dynamic.py [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from evidence_common import add_video_data_args, mean_sd, video_data, write_json

import datapipe
from datapipe.graph import Pipeline

STATIC = "flicker"  # the one class whose object does not move
SIDES = ("dynamic image", "middle frame")


def pipeline(data: Path, side: str, seed: int, args: Any) -> Pipeline:
    train = {
        "stages": args.stages,
        "depth": args.depth,
        "width": args.width,
        "epochs": args.epochs,
        "batch_size": args.batch,
        "lr": args.lr,
        "seed": seed,
        "threads": args.threads,
    }
    clips = {"stage": "files", "params": {"root": str(data), "kinds": ["video"]}}
    if side == "dynamic image":
        nodes: dict[str, Any] = {
            "clips": clips,
            "frames": {
                "stage": "keyframes.uniform",
                "inputs": "clips",
                "params": {"every": args.every, "decode": True},
            },
            "pooled": {
                "stage": "represent.dynamic_image",
                "inputs": "frames",
                "params": {"field": "keyframes", "rescale": "minmax"},
            },
            "net": {
                "stage": "train.image",
                "inputs": "pooled",
                "params": {**train, "field": "dynamic_image"},
            },
        }
    else:
        nodes = {
            "clips": clips,
            "frames": {
                "stage": "keyframes.tsn",
                "inputs": "clips",
                "params": {"k": 1, "mode": "test", "decode": True},
            },
            "net": {
                "stage": "train.image",
                "inputs": "frames",
                "params": {**train, "field": "keyframes"},
            },
        }
    name = "dynamic" if side == "dynamic image" else "middle"
    return Pipeline.from_dict({"name": name, "nodes": nodes, "run": {"workers": args.threads}})


def motion_accuracy(confusion: list[list[int]], classes: list[str]) -> float:
    """Accuracy over the validation clips of every class but the static one (rows: truth)."""
    rows = [i for i, name in enumerate(classes) if name != STATIC]
    hit = sum(confusion[i][i] for i in rows)
    total = sum(sum(confusion[i]) for i in rows)
    return hit / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_video_data_args(parser)
    parser.add_argument("--every", type=int, default=1, help="pool every n-th frame")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--stages", type=int, default=4, choices=[3, 4])
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, stage workers")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    work, data = video_data(args, "evidence_dynamic_")
    results: dict[str, dict[str, list[float]]] = {}
    for side in SIDES:
        r: dict[str, list[float]] = {"val_accuracy": [], "motion_accuracy": [], "train_s": []}
        for seed in args.seeds:
            out = work / side.replace(" ", "_")
            datapipe.run(pipeline(data, side, seed, args), out)
            report = json.loads((out / "train/net/report.json").read_text())
            motion = motion_accuracy(report["confusion"], report["classes"])
            r["val_accuracy"].append(report["val_accuracy"])
            r["motion_accuracy"].append(motion)
            r["train_s"].append(report["wall_s"])
            print(
                f"{side} seed {seed}: val {report['val_accuracy']:.3f} (motion {motion:.3f}), "
                f"train acc {report['history'][-1]['train_accuracy']:.3f}, "
                f"{report['wall_s']:.0f} s, per class "
                f"{[round(a, 2) if a is not None else None for a in report['per_class_accuracy']]}",
                flush=True,
            )
        results[side] = r
    print(
        f"\n{args.classes} classes x {args.per_class} clips, {args.side} px, {args.frames} "
        f"frames (every {args.every} pooled), camera pan <= {args.camera} px/frame; "
        f"ResNet-{args.depth} ({args.stages} stages) width {args.width}, {args.epochs} epochs, "
        f"batch {args.batch}, "
        f"lr {args.lr}, no flips, seeds {args.seeds}; motion classes: all but {STATIC!r}"
    )
    print("| input | val accuracy | motion-class accuracy | trainer s |")
    print("|---|---|---|---|")
    for side, r in results.items():
        print(
            f"| {side} | {mean_sd(r['val_accuracy'])} | {mean_sd(r['motion_accuracy'])} | "
            f"{mean_sd(r['train_s'], '{:.0f}')} |"
        )
    write_json(args.json, args, results)


if __name__ == "__main__":
    main()

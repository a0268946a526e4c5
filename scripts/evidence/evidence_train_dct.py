"""Evidence: does a CNN on JPEG DCT coefficients match its pixel twin, faster?

Gueguen et al., "Faster Neural Networks Straight from JPEG" (NeurIPS 2018), on ImageNet with
ResNet-50: the DCT network (luma blocks entering at stride 8, chroma by late concatenation)
reached the pixel ResNet's accuracy within about a point, and ran faster because it skips the
inverse DCT and the network's first, full-resolution layers. The protocol here, scaled to a
2-core CPU:

- data: ``make_image_dataset`` (``--classes`` x ``--per-class`` shape-over-photo-texture
  JPEGs, classes that differ in shape, not colour) at a fixed ``--size`` so both sides see
  the same content: the pixel side decodes the whole JPEG (``image.resize`` at the file's
  own size), the DCT side reads its coefficients (``jpeg.dct``, channels, dequantized);
- models: the 4-stage ResNet-10 (``train.image``, ``stages: 4``) and its DCT twin
  (``train.dct``), the same trunk from stride 8 on, width ``--width``;
- training: the same seeds, epochs, batch size, learning rate, SGD + cosine, horizontal
  flips (pixels flipped vs coefficients sign-flipped), the same key-hash validation split;
- ``keep`` = 64/24/16/8 zigzag frequencies per component on the DCT side;
- speed, measured in one process at ``--threads``: end-to-end training (JPEG file -> model
  input -> forward + backward + step, batches of ``--batch``) and inference (JPEG file ->
  input -> forward, batches of 64), samples per second, the stages doing the reading.

Reports mean and sample standard deviation over ``--seeds``.

    .venv/bin/python scripts/evidence/evidence_train_dct.py [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from evidence_common import add_training_args, mean_sd, train_params, write_json

import datapipe
from datapipe.demo.training_data import make_image_dataset
from datapipe.graph import Pipeline
from datapipe.models import dct_resnet, resnet
from datapipe.stage import Context
from datapipe.stages.compressed.jpeg_dct import JpegDCTStage
from datapipe.stages.io.image_resize import ImageResize
from datapipe.train.data import channel_stats, normalize
from datapipe.train.inputs import DctInputs, PixelInputs


def pipeline(data: Path, side: str, keep: int, seed: int, args: argparse.Namespace) -> Pipeline:
    train = train_params(args, seed, depth=10)
    if side == "pixels":
        read = {"stage": "image.resize", "params": {"size": args.size, "mode": "crop"}}
        trainer = {"stage": "train.image", "params": {**train, "stages": 4}}
    else:
        read = {
            "stage": "jpeg.dct",
            "params": {"layout": "channels", "keep": keep, "dequantize": True},
        }
        trainer = {"stage": "train.dct", "params": train}
    return Pipeline.from_dict(
        {
            "name": f"{side}_{keep}",
            "nodes": {
                "photos": {"stage": "files", "params": {"root": str(data), "kinds": ["image"]}},
                "read": {**read, "inputs": "photos"},
                "model": {**trainer, "inputs": "read"},
            },
            "run": {"workers": args.threads},
        }
    )


def reader(side: str, keep: int, size: int) -> tuple[Any, Any]:
    """(stage, inputs) turning a JPEG path into model inputs, as the pipeline does."""
    if side == "pixels":
        return ImageResize(size=size, mode="crop"), PixelInputs("image")
    return JpegDCTStage(layout="channels", keep=keep, dequantize=True), DctInputs()


def throughput(side: str, keep: int, paths: list[Path], args: argparse.Namespace) -> dict:
    """Samples/s of file -> input -> forward+backward+step, and of file -> input -> forward."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    stage, inputs = reader(side, keep, args.size)
    ctx = Context()
    records = [stage.process({"path": str(p)}, ctx) for p in paths[:64]]
    first, _ = inputs([{**r, "label_id": 0} for r in records], train=False, skipped=Counter())
    stats = [channel_stats([x]) for x in first]
    shapes = [list(x.shape[1:]) for x in first]
    if side == "pixels":
        model = resnet(depth=10, width=args.width, num_classes=args.classes, stages=4)
    else:
        model = dct_resnet(
            depth=10,
            width=args.width,
            num_classes=args.classes,
            luma_channels=shapes[0][0],
            chroma_channels=shapes[1][0],
        )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def batch_of(chunk: list[Path], train: bool) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        samples = [
            {**stage.process({"path": str(p)}, ctx), "label_id": i % args.classes}
            for i, p in enumerate(chunk)
        ]
        xs, y = inputs(samples, train=train, skipped=Counter())
        return tuple(normalize(x, m, s) for x, (m, s) in zip(xs, stats, strict=True)), y

    def step(chunk: list[Path], train: bool) -> None:
        xs, y = batch_of(chunk, train)
        if train:
            loss = torch.nn.functional.cross_entropy(model(*xs), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            with torch.no_grad():
                model(*xs)

    def timed(n: int, batch: int, train: bool) -> float:
        chunks = [paths[i : i + batch] for i in range(0, n, batch)]
        model.train(train)
        for _ in range(2):  # warm-up: oneDNN builds its kernels for each new shape once
            step(chunks[0], train)
        t0 = time.perf_counter()
        for chunk in chunks:
            step(chunk, train)
        return sum(len(c) for c in chunks) / (time.perf_counter() - t0)

    n = min(len(paths), args.speed_samples)
    return {"train_per_s": timed(n, args.batch, True), "infer_per_s": timed(n, 64, False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(parser, classes=10, per_class=100, size=96, epochs=15, threads=2)
    parser.add_argument("--keeps", type=int, nargs="+", default=[64, 24, 16, 8])
    parser.add_argument("--speed-samples", type=int, default=512)
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="evidence_dct_"))
    data = work / "data"
    if not data.exists():
        make_image_dataset(
            data,
            classes=args.classes,
            per_class=args.per_class,
            size=(args.size, args.size),
            seed=0,
            workers=None,
        )
    paths = sorted(data.rglob("*.jpg"))
    configs = [("pixels", 0)] + [("dct", k) for k in args.keeps]
    results: dict[str, dict[str, Any]] = {}
    for side, keep in configs:
        name = "pixels" if side == "pixels" else f"dct keep={keep}"
        accs, rates = [], []
        for seed in args.seeds:
            report = datapipe.run(
                pipeline(data, side, keep, seed, args), work / f"{side}{keep}_{seed}"
            )
            summary = json.loads(
                (work / f"{side}{keep}_{seed}/train/model/report.json").read_text()
            )
            accs.append(summary["val_accuracy"])
            rates.append(summary["train_samples_per_s"])
            print(
                f"{name} seed {seed}: val {summary['val_accuracy']:.3f} ({report.elapsed_s:.0f} s)",
                flush=True,
            )
        speed = throughput(side, keep, paths, args)
        results[name] = {
            "val_accuracy": accs,
            "loop_samples_per_s": rates,
            **speed,
            "params": summary["params"],
            "macs": summary["macs"],
        }
    base = results["pixels"]
    print(
        f"\n{args.classes} classes x {args.per_class} JPEGs at {args.size}x{args.size}, "
        f"{args.epochs} epochs, seeds {args.seeds}, {args.threads} threads"
    )
    print(
        "| model | val accuracy | MACs | train: file -> step /s | x pixels | "
        "inference: file -> logits /s | x pixels |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {mean_sd(r['val_accuracy'])} | {r['macs'] / 1e6:.1f} M | "
            f"{r['train_per_s']:.0f} | {r['train_per_s'] / base['train_per_s']:.2f} | "
            f"{r['infer_per_s']:.0f} | {r['infer_per_s'] / base['infer_per_s']:.2f} |"
        )
    write_json(args.json, args, results)


if __name__ == "__main__":
    main()

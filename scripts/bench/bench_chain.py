"""The whole chain on a CPU, file -> prediction: compressed data + compressed network against
the fp32 pixel / RGB-frames twin (survey VI-B, data and network co-optimisation).

Targets (the issue's words): JPEG file -> prediction with the DCT model pruned and quantized
>= 3x faster than the fp32 pixel twin from the same files, within 2 points of its accuracy;
the same for video: CoViAR (MV + I-frame streams, ``--streams``) compressed against the fp32
TSN model on RGB frames.

Protocol:

- images: ``make_image_dataset`` JPEGs at a fixed ``--size`` (both sides see the same
  content, as ``evidence_train_dct.py``); trained in real pipelines, one seed, the same
  epochs, batch, learning rate and key-hash split: ``files -> image.resize -> train.image``
  (ResNet-10, ``stages: 4``, fp32) and ``files -> jpeg.dct -> train.dct`` (its DCT twin)
  with the ``compress:`` variants ``prune`` (``--amount``, ``--finetune-epochs``), ``quantize``
  (int8 PTQ, ONNX Runtime) and both (the fp32 model reused, as ``evidence_compress.py``);
- video: ``make_video_dataset`` clips; ``files -> keyframes.uniform (every 1, decode) ->
  train.video streams [rgb]`` (TSN) against ``files -> video.coviar -> train.video`` with
  ``--streams`` and the same three variants;
- the chain, timed in this one process at ``--threads`` over the trainer's validation files:
  the file -> the kernel of the stage the pipeline ran (``process()``: read + decode;
  ``image.resize`` decodes through libturbojpeg at the DCT scale Pillow's ``draft()`` would
  pick, none here since the files are the model's size, then resizes with Pillow) ->
  ``TrainedModel.prepare`` + normalisation (prepare) -> the forward (torch eager, or ONNX
  Runtime via ``OnnxModule``, ``allow_spinning=0``): ms per file at batch 1, files/s at
  batch 64 (decode 64 files, then one forward), the median of ``--repeats`` interleaved
  rounds (order alternating) after an untimed pass that also gives each model's accuracy,
  recomputed here (argmax against the label) beside the trainer's ``val_accuracy``;
- extra rows: the fp32 twin in ONNX Runtime (``export: [onnx]``) and, for RGB,
  ``keyframes.tsn`` (test centres, ``decode``: only the S frames the model takes become RGB),
  the cheaper decode a user would pick; the baseline of a target is the faster fp32 torch
  row at each batch size.

The machine may be shared: timings move with its load; compare rows of one run only.

    .venv/bin/python scripts/bench/bench_chain.py [--quick] [--threads 2] [--json out.json]
        [--report chain.json]

``--quick`` (tiny sets, one epoch, images only unless ``--parts`` says otherwise) only checks
that it runs (about 20 s at 2 threads). ``--report PATH`` writes, per part and batch size,
the pruned + int8 chain against the fp32 twins (every round: ms per file at batch 1, files/s
at batch 64; the target >= 3x against the faster fp32 torch row) in the shared format of
``results.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "evidence"))
from evidence_common import video_data, write_json
from results import Row, write_report

import datapipe
from datapipe import registry
from datapipe.demo.training_data import make_image_dataset
from datapipe.graph import Pipeline
from datapipe.stage import Context
from datapipe.stages.io.files import unique_keys
from datapipe.stream import from_shards
from datapipe.train import split_by_key
from datapipe.train.data import normalize
from datapipe.train.int8 import OnnxModule
from datapipe.train.saved import TrainedModel

PHASES = ("decode", "prepare", "forward")


@dataclass
class Chain:
    """One chain: the stage kernel that reads a file, the saved model, its runtime."""

    name: str
    baseline: bool  # the fp32 pixel / RGB twin
    read: Callable[[Path], dict[str, Any]]
    model: TrainedModel
    report: dict[str, Any]
    runtime: str = "torch"
    times: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    accuracy: float = 0.0


def reader(read: dict[str, Any]) -> Callable[[Path], dict[str, Any]]:
    """The kernel of the stage a pipeline node ran (its ``process()``): file -> record."""
    stage, ctx = registry.get(read["stage"])(**read.get("params", {})), Context()
    return lambda path: stage.process({"path": str(path)}, ctx)


def train(
    data: Path, kind: str, read: dict, trainer: dict, out: Path, args: Namespace, compress: bool
) -> dict[str, Path]:
    """``files -> read -> trainer`` run once, or once per ``compress:`` variant (the fp32
    model reused): the folder of each model, fp32 first."""
    prune = {"amount": args.amount, "finetune_epochs": args.finetune_epochs}
    blocks = {"pruned": {"prune": prune}, "int8": {"quantize": {}},
              "pruned+int8": {"prune": prune, "quantize": {}}}  # fmt: skip
    folder, found = out / "train" / "model", {"fp32": out / "train" / "model"}
    for variant, block in (blocks if compress else {"fp32": None}).items():
        t0 = time.perf_counter()
        params = {**trainer["params"], "compress": block}
        nodes = {
            "files": {"stage": "files", "params": {"root": str(data), "kinds": [kind]}},
            "read": {**read, "inputs": "files"},
            "model": {**trainer, "params": params, "inputs": "read"},
        }
        pipeline = {"name": out.name, "nodes": nodes, "run": {"workers": args.threads}}
        report = datapipe.run(Pipeline.from_dict(pipeline), out)
        if block is not None:
            found[variant] = out / "variants" / variant
            shutil.copytree(folder / "compressed", found[variant])
        if not (found[variant] / "report.json").exists():
            raise RuntimeError(f"{out.name} {variant}: no model ({report.status}, {report.sinks})")
        print(f"trained {out.name} {variant}: {time.perf_counter() - t0:.0f} s", flush=True)
    return found


def loaded(folder: Path) -> tuple[TrainedModel, dict[str, Any]]:
    spec = json.loads((folder / "model.json").read_text())
    return TrainedModel(folder, spec), json.loads((folder / "report.json").read_text())


def twins(
    data: Path, kind: str, work: Path, args: Namespace, base: tuple[str, dict, dict[str, dict]],
    comp: tuple[str, dict, dict],
) -> tuple[list[Chain], Path]:  # fmt: skip
    """Train both sides; the rows: the fp32 twin after each of its reads (the first is its
    pipeline's), in ONNX Runtime after the last, then each compressed variant."""
    (name, trainer, reads), (comp_name, comp_trainer, comp_read) = base, comp
    first = next(iter(reads.values()))
    fp32 = train(data, kind, first, trainer, work / name, args, False)["fp32"]
    variants = train(data, kind, comp_read, comp_trainer, work / comp_name, args, True)
    rows = [Chain(f"{name} fp32{how}", True, reader(r), *loaded(fp32)) for how, r in reads.items()]
    last = [*reads][-1]
    rows.append(Chain(f"{name} fp32{last}", True, reader(reads[last]), *loaded(fp32), "ort"))
    rows[-1].model.model = OnnxModule(fp32 / "model.onnx", args.threads).eval()
    for variant, folder in variants.items():
        model, report = loaded(folder)
        runtime = "ort" if isinstance(model.model, OnnxModule) else "torch"
        rows.append(
            Chain(f"{comp_name} {variant}", False, reader(comp_read), model, report, runtime)
        )
    return rows, work / name


def validation(out: Path, data: Path, seed: int) -> tuple[list[Path], list[int]]:
    """The trainer's validation files and labels (its key-hash split, val_fraction 0.2)."""
    rels = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.*"))
    paths = dict(zip(unique_keys(rels), (data / r for r in rels), strict=True))
    labels = {
        s["key"]: int(s["label_id"]) for s in from_shards(out, shuffle=False, fields=["label_id"])
    }
    val = split_by_key(list(labels), list(labels.values()), 0.2, seed)
    return [paths[k] for k in sorted(val)], [labels[k] for k in sorted(val)]


def chain(row: Chain, files: list[Path], batch: int) -> tuple[dict[str, float], list[int]]:
    """Seconds per phase over ``files`` in batches of ``batch``, and the predictions."""
    tm, spent, preds = row.model, dict.fromkeys(PHASES, 0.0), []
    for i in range(0, len(files), batch):
        t0 = time.perf_counter()
        records = [row.read(p) for p in files[i : i + batch]]
        t1 = time.perf_counter()
        prepared = [tm.prepare(r) for r in records]
        if any(isinstance(p[0], str) for p in prepared):
            raise RuntimeError(f"{row.name}: {next(p for p in prepared if isinstance(p[0], str))}")
        xs, at = [], 0  # as TrainedModel.logits, split from the forward to time it apart
        for part in zip(*prepared, strict=True):
            x = torch.cat(part)
            c = x.shape[-3]
            xs.append(normalize(x, tm.mean[at : at + c], tm.std[at : at + c]))
            at += c
        t2 = time.perf_counter()
        with torch.inference_mode():
            logits = tm.model(*xs)
        t3 = time.perf_counter()
        preds += logits.argmax(1).tolist()
        for phase, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            spent[phase] += dt
    return spent, preds


def measure(rows: list[Chain], files: list[Path], labels: list[int], repeats: int) -> None:
    """Each row's accuracy (an untimed pass that also warms up every batch shape), then
    ``repeats`` interleaved rounds at batch 1 and 64 (ms per file per phase)."""
    for row in rows:
        _, preds = chain(row, files, 64)
        chain(row, files[:4], 1)
        row.accuracy = sum(p == y for p, y in zip(preds, labels, strict=True)) / len(labels)
    for r in range(repeats):
        for batch in (1, 64):
            for row in rows if r % 2 == 0 else rows[::-1]:
                spent, _ = chain(row, files, batch)
                ms = {k: 1000 * v / len(files) for k, v in spent.items()}
                row.times.setdefault(batch, []).append({**ms, "total": sum(ms.values())})


def median(row: Chain, batch: int, key: str = "total") -> float:
    return statistics.median(t[key] for t in row.times[batch])


def baseline(rows: list[Chain], batch: int) -> Chain:
    """The baseline of the targets at ``batch``: the faster fp32 torch row."""
    return min(
        (r for r in rows if r.baseline and r.runtime == "torch"), key=lambda r: median(r, batch)
    )


def label(row: Chain) -> str:
    return row.name + (" (ort)" if row.runtime == "ort" and row.baseline else "")


def per_round(row: Chain, batch: int) -> list[float]:
    """Each round's figure as the table shows it: ms per file at batch 1, else files/s."""
    return [t["total"] if batch == 1 else 1000 / t["total"] for t in row.times[batch]]


def report_rows(rows: list[Chain], task: str) -> list[Row]:
    """Pruned + int8 against every fp32 twin at batch 1 and 64; the target (>= 3x) against
    the faster fp32 torch row, as in the table."""
    target, out = rows[-1], []
    for b, unit in ((1, "ms/file"), (64, "files/s")):
        base, ours = baseline(rows, b), per_round(target, b)
        peers = {label(r): per_round(r, b) for r in rows if r.baseline}
        note = f"accuracy {target.accuracy:.3f} vs {base.accuracy:.3f} (target: within 0.02)"
        goal = {label(base): ">= 3"}
        out.append(Row(f"{task}, batch {b}", unit, b > 1, target.name, ours, peers, goal, note))
    return out


def summary(rows: list[Chain], title: str, n: int) -> dict[str, Any]:
    """Print the table, the targets and the profile; the figures."""
    base = {b: baseline(rows, b) for b in (1, 64)}  # per batch size
    best = {
        b: min((r for r in rows if r.baseline), key=lambda r, b=b: median(r, b)) for b in (1, 64)
    }
    target = rows[-1]  # pruned + int8
    print(f"\n### {title}\n")
    print(
        "| chain | runtime | MMACs | accuracy (here) | val_accuracy (report) | b1 ms/file | "
        "b1 ms: decode / prepare / forward | b64 files/s | b64 ms/file: decode / prepare / "
        "forward | x baseline b1 | x baseline b64 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    out: dict[str, Any] = {"rows": {}}
    for r in rows:
        ms = {b: {k: median(r, b, k) for k in (*PHASES, "total")} for b in (1, 64)}
        x = {b: median(base[b], b) / ms[b]["total"] for b in (1, 64)}
        split = {b: " / ".join(f"{ms[b][k]:.2f}" for k in PHASES) for b in (1, 64)}
        out["rows"][label(r)] = {
            "runtime": r.runtime, "macs": r.report["macs"], "accuracy": r.accuracy,
            "report_val_accuracy": r.report["val_accuracy"], "b1_ms_per_file": ms[1],
            "b64_ms_per_file": ms[64], "b64_files_per_s": 1000 / ms[64]["total"],
            "x_baseline_b1": x[1], "x_baseline_b64": x[64],
        }  # fmt: skip
        print(
            f"| {r.name} | {r.runtime} | {r.report['macs'] / 1e6:.1f} | {r.accuracy:.3f} | "
            f"{r.report['val_accuracy']:.3f} | {ms[1]['total']:.2f} | {split[1]} | "
            f"{1000 / ms[64]['total']:.1f} | {split[64]} | {x[1]:.2f} | {x[64]:.2f} |"
        )
    ratio = {b: median(base[b], b) / median(target, b) for b in (1, 64)}
    drop = max(base[b].accuracy for b in (1, 64)) - target.accuracy
    met = {"speed_b1": ratio[1] >= 3, "speed_b64": ratio[64] >= 3, "accuracy": drop <= 0.02}
    out.update(ratios=ratio, accuracy_drop=drop, met=met, target=target.name)
    out.update(baseline={b: base[b].name for b in (1, 64)})
    word = {True: "met", False: "NOT met"}
    print(
        f"\nTarget: {target.name} >= 3x faster than the fp32 twin (the faster fp32 torch row "
        f"at each batch size), within 0.02 accuracy. Speed: {ratio[1]:.2f}x at batch 1 vs "
        f"{base[1].name} ({word[met['speed_b1']]}), {ratio[64]:.2f}x at batch 64 vs "
        f"{base[64].name} ({word[met['speed_b64']]}); against the best fp32 including ONNX "
        f"Runtime: {median(best[1], 1) / median(target, 1):.2f}x / "
        f"{median(best[64], 64) / median(target, 64):.2f}x. Accuracy: {target.accuracy:.3f} vs "
        f"{base[64].accuracy:.3f}: {-drop:+.3f} ({word[met['accuracy']]}; {n} files: one is "
        f"{1 / n:.3f}, standard error {(target.accuracy * (1 - target.accuracy) / n) ** 0.5:.3f})."
    )
    for r, b in ((base[1], 1), (target, 1), (base[64], 64), (target, 64)):  # the profile
        total = median(r, b)
        shares = ", ".join(f"{k} {100 * median(r, b, k) / total:.0f}%" for k in PHASES)
        print(f"- {r.name} ({r.runtime}), batch {b}: {total:.2f} ms/file = {shares}")
    return out


def images(args: Namespace, work: Path) -> tuple[list[Chain], Path, Path, str]:
    data, size = work / "images", (args.size, args.size)
    make_image_dataset(data, classes=args.classes, per_class=args.per_class, size=size, seed=0)
    common = {
        "depth": 10, "width": args.width, "epochs": args.epochs, "seed": args.seed,
        "batch_size": args.batch, "lr": args.lr, "flip": True, "threads": args.threads,
    }  # fmt: skip
    pixels = {"stage": "image.resize", "params": {"size": args.size, "mode": "crop"}}
    pix_train = {"stage": "train.image", "params": {**common, "stages": 4, "export": ["onnx"]}}
    dct = {"stage": "jpeg.dct", "params": {"layout": "channels", "keep": args.keep,
                                           "dequantize": True}}  # fmt: skip
    rows, out = twins(data, "image", work, args, ("pixels", pix_train, {"": pixels}),
                      ("dct", {"stage": "train.dct", "params": common}, dct))  # fmt: skip
    title = (
        f"Images: {args.classes} classes x {args.per_class} JPEGs of {args.size}x{args.size} px; "
        f"ResNet-10 width {args.width} vs its DCT twin (keep {args.keep}), {args.epochs} epochs, "
        f"prune {args.amount} + {args.finetune_epochs} epochs, seed {args.seed}"
    )
    return rows, out, data, title


def video(args: Namespace, work: Path) -> tuple[list[Chain], Path, Path, str]:
    clips = Namespace(
        classes=args.video_classes, per_class=args.video_per_class, side=args.side,
        frames=args.frames, camera=0, threads=args.threads, out=work / "video",
    )  # fmt: skip
    _, data = video_data(clips, "bench_chain_")
    common = {
        "segments": args.segments, "size": args.frame_size, "depth": 8, "width": args.video_width,
        "epochs": args.video_epochs, "batch_size": 16, "lr": args.lr, "seed": args.seed,
        "threads": args.threads,
    }  # fmt: skip
    reads = {
        " (every frame)": {"stage": "keyframes.uniform", "params": {"every": 1, "decode": True}},
        f" ({args.segments} frames)": {
            "stage": "keyframes.tsn",
            "params": {"k": args.segments, "mode": "test", "decode": True},
        },
    }
    rgb = {"stage": "train.video", "params": {**common, "streams": ["rgb"], "export": ["onnx"]}}
    coviar = {"stage": "train.video", "params": {**common, "streams": args.streams}}
    name = "coviar_" + "+".join(args.streams)
    lean = {"residual": "residual" in args.streams}  # no residuals: only I-frames become RGB
    rows, out = twins(data, "video", work, args, ("rgb", rgb, reads),
                      (name, coviar, {"stage": "video.coviar", "params": lean}))  # fmt: skip
    title = (
        f"Video: {args.video_classes} classes x {args.video_per_class} H.264 clips of {args.side} "
        f"px, {args.frames} frames; TSN on RGB vs CoViAR {'+'.join(args.streams)}, ResNet-8 "
        f"width {args.video_width} per stream on {args.frame_size} px, {args.segments} segments, "
        f"{args.video_epochs} epochs, prune {args.amount} + {args.finetune_epochs} epochs"
    )
    return rows, out, data, title


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="tiny sizes, to check that it runs")
    add("--parts", nargs="+", default=None, choices=["images", "video"], help="default: both")
    add("--classes", type=int, default=10)
    add("--per-class", type=int, default=80)
    add("--size", type=int, default=128, help="JPEG side, px (a multiple of 16)")
    add("--keep", type=int, default=8, help="jpeg.dct zigzag frequencies")
    add("--width", type=int, default=16)
    add("--epochs", type=int, default=25, help="fewer leave the pixel twin near chance")
    add("--batch", type=int, default=32)
    add("--lr", type=float, default=0.05)
    add("--amount", type=float, default=0.5, help="prune: share of channels removed")
    add("--finetune-epochs", type=int, default=4)
    add("--video-classes", type=int, default=6)
    add("--video-per-class", type=int, default=30)
    add("--side", type=int, default=64, help="clip width and height, px")
    add("--frames", type=int, default=24)
    add("--frame-size", type=int, default=32, help="frames resized to, px")
    add("--segments", type=int, default=3)
    add("--video-width", type=int, default=8)
    add("--video-epochs", type=int, default=12)
    add("--streams", nargs="+", default=["iframe", "mv"], help="CoViAR streams")
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=2)
    add("--repeats", type=int, default=5)
    add("--json", type=Path, default=None)
    add("--report", type=Path, default=None, help="write rows (results.py)")
    args = parser.parse_args()
    if args.quick:
        args.__dict__.update(
            classes=3, per_class=12, size=64, epochs=1, finetune_epochs=1, video_classes=3,
            video_per_class=6, side=32, frames=12, video_epochs=1,
        )  # fmt: skip
    args.parts = args.parts or (["images"] if args.quick else ["images", "video"])
    json_path = args.json.resolve() if args.json else None
    report_path = args.report.resolve() if args.report else None
    report: list[Row] = []
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench_chain_") as tmp:
        os.chdir(tmp)  # ONNX Runtime's tools may leave files in the working directory
        for part in args.parts:
            t0 = time.perf_counter()
            rows, out, data, title = {"images": images, "video": video}[part](args, Path(tmp))
            files, labels = validation(out, data, args.seed)
            if len(files) != rows[0].report["val_samples"]:
                print(f"warning: {len(files)} validation files, the trainer had "
                      f"{rows[0].report['val_samples']}")  # fmt: skip
            measure(rows, files, labels, args.repeats)
            print(f"{part}: {len(files)} validation files, {time.perf_counter() - t0:.0f} s")
            results[part] = {
                "title": title,
                "files": len(files),
                **summary(rows, title, len(files)),
            }
            task = f"JPEG {args.size} px" if part == "images" else f"H.264 clip {args.side} px"
            report += report_rows(rows, f"{task} -> prediction")
    print(f"\n{args.threads} threads, median of {args.repeats} interleaved rounds")
    write_json(json_path, args, results)
    write_report(report_path, report)


if __name__ == "__main__":
    main()

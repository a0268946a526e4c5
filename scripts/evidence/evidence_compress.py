"""Evidence: what pruning, low-rank factorisation, distillation and int8 buy on a CPU
(survey IV-B to IV-E), per model.

For each model (the pixel ResNet-10 of ``train.image``, its DCT twin ``train.dct``, PointNet
of ``train.points``) and seed: train the fp32 model in a real pipeline, then the
``compress:`` variants (``--variants``) on the same output (the fp32 model is reused):
``prune`` (50% of the channels, ``--finetune-epochs``), the same fine-tuning distilled from a
3x wider teacher trained in the same pipeline (a pixel ResNet for the DCT model), Tucker-2 at
rank 0.5, int8 PTQ and QAT (``--qat-epochs``, ONNX Runtime), and prune + int8, in the
survey's order. Then, in this one process at ``--threads``, interleaved: CPU latency at
batch 1 and 64 of the fp32 model in eager mode, under ``torch.compile`` and in ONNX Runtime
(``allow_spinning=0``: the best fp32 a user gets), of the pruned model in eager mode and in
ONNX Runtime, and of the int8 models. Reports accuracy, params, bytes, MACs and latency,
mean ± sample standard deviation over ``--seeds``, and the ratios against fp32 eager and
against the best fp32.

    .venv/bin/python scripts/evidence/evidence_compress.py [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from evidence_common import mean_sd, write_json

import datapipe
from datapipe.demo.point_data import make_point_dataset
from datapipe.demo.training_data import make_image_dataset
from datapipe.graph import Pipeline
from datapipe.models import count_macs
from datapipe.models.measure import zero_inputs
from datapipe.train.int8 import OnnxModule
from datapipe.train.saved import load_model

warnings.filterwarnings("ignore")

MODELS = ("pixels", "dct", "points")


def variants(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The compress blocks measured, by name (the survey's order: factorise or prune, one
    fine-tuning, distilling where named, then int8 with or without QAT)."""
    prune = {"amount": args.amount, "finetune_epochs": args.finetune_epochs}
    qat = {"mode": "qat", "finetune_epochs": args.qat_epochs}
    tucker = {"method": "tucker", "rank": 0.5}
    every = {
        "pruned": {"prune": prune},
        "pruned + distilled": {"prune": prune, "distill": {"teacher": "teacher"}},
        "tucker": {"decompose": {**tucker, "finetune_epochs": args.finetune_epochs}},
        "int8": {"quantize": {"mode": "ptq"}},
        "int8 qat": {"quantize": qat},
        "pruned + int8": {"prune": prune, "quantize": {"mode": "ptq"}},
        "pruned + int8 qat": {"prune": prune, "quantize": qat},
    }
    return {name: every[name] for name in args.variants}


#: the variants measured by default
VARIANTS = ("pruned", "pruned + distilled", "tucker", "int8", "int8 qat", "pruned + int8",
            "pruned + int8 qat")  # fmt: skip


def pipeline(
    data: Path, model: str, seed: int, block: dict[str, Any], args: argparse.Namespace
) -> Pipeline:
    train: dict[str, Any] = {
        "epochs": args.epochs,
        "seed": seed,
        "batch_size": 32,
        "threads": args.threads,
        "export": ["onnx"],
        "compress": block,
    }
    if model == "points":
        read = {"stage": "points.fps", "params": {"m": 256}}
        source = {"root": str(data / "points"), "kinds": ["pointcloud"]}
        trainer = {
            "stage": "train.points",
            "params": {**train, "width": 32, "rotate": True, "jitter": 0.01,
                       "optimizer": "adamw", "lr": 0.002},
        }  # fmt: skip
        nodes = {"points": {"stage": "points.read", "inputs": "files"}}
        read["inputs"] = "points"
    else:
        source = {"root": str(data / "images"), "kinds": ["image"]}
        common = {**train, "depth": 10, "width": 16, "lr": 0.05, "flip": True}
        if model == "pixels":
            read = {"stage": "image.resize", "params": {"size": args.size, "mode": "crop"}}
            trainer = {"stage": "train.image", "params": {**common, "stages": 4}}
        else:
            read = {"stage": "jpeg.dct", "params": {"layout": "channels", "keep": 8,
                                                    "dequantize": True}}  # fmt: skip
            trainer = {"stage": "train.dct", "params": common}
        nodes = {}
        read["inputs"] = "files"
    if args.teacher:  # a larger teacher: the pixel ResNet-10 at 3x the width (in every
        # variant's pipeline: the same committed samples, so the fp32 model is reused)
        teacher = {"stage": "train.image", "params": {**train, "depth": 10, "width": 48,
                   "lr": 0.05, "flip": True, "stages": 4, "compress": None}}  # fmt: skip
        if model == "points":
            teacher = {**trainer, "params": {**trainer["params"], "width": 96, "compress": None}}
        if model == "dct":
            nodes["pixels"] = {"stage": "image.resize", "inputs": "files",
                               "params": {"size": args.size, "mode": "crop"}}  # fmt: skip
        nodes["teacher"] = {**teacher, "inputs": "pixels" if model == "dct" else "read"}
    return Pipeline.from_dict(
        {
            "name": model,
            "nodes": {
                "files": {"stage": "files", "params": source},
                **nodes,
                "read": read,
                "model": {**trainer, "inputs": "read"},
            },
            "run": {"workers": args.threads},
        }
    )


def load(folder: Path) -> tuple[torch.nn.Module, list[list[int]]]:
    spec = json.loads((folder / "model.json").read_text())
    return load_model(folder, spec), spec["inputs"]["shapes"]


def ort_runner(path: Path, threads: int) -> torch.nn.Module:
    """An fp32 ONNX file in ONNX Runtime (no spinning), as a module."""
    return OnnxModule(path, threads).eval()


def latencies(
    runners: dict[str, Callable[..., Any]],
    shapes: list[list[int]],
    rounds: int = 7,
) -> dict[str, dict[str, float]]:
    """Median ms per batch (1 and 64) of each runner, interleaved round by round."""
    out: dict[str, dict[str, float]] = {}
    for batch in (1, 64):
        xs = zero_inputs(shapes if len(shapes) > 1 else shapes[0], batch)
        times: dict[str, list[float]] = {name: [] for name in runners}
        with torch.no_grad():
            for run in runners.values():  # warm-up (compilation, kernel selection)
                run(*xs)
                run(*xs)
            for _ in range(rounds):
                for name, run in runners.items():
                    t0 = time.perf_counter()
                    run(*xs)
                    times[name].append((time.perf_counter() - t0) * 1000)
        for name, ts in times.items():
            out.setdefault(name, {})[f"batch_{batch}"] = statistics.median(ts)
    return out


def one(data: Path, model: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train the fp32 model once, then each variant (the fp32 model reused); measure all."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        folder = out / "train" / "model"
        found: dict[str, dict[str, Any]] = {}
        runners: dict[str, Callable[..., Any]] = {}
        torch.set_num_threads(args.threads)
        for name, block in variants(args).items():
            if model == "points" and "decompose" in block:
                continue  # PointNet's layers are 1x1: nothing to factorise
            datapipe.run(pipeline(data, model, seed, block, args), out)
            kept = Path(tmp) / name
            shutil.copytree(folder / "compressed", kept)
            report = json.loads((kept / "report.json").read_text())
            found[name] = {k: report[k] for k in ("val_accuracy", "params", "model_bytes", "macs")}
            if "teacher" in report:
                found[name]["teacher_accuracy"] = report["teacher"]["val_accuracy"]
            net, shapes = load(kept)
            if "int8" in name:
                runners[f"{name} onnxruntime"] = net
            else:
                runners[f"{name} eager"] = net
                runners[f"{name} onnxruntime"] = ort_runner(kept / "model.onnx", args.threads)
        fp32_report = json.loads((folder / "report.json").read_text())
        found["fp32"] = {
            k: fp32_report[k] for k in ("val_accuracy", "params", "model_bytes", "macs")
        }
        fp32, shapes = load(folder)
        compiled = torch.compile(fp32)
        ms = latencies(
            {
                "fp32 eager": fp32,
                "fp32 compiled": compiled,
                "fp32 onnxruntime": ort_runner(folder / "model.onnx", args.threads),
                **runners,
            },
            shapes,
        )
        shape = shapes[0] if len(shapes) == 1 else shapes
        assert found["fp32"]["macs"] == count_macs(fp32, shape)
        return {"models": found, "latency_ms": ms}


def table(model: str, runs: list[dict[str, Any]]) -> list[str]:
    def col(f: Callable[[dict[str, Any]], float], fmt: str = "{:.3f}") -> str:
        return mean_sd([f(r) for r in runs], fmt)

    lines = [
        f"\n{model}",
        "| model | val accuracy | change | params | bytes | MACs | MACs x |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in runs[0]["models"]:

        def get(r: dict[str, Any], key: str, n: str = name) -> float:
            return r["models"][n][key]

        lines.append(
            f"| {name} | {col(lambda r: get(r, 'val_accuracy'))} | "
            f"{col(lambda r: get(r, 'val_accuracy') - get(r, 'val_accuracy', 'fp32'))} | "
            f"{runs[0]['models'][name]['params']:,} | "
            f"{col(lambda r: get(r, 'model_bytes') / get(r, 'model_bytes', 'fp32'), '{:.2f}')}x | "
            f"{runs[0]['models'][name]['macs'] / 1e6:.2f} M | "
            f"{col(lambda r: get(r, 'macs') / get(r, 'macs', 'fp32'), '{:.2f}')} |"
        )
    taught = [r["models"][n]["teacher_accuracy"] for r in runs for n in r["models"]
              if "teacher_accuracy" in r["models"][n]]  # fmt: skip
    if taught:
        lines.append(f"\nteacher val accuracy: {mean_sd(taught, '{:.3f}')}")
    lines += [
        "",
        "| runtime | ms, batch 1 | ms, batch 64 | b64 x fp32 eager | b64 x best fp32 |",
        "|---|---|---|---|---|",
    ]
    for name in runs[0]["latency_ms"]:

        def ratio(r: dict[str, Any], n: str = name, best: bool = False) -> float:
            ms = r["latency_ms"]
            fp32 = [ms[k]["batch_64"] for k in ms if k.startswith("fp32")]
            return ms[n]["batch_64"] / (min(fp32) if best else ms["fp32 eager"]["batch_64"])

        lines.append(
            f"| {name} | {col(lambda r, n=name: r['latency_ms'][n]['batch_1'], '{:.2f}')} | "
            f"{col(lambda r, n=name: r['latency_ms'][n]['batch_64'], '{:.1f}')} | "
            f"{col(ratio, '{:.2f}')} | {col(lambda r, n=name: ratio(r, n, True), '{:.2f}')} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--amount", type=float, default=0.5)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.teacher = any("distill" in block for block in variants(args).values())
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        make_image_dataset(
            data / "images", classes=args.classes, per_class=args.per_class,
            size=(args.size, args.size), seed=0,
        )  # fmt: skip
        make_point_dataset(data / "points", classes=args.classes, per_class=args.per_class, seed=0)
        for model in args.models:
            for seed in args.seeds:
                t0 = time.perf_counter()
                results.setdefault(model, []).append(one(data, model, seed, args))
                print(f"{model} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    for model, runs in results.items():
        print("\n".join(table(model, runs)))
    write_json(args.json, args, results)


if __name__ == "__main__":
    main()

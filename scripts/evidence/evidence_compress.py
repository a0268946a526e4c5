"""Evidence: what structured channel pruning buys on a CPU (survey IV-D), per trainer family.

For each model (the pixel ResNet-10 of ``train.image``, its DCT twin ``train.dct``, PointNet
of ``train.points``) and seed: train the fp32 model in a real pipeline, then its
``compress: {prune: {amount, finetune_epochs}}`` variant (the fp32 model reused), both with
``export: [onnx]``. Then, in this one process at ``--threads``, interleaved: CPU latency at
batch 1 and 64 of the fp32 model in eager mode, under ``torch.compile`` and in ONNX Runtime
(``allow_spinning=0``: the best fp32 a user gets), and of the pruned model in eager mode and
in ONNX Runtime. Reports accuracy, params, bytes, MACs and latency, mean ± sample standard
deviation over ``--seeds``, and the ratios against each fp32 baseline.

    .venv/bin/python scripts/evidence/evidence_compress.py [--seeds 0 1 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
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
from datapipe.models import build_model, count_macs, count_params
from datapipe.models.measure import zero_inputs
from datapipe.train.prune import rebuild_pruned

warnings.filterwarnings("ignore")

MODELS = ("pixels", "dct", "points")


def pipeline(data: Path, model: str, seed: int, args: argparse.Namespace) -> Pipeline:
    train: dict[str, Any] = {
        "epochs": args.epochs,
        "seed": seed,
        "batch_size": 32,
        "threads": args.threads,
        "export": ["onnx"],
        "compress": {"prune": {"amount": args.amount, "finetune_epochs": args.finetune_epochs}},
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
    state = torch.load(folder / "model.pt", weights_only=True)
    model = build_model(spec["model"])
    if spec.get("resized"):
        model = rebuild_pruned(model, spec["resized"], state)
    else:
        model.load_state_dict(state)
    return model.eval(), spec["inputs"]["shapes"]


def ort_runner(path: Path, threads: int) -> Callable[[list[torch.Tensor]], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda xs: session.run(None, {n: x.numpy() for n, x in zip(names, xs, strict=True)})


def latencies(
    runners: dict[str, Callable[[list[torch.Tensor]], Any]],
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
                run(xs)
                run(xs)
            for _ in range(rounds):
                for name, run in runners.items():
                    t0 = time.perf_counter()
                    run(xs)
                    times[name].append((time.perf_counter() - t0) * 1000)
        for name, ts in times.items():
            out.setdefault(name, {})[f"batch_{batch}"] = statistics.median(ts)
    return out


def one(data: Path, model: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        run = datapipe.run(pipeline(data, model, seed, args), Path(tmp) / "out")
        folder = Path(tmp) / "out" / "train" / "model"
        fp32_report = json.loads((folder / "report.json").read_text())
        small_report = json.loads((folder / "compressed" / "report.json").read_text())
        fp32, shapes = load(folder)
        pruned, _ = load(folder / "compressed")
        torch.set_num_threads(args.threads)
        compiled = torch.compile(fp32)
        ms = latencies(
            {
                "fp32 eager": lambda xs: fp32(*xs),
                "fp32 compiled": lambda xs: compiled(*xs),
                "fp32 onnxruntime": ort_runner(folder / "model.onnx", args.threads),
                "pruned eager": lambda xs: pruned(*xs),
                "pruned onnxruntime": ort_runner(
                    folder / "compressed" / "model.onnx", args.threads
                ),
            },
            shapes,
        )
        shape = shapes[0] if len(shapes) == 1 else shapes
        assert run.sinks["model"]["compressed"]["reused"] is False
        return {
            "fp32": {
                "accuracy": fp32_report["val_accuracy"],
                "params": count_params(fp32),
                "bytes": (folder / "model.pt").stat().st_size,
                "macs": count_macs(fp32, shape),
            },
            "pruned": {
                "accuracy": small_report["val_accuracy"],
                "params": count_params(pruned),
                "bytes": (folder / "compressed" / "model.pt").stat().st_size,
                "macs": count_macs(pruned, shape),
            },
            "latency_ms": ms,
        }


def table(model: str, runs: list[dict[str, Any]]) -> list[str]:
    def col(f: Callable[[dict[str, Any]], float], fmt: str = "{:.3f}") -> str:
        return mean_sd([f(r) for r in runs], fmt)

    lines = [
        f"\n{model}: fp32 accuracy {col(lambda r: r['fp32']['accuracy'])}, pruned "
        f"{col(lambda r: r['pruned']['accuracy'])} (change "
        f"{col(lambda r: r['pruned']['accuracy'] - r['fp32']['accuracy'])}); params "
        f"{col(lambda r: r['pruned']['params'] / r['fp32']['params'], '{:.2f}')}x, bytes "
        f"{col(lambda r: r['pruned']['bytes'] / r['fp32']['bytes'], '{:.2f}')}x, MACs "
        f"{runs[0]['fp32']['macs'] / 1e6:.1f} M -> {runs[0]['pruned']['macs'] / 1e6:.1f} M "
        f"({col(lambda r: r['pruned']['macs'] / r['fp32']['macs'], '{:.2f}')}x)",
        "| runtime | ms, batch 1 | ms, batch 64 | batch 64 vs fp32 eager | vs fp32 best |",
        "|---|---|---|---|---|",
    ]
    names = list(runs[0]["latency_ms"])
    for name in names:
        b1 = col(lambda r, n=name: r["latency_ms"][n]["batch_1"], "{:.2f}")
        b64 = col(lambda r, n=name: r["latency_ms"][n]["batch_64"], "{:.1f}")

        def ratio(r: dict[str, Any], n: str = name, best: bool = False) -> float:
            ms = r["latency_ms"]
            base = (
                min(ms[k]["batch_64"] for k in ms if k.startswith("fp32"))
                if best
                else ms["fp32 eager"]["batch_64"]
            )
            return ms[n]["batch_64"] / base

        lines.append(
            f"| {name} | {b1} | {b64} | {col(ratio, '{:.2f}')} | "
            f"{col(lambda r, n=name: ratio(r, n, True), '{:.2f}')} |"
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
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

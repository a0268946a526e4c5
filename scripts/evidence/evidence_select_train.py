"""Evidence: does a subset picked by a selection stage train a CNN as well as the full set,
and better than a random subset of the same size?

The survey's claim: core-sets, semantic dedup and proxy uncertainty drop 10-50% of the data
at no loss of accuracy. The known counter-result: at small budgets random sampling wins
(the cold-start problem, Hacohen et al., ICML 2022). ``evidence_select.py`` asks the same
with a logistic regression on digits; here the learner is a real CNN trained by the engine.

Protocol, scaled to a 2-core CPU:

- data: ``make_image_dataset`` (``--classes`` x ``--per-class`` shape-over-photo JPEGs at
  ``--size`` px, seed 0) is the training pool; a second set (``--test-per-class`` per class,
  generator seed 1: other images of the same classes) is the fixed held-out test set.
- one pipeline per (method, budget, seed), run by ``datapipe.run``:
  ``files -> image.resize -> [embed.pixels] -> select.METHOD (fraction) -> jpeg.dct`` with
  three trainer sinks reading the same selected samples: ``resnet10`` (``train.image``,
  4-stage ResNet-10, the main model), ``resnet8`` (``train.image``, the 3-stage CIFAR-style
  ResNet-8 at full resolution) and ``dct`` (``train.dct``, the DCT ResNet-10 on dequantized
  coefficients). "full" is the same pipeline with no embedding and no select stage.
- methods: ``select.random``, ``select.stratified``, ``select.kcenter``, ``select.dedup``
  (threshold tuned to the budget) and ``select.uncertainty`` (entropy of a cross-fitted
  logistic-regression proxy), default params, at ``--budgets`` fractions of the pool. The
  embedding-based ones see ``embed.pixels`` (8x8x3 area-pooled pixels, L2-normalised): the
  proxy features are pixels, none of the CNNs', so every CNN is a *transfer* target of a
  selection made without it. The main table is ``resnet10``; the transfer table asks
  whether the same subsets rank the same way on ``resnet8`` and ``dct``.
- the validation question: a trainer splits the samples that reach it (``split_by_key`` over
  the *selected* keys), so its own validation set differs per method and shrinks with the
  budget. Its ``val_accuracy`` is therefore not used: every trained model is scored on the
  fixed test set by loading ``OUT/train/NODE`` the supported way (``datapipe.predict``'s
  ``load_trained`` + ``TrainedModel``: ``model.pt`` with ``weights_only``, inputs prepared and
  normalised as in validation) on test records made by the same Map stages. ``--check-predict``
  (on in ``--quick``) also runs ``datapipe.predict`` itself on one model and checks that it
  agrees. Every trainer uses ``val_fraction`` ``--val-fraction`` (small: the held-out share
  of a subset is training data lost), the same for all arms.
- training: the same settings for every arm (epochs, batch, lr, SGD + cosine, flips,
  ``threads: 1``), trainer seed = selection seed = the pipeline seed. The same epoch count for
  every subset size means a smaller subset also gets fewer optimiser steps, as in the papers.
- time (``time.perf_counter``; run hooks mark the engine's phases): ``selection s`` runs
  from the start of the light pass before the select stage (every pool image read and, for
  kcenter/dedup/uncertainty, embedded) to the start of the main pass, so it includes the
  select call (also kept alone in the JSON, ``select_call_s``); 0 for "full". ``training s``
  is the main trainer's ``wall_s`` (its report). ``x full time`` is the whole arm end to end
  (``datapipe.run`` wall time less the two transfer trainers' ``wall_s``: listing, selection,
  main pass, shards, main training) over the same for the full set.
- "beats random": a method beats random at a budget when its mean exceeds random's by more
  than the larger of the two standard deviations; each method's first such budget is printed.

Reports mean and sample standard deviation over ``--seeds`` of the test accuracy; ``train n``
is what the trainer trained on (the kept samples less its own validation share; last seed).

    .venv/bin/python scripts/evidence/evidence_select_train.py [--seeds 0 1 2] [--json out.json]
    .venv/bin/python scripts/evidence/evidence_select_train.py --quick   # smoke test, < 2 min
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from evidence_common import add_training_args, mean_sd, train_params, write_json

import datapipe
from datapipe.demo.training_data import make_image_dataset
from datapipe.graph import Pipeline
from datapipe.hooks import RunHooks
from datapipe.predict import load_trained, predict
from datapipe.stage import Context
from datapipe.stages.compressed.jpeg_dct import JpegDCTStage
from datapipe.stages.io.image_resize import ImageResize
from datapipe.train.saved import TrainedModel

#: architecture -> (trainer stage, its params besides the shared ones, input field kind)
ARCHS: dict[str, tuple[str, dict[str, Any], str]] = {
    "resnet10": ("train.image", {"stages": 4, "depth": 10}, "image"),
    "resnet8": ("train.image", {"stages": 3, "depth": 8}, "image"),
    "dct": ("train.dct", {"depth": 10}, "dct"),
}
MAIN = "resnet10"
#: method -> (select stage, whether it reads the embedding, its other params)
METHODS: dict[str, tuple[str, bool, dict[str, Any]]] = {
    "random": ("select.random", False, {}),
    "stratified": ("select.stratified", False, {}),
    "kcenter": ("select.kcenter", True, {}),
    "dedup": ("select.dedup", True, {}),
    "uncertainty": ("select.uncertainty", True, {}),
    "kcenter_stratified": ("select.kcenter", True, {"stratify": True}),
    "uncertainty_stratified": ("select.uncertainty", True, {"stratify": True}),
}
#: what a run without --methods compares (the stages as they come)
DEFAULT_METHODS = ["random", "stratified", "kcenter", "dedup", "uncertainty"]
FULL = "full"
DCT_KEEP = 64


class PhaseClock(RunHooks):
    """``time.perf_counter`` at the start and end of each phase the engine announces: the
    light pass before a Select (``NODE (light view)``) and the main pass (``process``)."""

    def __init__(self) -> None:
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}

    def on_phase(self, phase: str, total: int) -> None:
        self.start.setdefault(phase, time.perf_counter())

    def on_phase_end(self, phase: str) -> None:
        self.end[phase] = time.perf_counter()


def pipeline(
    pool: Path, method: str, budget: float, seed: int, args: argparse.Namespace
) -> Pipeline:
    """The pipeline of one arm: read, [embed], [select], DCT branch, the trainers."""
    nodes: dict[str, Any] = {
        "photos": {"stage": "files", "params": {"root": str(pool), "kinds": ["image"]}},
        "read": {
            "stage": "image.resize",
            "inputs": "photos",
            "params": {"size": args.size, "mode": "crop"},
        },
    }
    last = "read"
    if method != FULL:
        stage, embedded, extra = METHODS[method]
        if embedded:
            nodes["embed"] = {"stage": "embed.pixels", "inputs": last, "params": {"grid": 8}}
            last = "embed"
        params = {"fraction": budget, **extra}
        nodes["subset"] = {"stage": stage, "inputs": last, "params": params}
        last = "subset"
    nodes["coeffs"] = {
        "stage": "jpeg.dct",
        "inputs": last,
        "params": {"layout": "channels", "keep": DCT_KEEP, "dequantize": True},
    }
    shared = train_params(args, seed, val_fraction=args.val_fraction)
    for arch in args.archs:
        stage, params, kind = ARCHS[arch]
        nodes[arch] = {
            "stage": stage,
            "inputs": "coeffs" if kind == "dct" else last,
            "params": {**shared, **params},
        }
    name = f"{method}_{round(budget * 100)}_{seed}"
    return Pipeline.from_dict(
        {"name": name, "seed": seed, "nodes": nodes, "run": {"workers": args.threads}}
    )


def test_records(test: Path, size: int) -> tuple[list[Path], list[str], dict[str, list[dict]]]:
    """The test files, their class names, and their records as the pipeline's Map stages
    make them (``image`` for the pixel models, ``dct`` for the DCT model)."""
    paths = sorted(test.rglob("*.jpg"))
    ctx = Context()
    resize = ImageResize(size=size, mode="crop")
    dct = JpegDCTStage(layout="channels", keep=DCT_KEEP, dequantize=True)
    records = {
        "image": [resize.process({"path": str(p)}, ctx) for p in paths],
        "dct": [dct.process({"path": str(p)}, ctx) for p in paths],
    }
    return paths, [p.parent.name for p in paths], records


def test_predictions(folder: Path, records: list[dict]) -> list[str | None]:
    """The class name the trained model of ``folder`` (OUT/train/NODE) gives each record
    (None where it cannot take the record), inputs prepared as in validation."""
    trained = load_trained(folder)
    model = TrainedModel(trained.model_dir, trained.spec)
    prepared = [model.prepare(r) for r in records]
    ok = [i for i, x in enumerate(prepared) if not isinstance(x[0], str)]
    out: list[str | None] = [None] * len(records)
    for lo in range(0, len(ok), 128):
        chunk = ok[lo : lo + 128]
        probs = model.classify([prepared[i] for i in chunk])  # type: ignore[misc]
        for i, c in zip(chunk, probs.argmax(dim=1).tolist(), strict=True):
            out[i] = model.name(c)
    return out


def accuracy(pred: list[str | None], truth: list[str]) -> float:
    return sum(p == t for p, t in zip(pred, truth, strict=True)) / len(truth)


def check_predict(folder: Path, p: Pipeline, paths: list[Path], fast: list[str | None]) -> float:
    """Share of test files on which ``datapipe.predict`` (the supported, isolated path)
    agrees with the in-process scoring used for every model."""
    slow = [r.get("class") for r in predict(folder, paths, pipeline=p, workers=1, threads=1)]
    return sum(a == b for a, b in zip(slow, fast, strict=True)) / len(paths)


def run_arm(
    pool: Path,
    runs: Path,
    method: str,
    budget: float,
    seed: int,
    args: argparse.Namespace,
    test: tuple[list[Path], list[str], dict[str, list[dict]]],
    check: bool,
) -> dict[str, Any]:
    """Run one arm's pipeline afresh and score each of its trained models on the test set."""
    p = pipeline(pool, method, budget, seed, args)
    out = runs / p.name
    shutil.rmtree(out, ignore_errors=True)  # never reuse a model: the timings must be real
    clock = PhaseClock()
    t0 = time.perf_counter()
    report = datapipe.run(p, out, hooks=clock)
    wall = time.perf_counter() - t0
    if report.status != "ok" or report.counts.get("error"):
        raise RuntimeError(f"{p.name}: run {report.status}, counts {report.counts}")
    paths, truth, records = test
    row: dict[str, Any] = {
        "method": method,
        "budget": budget,
        "seed": seed,
        "run_s": wall,
        "kept": report.counts.get("samples"),
        "archs": {},
    }
    trainer_s = 0.0
    for arch in args.archs:
        folder = out / "train" / arch
        summary = json.loads((folder / "report.json").read_text())
        pred = test_predictions(folder, records[ARCHS[arch][2]])
        trainer_s += summary["wall_s"]
        row["archs"][arch] = {
            "test_accuracy": accuracy(pred, truth),
            "own_val_accuracy": summary["val_accuracy"],
            "train_samples": summary["train_samples"],
            "val_samples": summary["val_samples"],
            "train_s": summary["wall_s"],
        }
        if check and arch == args.archs[0]:
            row["predict_agreement"] = check_predict(folder, p, paths, pred)
    main = row["archs"][args.archs[0]]
    # selection: from the light pass's start (the view: every pool image read and embedded)
    # to the main pass's start (after the select call); 0 for the full set
    light = clock.start.get("subset (light view)")
    row["selection_s"] = clock.start["process"] - light if light is not None else 0.0
    row["select_call_s"] = (
        clock.start["process"] - clock.end["subset"] if light is not None else 0.0
    )
    # the arm end to end with the main model only: the run less the other trainers
    row["main_only_s"] = wall - (trainer_s - main["train_s"])
    print(
        f"{p.name}: kept {row['kept']}, "
        + ", ".join(f"{a} {r['test_accuracy']:.3f}" for a, r in row["archs"].items())
        + f" (run {wall:.0f} s, selection {row['selection_s']:.1f} s, "
        f"{args.archs[0]} training {main['train_s']:.1f} s)",
        flush=True,
    )
    return row


def summarise(rows: list[dict[str, Any]], arch: str, budgets: list[float]) -> dict[str, Any]:
    """Per (method, budget): the accuracies over seeds and the mean times, for ``arch``."""
    table: dict[str, Any] = {}
    for row in rows:
        budget_keys = budgets if row["method"] == FULL else [row["budget"]]
        for b in budget_keys:
            cell = table.setdefault(
                f"{row['method']}@{b}", {"acc": [], "sel": [], "train": [], "total": []}
            )
            cell["acc"].append(row["archs"][arch]["test_accuracy"])
            cell["sel"].append(row["selection_s"])
            cell["train"].append(row["archs"][arch]["train_s"])
            cell["total"].append(row["main_only_s"])
            cell["n"] = row["archs"][arch]["train_samples"]
    return table


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def beats(cell: dict[str, Any], rand: dict[str, Any]) -> tuple[bool, float, float]:
    """(beats random, mean difference, spread): the difference must exceed the larger sd."""
    diff = statistics.mean(cell["acc"]) - statistics.mean(rand["acc"])
    spread = max(sd(cell["acc"]), sd(rand["acc"]))
    return diff > spread, diff, spread


def print_table(
    title: str, table: dict[str, Any], methods: list[str], budgets: list[float], times: bool
) -> None:
    """The Markdown table of one architecture, then the beats-random lines."""
    print(f"\n### {title}\n")
    head = "| method | budget | train n | test acc | Δ vs random | Δ vs full |"
    rule = "|---|---|---|---|---|---|"
    if times:
        head += " selection s | training s | x full time |"
        rule += "---|---|---|"
    print(head)
    print(rule)
    full = table[f"{FULL}@{budgets[0]}"]
    full_mean = statistics.mean(full["acc"])
    full_time = statistics.mean(full["total"])
    for b in budgets:
        rand = table.get(f"random@{b}")
        for m in methods:
            cell = table[f"{m}@{b}"]
            mean = statistics.mean(cell["acc"])
            d_rand = (
                "-"
                if rand is None or m == "random"
                else f"{mean - statistics.mean(rand['acc']):+.3f}"
            )
            line = (
                f"| {m} | {b:.0%} | {cell['n']} | {mean_sd(cell['acc'])} | {d_rand} | "
                f"{mean - full_mean:+.3f} |"
            )
            if times:
                sel, train = statistics.mean(cell["sel"]), statistics.mean(cell["train"])
                ratio = statistics.mean(cell["total"]) / full_time
                line += f" {sel:.1f} | {train:.1f} | {ratio:.2f} |"
            print(line)
    line = f"| full | 100% | {full['n']} | {mean_sd(full['acc'])} | - | - |"
    if times:
        sel, train = statistics.mean(full["sel"]), statistics.mean(full["train"])
        line += f" {sel:.1f} | {train:.1f} | 1.00 |"
    print(line)
    if "random" not in methods:
        return
    print()
    for b in budgets:
        rand = table[f"random@{b}"]
        parts = []
        for m in methods:
            if m == "random":
                continue
            won, diff, spread = beats(table[f"{m}@{b}"], rand)
            verdict = "beats" if won else "above, within spread" if diff > 0 else "not above"
            parts.append(f"{m} {verdict} ({diff:+.3f} vs spread {spread:.3f})")
        print(f"- budget {b:.0%}: " + "; ".join(parts))
    for m in methods:
        if m == "random":
            continue
        first = next(
            (b for b in budgets if beats(table[f"{m}@{b}"], table[f"random@{b}"])[0]), None
        )
        where = f"from {first:.0%}" if first is not None else "at none of the budgets"
        print(f"- {m} beats random {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(parser, classes=10, per_class=60, size=48, epochs=12)
    parser.add_argument("--test-per-class", type=int, default=30)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--check-predict", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="1 seed, random + kcenter at 50%%, 2 epochs"
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.methods, args.budgets, args.epochs = [0], ["random", "kcenter"], [0.5], 2
        args.check_predict = True
    if args.archs[0] != MAIN and MAIN in args.archs:
        args.archs = [MAIN] + [a for a in args.archs if a != MAIN]
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    work = args.out or Path(tempfile.mkdtemp(prefix="evidence_select_train_"))
    pool, test = work / "pool", work / "test"
    for folder, per_class, seed in ((pool, args.per_class, 0), (test, args.test_per_class, 1)):
        if not folder.exists():
            make_image_dataset(
                folder,
                classes=args.classes,
                per_class=per_class,
                size=(args.size, args.size),
                seed=seed,
                workers=args.threads,
            )
    t_start = time.perf_counter()
    test_set = test_records(test, args.size)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        rows.append(run_arm(pool, work / "runs", FULL, 1.0, seed, args, test_set, False))
        for b in args.budgets:
            for m in args.methods:
                check = args.check_predict and not any("predict_agreement" in r for r in rows)
                rows.append(run_arm(pool, work / "runs", m, b, seed, args, test_set, check))
    total = time.perf_counter() - t_start
    pool_n = args.classes * args.per_class
    print(
        f"\npool {pool_n} images ({args.classes} classes x {args.per_class}, {args.size} px), "
        f"test {args.classes * args.test_per_class} other images; {args.epochs} epochs, batch "
        f"{args.batch}, lr {args.lr}, width {args.width}, val_fraction {args.val_fraction}, "
        f"seeds {args.seeds}, {args.threads} thread(s); total {total / 60:.1f} min"
    )
    print("test accuracy: mean ± sd over seeds; Δ: difference of means")
    agree = [r["predict_agreement"] for r in rows if "predict_agreement" in r]
    if agree:
        print(
            f"datapipe.predict agrees with the in-process scoring on {agree[0]:.1%} of test files"
        )
    summaries = {a: summarise(rows, a, args.budgets) for a in args.archs}
    print_table(
        f"{args.archs[0]} (main model)", summaries[args.archs[0]], args.methods, args.budgets, True
    )
    for arch in args.archs[1:]:
        print_table(
            f"transfer: {arch}, trained on the same subsets",
            summaries[arch],
            args.methods,
            args.budgets,
            False,
        )
    if len(args.archs) > 1 and "random" in args.methods:
        print("\nsign of Δ vs random on the main model and on each transfer model:")
        for b in args.budgets:
            for m in args.methods:
                if m == "random":
                    continue
                signs = []
                for a in args.archs:
                    t = summaries[a]
                    d = statistics.mean(t[f"{m}@{b}"]["acc"]) - statistics.mean(
                        t[f"random@{b}"]["acc"]
                    )
                    signs.append(f"{a} {d:+.3f}")
                print(f"- {m} at {b:.0%}: " + ", ".join(signs))
    write_json(args.json, args, {"runs": rows, "summary": summaries, "total_s": total})


if __name__ == "__main__":
    main()

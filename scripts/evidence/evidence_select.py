"""Evidence: does a smarter subset train a better classifier than a random one of the same size?

On scikit-learn's digits (1,797 labelled 8x8 images), for 5 seeds: a stratified 70/30
train/test split (seeded), then each selection stage picks 10/30/50% of the training pool,
and one fixed classifier — StandardScaler + LogisticRegression(max_iter=2000) on the raw
pixels — is trained on the subset and scored on the held-out test split.

The selectors see a fixed embedding: the ``embed.pixels`` descriptor of each image (the 8x8
pixels / 16, area-pooled at grid 8 — i.e. the pixels — and L2-normalised). They run as the
real Select stages (``stage.select(keys, view, ctx)``), seeded by the split seed.

    .venv/bin/python scripts/evidence/evidence_select.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from datapipe.stage import Context, Select
from datapipe.stages.subset.dedup import Dedup
from datapipe.stages.subset.embed import pool_pixels
from datapipe.stages.subset.kcenter import KCenter
from datapipe.stages.subset.random_subset import RandomSubset
from datapipe.stages.subset.stratified import Stratified
from datapipe.stages.subset.uncertainty import Uncertainty

BUDGETS = (0.1, 0.3, 0.5)
METHODS: dict[str, Callable[[int], Select]] = {
    "random (select.random)": lambda b: RandomSubset(count=b),
    "stratified": lambda b: Stratified(count=b),
    "kcenter": lambda b: KCenter(count=b),
    "kcenter + stratify": lambda b: KCenter(count=b, stratify=True),
    "dedup (threshold tuned to budget)": lambda b: Dedup(count=b),
    "uncertainty (entropy, 5-fold cross-fit)": lambda b: Uncertainty(count=b, stratify=False),
    "uncertainty + stratify": lambda b: Uncertainty(count=b, stratify=True),
    "uncertainty, margin, ensemble 5": lambda b: Uncertainty(
        count=b, metric="margin", ensemble=5, stratify=False
    ),
}


def classifier_accuracy(
    xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray
) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(xtr, ytr)
    return float((model.predict(xte) == yte).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    digits = load_digits()
    pixels = digits.data.astype(np.float32) / 16.0
    emb = np.stack([pool_pixels(img / 16.0, grid=8) for img in digits.images.astype(np.float32)])
    labels = np.array([str(t) for t in digits.target])
    acc: dict[tuple[str, float], list[float]] = {}
    full: list[float] = []
    natural: list[tuple[int, float]] = []
    seconds: dict[str, float] = {}
    for seed in range(args.seeds):
        tr, te = train_test_split(
            np.arange(len(labels)), test_size=0.3, stratify=labels, random_state=seed
        )
        keys = [f"d{i:04d}" for i in tr]
        view = {"embedding": emb[tr].tolist(), "label": labels[tr].tolist()}
        ctx = Context(seed=seed, node="subset")
        full.append(classifier_accuracy(pixels[tr], labels[tr], pixels[te], labels[te]))
        nat = Dedup(threshold=0.95).select(keys, view, ctx)
        rows = [int(k[1:]) for k in sorted(nat.keep)]
        natural.append(
            (len(rows), classifier_accuracy(pixels[rows], labels[rows], pixels[te], labels[te]))
        )
        for frac in BUDGETS:
            budget = round(frac * len(tr))
            for name, make in METHODS.items():
                t0 = time.perf_counter()
                sel = make(budget).select(keys, view, ctx)
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
                rows = [int(k[1:]) for k in sorted(sel.keep)]
                if len(rows) != budget:
                    raise RuntimeError(f"{name} kept {len(rows)}, not {budget}")
                score = classifier_accuracy(pixels[rows], labels[rows], pixels[te], labels[te])
                acc.setdefault((name, frac), []).append(score)
    n_pool = round(0.7 * len(labels))
    head = " | ".join(f"{int(f * 100)}% ({round(f * n_pool)})" for f in BUDGETS)
    print(f"digits: pool {n_pool} train / {len(labels) - n_pool} test, {args.seeds} seeds")
    print("test accuracy, mean ± std over seeds (classifier: StandardScaler + LogisticRegression)")
    print()
    print(f"| method | {head} | select time / call |")
    print("|---|" + "---|" * len(BUDGETS) + "---|")
    calls = args.seeds * len(BUDGETS)
    for name in METHODS:
        cells = []
        for frac in BUDGETS:
            vals = acc[(name, frac)]
            rand = acc[("random (select.random)", frac)]
            delta = statistics.mean(vals) - statistics.mean(rand)
            sign = "" if name.startswith("random") else f" ({delta * 100:+.1f})"
            cells.append(f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}{sign}")
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds[name] / calls * 1000:.0f} ms |")
    whole = f"{statistics.mean(full):.3f} ± {statistics.stdev(full):.3f}"
    print(f"| full pool (100%, {n_pool}) | " + " | ".join([whole] * len(BUDGETS)) + " | - |")
    sizes = [n for n, _ in natural]
    accs = [a for _, a in natural]
    print()
    print(
        f"dedup at its natural size (threshold 0.95): keeps {statistics.mean(sizes):.0f} of "
        f"{n_pool} ({statistics.mean(sizes) / n_pool:.1%}), accuracy "
        f"{statistics.mean(accs):.3f} ± {statistics.stdev(accs):.3f}"
    )
    print("(in brackets: points above (+) or below (-) random at the same budget)")


if __name__ == "__main__":
    main()

"""Reports of a training run: CPU latency, curves and the confusion matrix as pictures."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datapipe.models.measure import zero_inputs


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside the block, restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_latency_ms(
    model: nn.Module,
    input_shape: Sequence[int] | Sequence[Sequence[int]],
    batches: Sequence[int] = (1, 64),
    runs: int = 5,
) -> dict[str, float]:
    """Median forward time in ms per batch size (``batch_1``, ``batch_64``) at the current
    ``torch.get_num_threads()``, after one warm-up run. A measurement, not a guarantee."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    with torch.no_grad():
        for b in batches:
            xs = zero_inputs(input_shape, b)
            model(*xs)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                model(*xs)
                times.append((time.perf_counter() - t0) * 1000)
            out[f"batch_{b}"] = round(statistics.median(times), 3)
    model.train(was_training)
    return out


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss and accuracy per epoch, train and validation, as a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, what in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        for split in ("train", "val"):
            values = [r.get(f"{split}_{what}") for r in history]
            ax.plot(epochs, [float("nan") if v is None else v for v in values], "o-", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path
) -> Path:
    """The confusion matrix (rows: true class, columns: predicted) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * n, 1 + 0.5 * n))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)

"""A trainer's ``reselect:`` block: train each epoch on a subset re-chosen every few epochs
from the model's own signals (:mod:`datapipe.train.reselect` holds the policy).

The run writes ``OUT/train/NODE/selection.jsonl`` (one line per epoch: the epoch, whether it
rescored, its seconds, non-finite scores, and the sorted keys trained on) and the report's
``reselect`` entry (the settings, the budget, rescorings and their time). Compression
fine-tuning (``compress:``) trains on every sample.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field as PField

from datapipe.errors import SinkError
from datapipe.stage import Params

if TYPE_CHECKING:
    from datapipe.train.reselect import Reselection


class ReselectParams(Params):
    """Re-selection of the training subset while training."""

    every: int = PField(2, ge=1, le=10_000, description="Epochs between rescorings.")
    fraction: float = PField(
        0.5, gt=0, le=1, description="Share of the training samples each epoch reads."
    )
    score: Literal["loss", "el2n", "forgetting", "grad_kcenter"] = PField(
        "el2n",
        description="Per-sample loss, EL2N, forgetting events, or a k-center core-set of "
        "last-layer gradient embeddings.",
    )
    probe: int | None = PField(
        None, ge=1, description="Rescore a random probe of this many samples (None: all)."
    )


def make_reselection(
    params: ReselectParams, labels: dict[str, int], score_data: Any, seed: int, workers: int
) -> Reselection:
    """The policy over the training keys ``labels`` (key -> class); a budget too small to
    keep every class is the trainer's ``reselect_budget`` error."""
    from datapipe.train.reselect import ReselectConfig, Reselection

    config = ReselectConfig(**params.model_dump())
    keys = sorted(labels)
    try:
        return Reselection(
            config, keys, [labels[k] for k in keys], score_data, seed=seed, workers=workers
        )
    except ValueError as exc:
        raise SinkError("reselect_budget", str(exc)) from None


def write_selection_log(out: Path, reselect: Reselection) -> dict[str, Any]:
    """``out/selection.jsonl`` and the report's summary of the re-selection."""
    from datapipe.train import write_atomic

    lines = "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in reselect.log)
    write_atomic(out / "selection.jsonl", lambda f: f.write(lines.encode()))
    rescored = [e for e in reselect.log if e["rescored"]]
    return {
        **asdict(reselect.config),
        "budget": reselect.budget,
        "train_samples": len(reselect.keys),
        "rescorings": len(rescored),
        "rescore_s": round(sum(e["seconds"] for e in rescored), 3),
        "nonfinite_scores": sum(e["nonfinite"] for e in reselect.log),
    }

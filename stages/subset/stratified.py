"""``select.stratified``: a seeded random subset that keeps every class in proportion.

The per-class budgets come from :func:`datapipe.strata.stratum_budgets` (largest-remainder
rounding), which ``select.kcenter`` and ``select.uncertainty`` also use for their
``stratify: true`` option, and training's re-selection (:mod:`datapipe.train.reselect`) for
its class quotas.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field as PField
from pydantic import model_validator

from datapipe.fields import Field
from datapipe.stage import Context, Select, Selection
from datapipe.stages.subset.budget import (
    BudgetParams,
    budget_of,
    check_classes,
    read_view,
    resolve_budget,
    split_budget,
)
from datapipe.stages.subset.plot import plot_selection
from datapipe.stages.subset.random_subset import Subset, key_uniform
from datapipe.strata import stratum_budgets


def stratified_subset(
    keys: Sequence[str],
    labels: Sequence[Any],
    k: int | float,
    *,
    seed: int = 0,
) -> Subset:
    """Keep ``k`` keys (a count, or a fraction if a float), each class in proportion; within
    a class the keys with the smallest seeded draws (:func:`key_uniform`, as select.random).

    Raises ValueError for a budget of 0 or above ``len(keys)`` and for fewer than two classes.

    Returns
    -------
    Subset
        ``kept``, the kept keys (by class, then draw), and ``draws``, every key's draw.

    Examples
    --------
    >>> from datapipe import ops
    >>> keys = [f"k{i}" for i in range(10)]
    >>> kept, _ = ops.select_stratified_subset(keys, ["a"] * 6 + ["b"] * 4, 0.5, seed=0)
    >>> sorted(Counter(k in keys[:6] for k in kept).values())
    [2, 3]
    """
    if len(keys) != len(labels):
        raise ValueError(f"{len(keys)} keys but {len(labels)} labels")
    budget = resolve_budget(len(keys), **split_budget(k))
    labels = [str(x) for x in labels]
    if len(set(labels)) < 2:
        raise ValueError("stratified selection needs at least 2 classes; got 1")
    draws = {key: key_uniform(key, seed) for key in keys}
    by_class: dict[str, list[str]] = {}
    for key, lab in zip(keys, labels, strict=True):
        by_class.setdefault(lab, []).append(key)
    quotas = stratum_budgets({c: len(v) for c, v in by_class.items()}, budget)
    kept: list[str] = []
    for c in sorted(by_class):
        ranked = sorted(by_class[c], key=lambda key: (draws[key], key))
        kept += ranked[: quotas[c]]
    return Subset(kept, draws)


class StratifiedParams(BudgetParams):
    label: str = PField("label", description="Field holding the class (str or int).")
    embedding: str | None = PField(None, description="Embedding field, read only to draw the plot.")
    plot: str | None = PField(None, description="Write a PNG of kept vs removed here.")

    @model_validator(mode="after")
    def _plot_needs_embedding(self) -> StratifiedParams:
        if self.plot is not None and self.embedding is None:
            raise ValueError("'plot' needs 'embedding' (the field to project)")
        return self


class Stratified(Select):
    """Keep ``fraction`` (or ``count``) of the keys, every class in proportion.

    Per-class budgets by largest-remainder rounding (every class keeps one when the budget
    allows); within a class, the same seeded per-key draw as ``select.random``. Keys without
    a label ('' or -1) form their own stratum. A single-class view is a ParamError: there is
    nothing to stratify. Score: the key's draw in [0, 1).
    """

    name = "select.stratified"
    description = "Keep a seeded random subset with every class in proportion."
    Params = StratifiedParams
    EXAMPLE_PARAMS = {"fraction": 0.5}

    def consumes(self) -> tuple[Field, ...]:
        p = self.params
        fields = [Field(p.label, "str|int", "", "class of the sample")]
        if p.embedding is not None:
            fields.append(Field(p.embedding, "float32|float64", "D", "only for the plot"))
        return tuple(fields)

    def select(
        self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context
    ) -> Selection:
        p = self.params
        v = read_view(keys, view, embedding=p.embedding, label=p.label, stage=self.name)
        if not v.keys:
            return Selection(keep=set(), reasons=dict(v.dropped))
        labels = v.labels or []
        budget = budget_of(p, len(v.keys), ctx, self.name)
        check_classes(labels, self.name, ctx, "label")
        kept, draws = stratified_subset(v.keys, labels, budget, seed=ctx.seed)
        keep = set(kept)
        counts = Counter(labels)
        quotas = stratum_budgets(counts, budget)
        reasons = dict(v.dropped)
        for key, lab in zip(v.keys, labels, strict=True):
            if key not in keep:
                reasons[key] = (
                    f"random draw {draws[key]:.4f} outside the {quotas[lab]} kept of "
                    f"{counts[lab]} in class {lab!r} ({budget} of {len(v.keys)} overall)"
                )
        if p.plot and v.x is not None:
            mask = np.array([k in keep for k in v.keys])
            plot_selection(v.x, mask, ctx.resolve(p.plot), title=self.name, labels=labels)
        return Selection(keep=keep, scores=draws, reasons=reasons)

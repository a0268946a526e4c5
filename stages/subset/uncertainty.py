"""``select.uncertainty``: keep the samples a cheap proxy model is least sure about.

"Selection via proxy" (Coleman et al., ICLR 2020) and active dataset subsampling (Chitta et
al. 2019): a small model — here a standardised logistic regression on the embedding — is
trained briefly, and the samples with the most uncertain predictions are kept, by entropy,
margin or least confidence. An optional ensemble averages several proxies fitted on bootstrap
samples.

Scoring the samples a model was trained on understates their uncertainty (the model has
seen their labels; a flexible proxy is sure about all of them). So labelled samples are
**cross-fitted**: the labelled set is split into ``folds`` stratified folds and each fold is
scored by proxies trained on the other folds only. Unlabelled samples (label '' or -1) are
scored by proxies trained on all labelled samples — the active-learning setting.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field as PField

from datapipe.fields import Field
from datapipe.stage import Context, Select, Selection
from datapipe.stages.subset.budget import (
    BudgetParams,
    budget_of,
    check_classes,
    check_finite_matrix,
    label_text,
    read_view,
)
from datapipe.stages.subset.plot import plot_selection
from datapipe.strata import stratum_budgets

Metric = Literal["entropy", "margin", "least_confidence"]


@dataclass
class UncertaintyResult:
    """The outcome of :func:`proxy_uncertainty`; rows index the input."""

    #: uncertainty per row, higher = less sure, in [0, 1]
    scores: np.ndarray
    #: class probabilities per row (N, C), columns in ``classes`` order
    proba: np.ndarray
    classes: list[str]
    #: True for rows scored by proxies that never saw them in training (all rows)
    held_out: np.ndarray


def uncertainty_of(proba: np.ndarray, *, metric: Metric = "entropy") -> np.ndarray:
    """Uncertainty of each row of class probabilities, in [0, 1], higher = less sure.

    ``entropy``: normalised by log C; ``margin``: 1 - (p1 - p2) for the two likeliest
    classes; ``least_confidence``: (1 - p1) * C / (C - 1).

    Returns
    -------
    numpy.ndarray
        float64 (N,), one score per row of ``proba`` (N, C).

    Examples
    --------
    >>> from datapipe import ops
    >>> p = np.array([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]])
    >>> [ops.score_uncertainty(p, metric=m).round(3).tolist() for m in ("entropy", "margin")]
    [[1.0, 0.469, 0.0], [1.0, 0.2, 0.0]]
    """
    p = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)
    c = p.shape[1]
    if c < 2:
        return np.zeros(len(p))
    if metric == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            h = np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
        return np.maximum(-h, 0.0) / np.log(c)
    top = -np.sort(-p, axis=1)
    if metric == "margin":
        return 1.0 - (top[:, 0] - top[:, 1])
    if metric == "least_confidence":
        return (1.0 - top[:, 0]) * c / (c - 1)
    raise ValueError(f"unknown metric {metric!r}; expected entropy, margin or least_confidence")


def _fit_predict(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, n_classes: int, c: float, it: int
) -> np.ndarray:
    """Probabilities (len(x_te), n_classes) from one proxy; one class seen -> certain."""
    seen = np.unique(y_tr)
    out = np.zeros((len(x_te), n_classes))
    if len(seen) == 1:
        out[:, seen[0]] = 1.0
        return out
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=it))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # "briefly" is the point
        model.fit(x_tr, y_tr)
    out[:, model.classes_] = model.predict_proba(x_te)
    return out


def _ensemble(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_te: np.ndarray,
    n_classes: int,
    ensemble: int,
    rng: np.random.Generator,
    c: float,
    it: int,
) -> np.ndarray:
    if ensemble == 1:
        return _fit_predict(x_tr, y_tr, x_te, n_classes, c, it)
    total = np.zeros((len(x_te), n_classes))
    for _ in range(ensemble):
        boot = rng.integers(len(x_tr), size=len(x_tr))
        total += _fit_predict(x_tr[boot], y_tr[boot], x_te, n_classes, c, it)
    return total / ensemble


def proxy_uncertainty(
    embeddings: np.ndarray,
    labels: Sequence[Any],
    *,
    metric: Metric = "entropy",
    folds: int = 5,
    ensemble: int = 1,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 100,
) -> UncertaintyResult:
    """Score every row's uncertainty under a logistic-regression proxy, cross-fitted.

    Parameters
    ----------
    embeddings : (N, D); NaN or inf rows raise ValueError.
    labels : N class labels (str or int); '' / None / -1 mark unlabelled rows.
    metric : ``entropy``, ``margin`` or ``least_confidence`` (see :func:`uncertainty_of`).
    folds : labelled rows are scored by proxies trained on the other ``folds - 1`` folds
        (stratified; fewer folds when the largest class is smaller than ``folds``).
    ensemble : proxies per fold, each on a bootstrap sample; probabilities are averaged.
    seed : folds and bootstrap samples.
    C, max_iter : the proxy's regularisation and iteration cap (kept small: a cheap proxy).

    Returns
    -------
    UncertaintyResult
        ``scores`` float64 (N,) in [0, 1], higher = less sure; the held-out class
        probabilities ``proba`` (N, C) and their ``classes``.

    Examples
    --------
    >>> from datapipe import ops
    >>> x = np.linspace(-1, 1, 40)[:, None]
    >>> res = ops.score_proxy_uncertainty(x, ["neg"] * 20 + ["pos"] * 20)
    >>> bool(res.scores[19] > res.scores[0])  # near the boundary beats far from it
    True
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    x = check_finite_matrix(embeddings, dtype=np.float64)
    labels = [label_text(v) for v in labels]
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} embeddings but {len(labels)} labels")
    if folds < 2:
        raise ValueError(f"folds must be >= 2 (cross-fitting); got {folds}")
    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1; got {ensemble}")
    classes = sorted({lab for lab in labels if lab})
    if len(classes) < 2:
        raise ValueError(
            f"the proxy needs labelled samples of at least 2 classes; got {len(classes)}"
        )
    index = {c: i for i, c in enumerate(classes)}
    lab_rows = np.array([i for i, lab in enumerate(labels) if lab], dtype=np.int64)
    unl_rows = np.array([i for i, lab in enumerate(labels) if not lab], dtype=np.int64)
    y = np.array([index[labels[i]] for i in lab_rows], dtype=np.int64)
    rng = np.random.default_rng(seed)
    proba = np.zeros((len(x), len(classes)))
    biggest = int(np.bincount(y).max())
    n_splits = min(folds, len(lab_rows))
    if biggest >= 2:
        splitter: Any = StratifiedKFold(min(n_splits, biggest), shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a class smaller than the fold count
        splits = list(splitter.split(lab_rows, y))
    xl = x[lab_rows]
    for tr, te in splits:
        proba[lab_rows[te]] = _ensemble(
            xl[tr], y[tr], xl[te], len(classes), ensemble, rng, C, max_iter
        )
    if len(unl_rows):
        proba[unl_rows] = _ensemble(xl, y, x[unl_rows], len(classes), ensemble, rng, C, max_iter)
    return UncertaintyResult(
        scores=uncertainty_of(proba, metric=metric),
        proba=proba,
        classes=classes,
        held_out=np.ones(len(x), np.bool_),
    )


def most_uncertain(scores: np.ndarray, budget: int) -> np.ndarray:
    """Rows of the ``budget`` highest scores; ties go to the lower row (stable)."""
    return np.argsort(-np.asarray(scores), kind="stable")[:budget]


class UncertaintyParams(BudgetParams):
    embedding: str = PField("embedding", description="Embedding field (a D-vector per key).")
    label: str = PField("label", description="Class field ('' or -1: unlabelled).")
    metric: Metric = PField("entropy", description="entropy, margin or least_confidence.")
    folds: int = PField(5, ge=2, le=50, description="Cross-fitting folds.")
    ensemble: int = PField(1, ge=1, le=32, description="Bootstrap proxies per fold.")
    C: float = PField(1.0, gt=0, description="Inverse regularisation of the proxy.")
    max_iter: int = PField(100, ge=1, description="Proxy training iterations (brief).")
    stratify: bool = PField(
        True,
        description="Budgets per class, in proportion (the default: unstratified, the proxy's "
        "doubt piles on a few classes and starves others).",
    )
    plot: str | None = PField(None, description="Write a PNG of kept vs removed here.")


class Uncertainty(Select):
    """Keep the samples a cross-fitted logistic-regression proxy is least sure about.

    Score: the uncertainty (entropy, margin or least confidence, in [0, 1], higher = less
    sure). Removed keys' reasons give their score and the cut. With ``stratify: true`` (the
    default) the most uncertain are taken per class, budgets in proportion (largest
    remainder): trained on the subsets, unstratified uncertainty lost to random at 30, 50 and
    70 % (it piled up to 45 of 60 images on the classes the proxy doubted and starved
    others); stratified it trains 0.09 better at every budget, level with random
    (``scripts/evidence/evidence_select_train.py``).
    """

    name = "select.uncertainty"
    description = "Keep the samples a cheap cross-fitted proxy model is least sure about."
    Params = UncertaintyParams
    EXAMPLE_PARAMS = {"fraction": 0.5}

    def consumes(self) -> tuple[Field, ...]:
        p = self.params
        return (
            Field(p.embedding, "float32|float64|float16", "D", "embedding"),
            Field(p.label, "str|int", "", "class of the sample"),
        )

    def select(
        self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context
    ) -> Selection:
        p = self.params
        v = read_view(keys, view, embedding=p.embedding, label=p.label, stage=self.name)
        reasons = dict(v.dropped)
        if not v.keys or v.x is None:
            return Selection(keep=set(), reasons=reasons)
        labels = v.labels or []
        budget = budget_of(p, len(v.keys), ctx, self.name)
        check_classes([lab for lab in labels if lab], self.name, ctx, "label")
        res = proxy_uncertainty(
            v.x,
            labels,
            metric=p.metric,
            folds=p.folds,
            ensemble=p.ensemble,
            seed=ctx.seed,
            C=p.C,
            max_iter=p.max_iter,
        )
        scores = res.scores
        if p.stratify:
            groups: dict[str, np.ndarray] = {}
            for lab in sorted(set(labels)):
                groups[lab] = np.array([i for i, x in enumerate(labels) if x == lab])
            quotas = stratum_budgets({c: len(r) for c, r in groups.items()}, budget)
        else:
            groups, quotas = {"": np.arange(len(v.keys))}, {"": budget}
        keep: set[str] = set()
        for cls, rows in groups.items():
            top = rows[most_uncertain(scores[rows], quotas[cls])]
            keep.update(v.keys[i] for i in top)
            cut = float(scores[top].min()) if len(top) else float("inf")
            where = f" in class {cls!r}" if p.stratify else ""
            for i in rows:
                if v.keys[i] not in keep:
                    reasons[v.keys[i]] = (
                        f"{p.metric} {scores[i]:.4f} outside the {quotas[cls]} most uncertain "
                        f"of {len(rows)}{where} (cut {cut:.4f}; proxy cross-fitted, "
                        f"{p.folds} folds)"
                    )
        if p.plot:
            mask = np.array([k in keep for k in v.keys])
            plot_selection(v.x, mask, ctx.resolve(p.plot), title=self.name, labels=labels)
        return Selection(
            keep=keep,
            scores={k: float(s) for k, s in zip(v.keys, scores, strict=True)},
            reasons=reasons,
        )

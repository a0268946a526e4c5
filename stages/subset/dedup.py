"""``select.dedup``: remove semantically redundant samples, SemDeDup-style (Abbas et al. 2023).

1. L2-normalise the embeddings and cluster them with scikit-learn's MiniBatchKMeans.
2. Within each cluster, visit the samples in a fixed order (``keep="hard"``: farthest from the
   centroid first, as SemDeDup's default; ``"easy"``: nearest first; ``"random"``) and drop a
   sample whose cosine similarity to an already *kept* sample exceeds ``threshold``.

That is the paper's keep rule; the reference code compares with every earlier sample, kept
or not (SemDeDup#8), which removes more than the rule says. Duplicates across clusters are
not compared (the price of clustering). Similarities are computed in row blocks, so memory
stays O(block x cluster) however large a cluster is.

With a budget (``fraction`` / ``count``), the threshold is tuned by bisection to the lowest
one that keeps at least the budget, then the most redundant kept samples are trimmed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field as PField
from pydantic import model_validator

from datapipe.fields import Field
from datapipe.stage import Context, Params, Select, Selection
from datapipe.stages.subset.budget import (
    budget_of,
    check_finite_matrix,
    read_view,
    resolve_budget,
    split_budget,
)
from datapipe.stages.subset.plot import plot_selection

Order = Literal["hard", "easy", "random"]
_BLOCK = 512
_BISECT_STEPS = 20


@dataclass
class DedupResult:
    """The outcome of :func:`semdedup`; rows index the input."""

    #: True for kept rows
    kept: np.ndarray
    #: the kept row each removed row duplicates (-1 for kept rows)
    duplicate_of: np.ndarray
    #: cosine similarity to the most similar earlier kept row of the same cluster
    #: (for a removed row: to ``duplicate_of``; -1 when there is none)
    similarity: np.ndarray
    #: cluster of each row
    cluster: np.ndarray
    #: the threshold applied (tuned when a budget was given)
    threshold: float
    #: rows removed only to meet the budget (a subset of the removed rows)
    trimmed: np.ndarray

    def pairs(self) -> list[tuple[int, int, float]]:
        """``(removed row, kept row, similarity)`` for every removed row."""
        rows = np.flatnonzero(~self.kept)
        return [(int(i), int(self.duplicate_of[i]), float(self.similarity[i])) for i in rows]


def auto_clusters(n: int) -> int:
    """Default cluster count: about 1,000 samples per cluster."""
    return max(1, math.ceil(n / 1000))


def _cluster(u: np.ndarray, n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n_clusters == 1:
        return np.zeros(len(u), np.int64), u.mean(axis=0, keepdims=True)
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(
        n_clusters=n_clusters, random_state=seed, n_init=3, batch_size=min(len(u), 2048)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct points than clusters, etc.
        assign = km.fit_predict(u)
    return assign.astype(np.int64), km.cluster_centers_.astype(np.float32)


def _greedy_cluster(
    u: np.ndarray, rows: np.ndarray, thr: float, dup: np.ndarray, sim: np.ndarray
) -> None:
    """Keep-rule over ``rows`` (already in visiting order); fills ``dup`` and ``sim``."""
    kept: list[int] = []
    for lo in range(0, len(rows), _BLOCK):
        blk = rows[lo : lo + _BLOCK]
        ub = u[blk]
        m = len(blk)
        best = np.full(m, -1.0, np.float32)
        arg = np.full(m, -1, np.int64)
        if kept:
            s = ub @ u[kept].T
            j = s.argmax(axis=1)
            best = s[np.arange(m), j]
            arg = np.asarray(kept)[j]
        inner = ub @ ub.T
        inner[np.triu_indices(m)] = -np.inf  # only earlier rows of the block count
        # a row with no earlier in-block row above the threshold is decided by ``best``
        # alone; the others are decided in order, each against the earlier rows kept
        keep_here = best <= thr
        for i in np.flatnonzero((inner > thr).any(axis=1) & keep_here):
            row = inner[i, :i]
            if (row[keep_here[:i]] > thr).any():
                keep_here[i] = False
        masked = np.where(keep_here[None, :], inner, -np.inf)
        j = masked.argmax(axis=1)
        inblk = masked[np.arange(m), j]
        better = inblk > best
        best = np.where(better, inblk, best)
        arg = np.where(better, blk[j], arg)
        dup[blk] = np.where(keep_here, -1, arg)
        sim[blk] = best
        kept.extend(blk[keep_here].tolist())


def _dedup_at(u: np.ndarray, orders: list[np.ndarray], thr: float) -> tuple[np.ndarray, np.ndarray]:
    dup = np.full(len(u), -1, np.int64)
    sim = np.full(len(u), -1.0, np.float32)
    for rows in orders:
        _greedy_cluster(u, rows, thr, dup, sim)
    return dup, sim


def semdedup(
    embeddings: np.ndarray,
    *,
    threshold: float = 0.95,
    clusters: int | None = None,
    keep: Order = "hard",
    seed: int = 0,
    budget: int | float | None = None,
) -> DedupResult:
    """Drop rows whose cosine similarity to a kept row of their cluster exceeds ``threshold``.

    Parameters
    ----------
    embeddings : (N, D); NaN or inf rows raise ValueError. Zero rows have similarity 0.
    threshold : cosine similarity in [-1, 1] above which a row is a duplicate.
    clusters : MiniBatchKMeans clusters (default :func:`auto_clusters`), at most N.
    keep : visiting order inside a cluster: ``"hard"`` farthest from the centroid first,
        ``"easy"`` nearest first, ``"random"`` seeded.
    seed : k-means and the random order.
    budget : keep exactly this many rows (int) or this fraction (float) instead: the
        threshold is tuned, then the most redundant survivors are trimmed (``trimmed``).

    Returns
    -------
    DedupResult
        Per row: ``kept`` bool, the kept row it duplicates (``duplicate_of``, -1 if kept),
        its ``similarity`` to it and its ``cluster``; the ``threshold`` applied.

    Examples
    --------
    >>> from datapipe import ops
    >>> x = np.array([[1.0, 0], [0.999, 0.01], [0, 1], [-1, 0]])
    >>> res = ops.select_semdedup(x, threshold=0.99)
    >>> res.kept.tolist(), res.pairs()[0][:2]
    ([True, False, True, True], (1, 0))
    """
    x = check_finite_matrix(embeddings)
    n = len(x)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1]; got {threshold}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    u = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    k = min(n, clusters or auto_clusters(n)) if n else 1
    if k < 1:
        raise ValueError(f"clusters must be >= 1; got {clusters}")
    cluster, centres = _cluster(u, k, seed) if n else (np.zeros(0, np.int64), u[:0])
    rng = np.random.default_rng(seed)
    orders = []
    for c in range(len(centres)):
        rows = np.flatnonzero(cluster == c)
        if keep == "random":
            rows = rows[rng.permutation(len(rows))]
        else:
            cos = u[rows] @ centres[c] / max(float(np.linalg.norm(centres[c])), 1e-12)
            sign = 1.0 if keep == "easy" else -1.0
            rows = rows[np.argsort(-sign * cos, kind="stable")]  # hard: least central first
        orders.append(rows)
    trimmed = np.zeros(n, np.bool_)
    if budget is None:
        dup, sim = _dedup_at(u, orders, threshold)
        return DedupResult(dup < 0, dup, sim, cluster, float(threshold), trimmed)
    target = resolve_budget(n, **split_budget(budget))
    lo, hi = -1.0, 1.01  # float32 cosines of copies can exceed 1 a little; none exceeds 1.01
    best = _dedup_at(u, orders, hi)
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        dup, sim = _dedup_at(u, orders, mid)
        if int((dup < 0).sum()) >= target:
            hi, best = mid, (dup, sim)
        else:
            lo = mid
    dup, sim = best
    kept = dup < 0
    extra = int(kept.sum()) - target
    if extra > 0:  # drop the most redundant survivors: highest similarity to a kept row
        rows = np.flatnonzero(kept)
        order = rows[np.argsort(-sim[rows], kind="stable")][:extra]
        kept[order] = False
        trimmed[order] = True
        # a trimmed row names the kept row it was compared with; if that one was trimmed too,
        # the pair still says which near-copy made it redundant
        for i in order:
            dup[i] = _nearest_kept(u, i, kept, cluster)
            sim[i] = float(u[i] @ u[dup[i]]) if dup[i] >= 0 else -1.0
    return DedupResult(kept, dup, sim, cluster, min(float(hi), 1.0), trimmed)


def _nearest_kept(u: np.ndarray, i: int, kept: np.ndarray, cluster: np.ndarray) -> int:
    rows = np.flatnonzero(kept & (cluster == cluster[i]))
    if rows.size == 0:
        rows = np.flatnonzero(kept)
    return int(rows[np.argmax(u[rows] @ u[i])]) if rows.size else -1


class DedupParams(Params):
    embedding: str = PField("embedding", description="Embedding field (a D-vector per key).")
    threshold: float = PField(
        0.95, ge=-1, le=1, description="Cosine similarity above which a sample is a duplicate."
    )
    fraction: float | None = PField(
        None, gt=0, le=1, description="Keep this share instead: the threshold is tuned."
    )
    count: int | None = PField(
        None, ge=1, description="Keep this many instead: the threshold is tuned."
    )
    clusters: int | None = PField(
        None, ge=1, description="MiniBatchKMeans clusters (default: one per ~1,000 samples)."
    )
    keep: Order = PField("hard", description="Order inside a cluster: hard, easy or random.")
    plot: str | None = PField(None, description="Write a PNG of kept vs removed here.")

    @model_validator(mode="after")
    def _one_budget(self) -> DedupParams:
        if self.fraction is not None and self.count is not None:
            raise ValueError("give at most one of 'fraction' or 'count'")
        return self


class Dedup(Select):
    """Remove near-duplicates in embedding space (SemDeDup: k-means, then a cosine threshold
    per cluster). Each removed key's reason names the kept key it duplicates and their cosine
    similarity. Score: the cosine similarity to the most similar earlier kept key of the same
    cluster (-1 when none). Keys whose embedding has NaN/inf are left out (``nonfinite``).
    """

    name = "select.dedup"
    description = "Remove semantically redundant samples (k-means + cosine threshold)."
    Params = DedupParams
    EXAMPLE_PARAMS = {"threshold": 0.95}

    def consumes(self) -> tuple[Field, ...]:
        return (Field(self.params.embedding, "float32|float64|float16", "D", "embedding"),)

    def select(
        self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context
    ) -> Selection:
        p = self.params
        v = read_view(keys, view, embedding=p.embedding, label=None, stage=self.name)
        reasons = dict(v.dropped)
        if not v.keys or v.x is None:
            return Selection(keep=set(), reasons=reasons)
        budget = None
        if p.fraction is not None or p.count is not None:
            budget = budget_of(p, len(v.keys), ctx, self.name)
        res = semdedup(
            v.x,
            threshold=p.threshold,
            clusters=p.clusters,
            keep=p.keep,
            seed=ctx.seed,
            budget=budget,
        )
        scores = {k: float(s) for k, s in zip(v.keys, res.similarity, strict=True)}
        n_clusters = int(res.cluster.max()) + 1 if len(res.cluster) else 0
        for i, j, s in res.pairs():
            where = f"cluster {res.cluster[i]} of {n_clusters}"
            if res.trimmed[i]:
                reasons[v.keys[i]] = (
                    f"trimmed to the budget of {budget}: cosine {s:.4f} to {v.keys[j]} "
                    f"({where}, tuned threshold {res.threshold:.4f})"
                )
            else:
                reasons[v.keys[i]] = (
                    f"near-duplicate of {v.keys[j]}: cosine {s:.4f} > {res.threshold:.4f} ({where})"
                )
        keep = {k for k, kept in zip(v.keys, res.kept, strict=True) if kept}
        if p.plot:
            plot_selection(v.x, res.kept, ctx.resolve(p.plot), title=self.name)
        return Selection(keep=keep, scores=scores, reasons=reasons)

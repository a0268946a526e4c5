"""``select.kcenter``: the k-center greedy core-set (Sener & Savarese, ICLR 2018).

The first centre is drawn by the seed; each next centre is the point farthest from the
centres chosen so far. The result covers every point within the *covering radius*.

Each step is one BLAS matrix-vector product with the norm trick
``||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2`` over preallocated float32 buffers, and — once the
centres start to partition the data — only over the points the new centre can reach: a point
``i`` whose nearest centre is ``a`` can move to the new centre ``c`` only if
``d(c, a) < 2 d(i, a)`` (triangle inequality), so the other points are skipped without
reading their rows. When too many points pass that test (data with no cluster structure),
the step falls back to the dense product and re-probes later with an exponential back-off.
The skipped points are exactly those whose distance could not decrease, so the chosen set is
the dense algorithm's (up to float32 near-ties, as between any two float paths).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field as PField

from datapipe.fields import Field
from datapipe.stage import Context, Select, Selection
from datapipe.stages.subset.budget import (
    BudgetParams,
    budget_of,
    check_classes,
    check_finite_matrix,
    read_view,
    resolve_budget,
    split_budget,
)
from datapipe.stages.subset.plot import plot_selection
from datapipe.strata import stratum_budgets

#: prune only while fewer than this share of the points are candidates; above it the
#: gather of candidate rows costs more than one dense pass
_DENSE_SHARE = 0.25
#: after a failed probe, wait this many steps at most before probing again
_MAX_BACKOFF = 16


@dataclass
class KCenterResult:
    """The outcome of :func:`kcenter_cover`."""

    #: chosen rows in selection order (int64, distinct)
    indices: np.ndarray
    #: max over all rows of the distance to the nearest chosen row
    radius: float
    #: per chosen row, the covering radius just before it was added (the first: just after)
    pick_distance: np.ndarray
    #: per row, the distance to its nearest chosen row (0 for chosen rows)
    distance: np.ndarray
    #: per row, the position in ``indices`` of its nearest chosen row
    nearest: np.ndarray


def _sqdist_to(x: np.ndarray, xn: np.ndarray, c: int, out: np.ndarray) -> np.ndarray:
    """``out[:] = ||x_i - x_c||^2`` by the norm trick (one gemv). Rounding can leave tiny
    negatives for near-copies of ``c``; they only ever lose the argmax, so no clipping."""
    np.dot(x, x[c], out=out)
    out *= -2.0
    out += xn
    out += xn[c]
    return out


def _greedy(x: np.ndarray, k: int, first: int, prune: bool) -> tuple[np.ndarray, ...]:
    """The loop. ``x`` float32 C-contiguous (centred if far from 0). Returns indices, squared pick
    distances, squared min distances (norm trick) and the nearest-centre position."""
    n, d = x.shape
    xn = np.einsum("ij,ij->i", x, x)
    # float32 norm-trick error is about eps * (||x||^2 + ||c||^2); never prune inside it
    slack = np.float32(8 * np.finfo(np.float32).eps * 2 * float(xn.max(initial=0.0)))
    idx = np.empty(k, np.int64)
    picked = np.empty(k, np.float32)
    cen = np.empty((k, d), np.float32)  # chosen rows, contiguous for the centre-centre gemv
    cn = np.empty(k, np.float32)
    dcc = np.empty(k, np.float32)
    mind = np.empty(n, np.float32)
    nearest = np.zeros(n, np.int32)
    buf = np.empty(n, np.float32)
    lim = np.empty(n, np.float32)
    mask = np.empty(n, np.bool_)
    chosen = np.zeros(n, np.bool_)
    wait, backoff = 0, 1
    c = first
    for j in range(k):
        if j and mind[c] <= 0.0:  # every row coincides with a centre: fill with the rest
            rest = np.flatnonzero(~chosen)[: k - j]
            idx[j:] = rest
            cen[j:] = x[rest]
            picked[j:] = 0.0
            nearest[rest] = np.arange(j, k, dtype=np.int32)
            mind[rest] = 0.0
            break
        idx[j] = c
        picked[j] = mind[c] if j else np.inf
        chosen[c] = True
        cen[j] = x[c]
        cn[j] = xn[c]
        dense = True
        if prune and j and wait == 0:
            # squared distances from the new centre to the old ones, then the bound test
            cc = dcc[:j]
            np.dot(cen[:j], x[c], out=cc)
            cc *= -2.0
            cc += cn[:j]
            cc += xn[c]
            np.take(cc, nearest, out=buf)
            np.multiply(mind, 4.0, out=lim)
            lim += slack
            np.less(buf, lim, out=mask)
            cand = np.flatnonzero(mask)
            if len(cand) <= _DENSE_SHARE * n:
                dense, backoff = False, 1
                ds = x[cand] @ x[c]
                ds *= -2.0
                ds += xn[cand]
                ds += xn[c]
                better = ds < mind[cand]
                moved = cand[better]
                mind[moved] = ds[better]
                nearest[moved] = j
            else:
                wait, backoff = backoff, min(2 * backoff, _MAX_BACKOFF)
        elif wait:
            wait -= 1
        if dense:
            _sqdist_to(x, xn, c, buf)
            if j == 0:
                mind[:] = buf
            else:
                np.less(buf, mind, out=mask)
                np.putmask(nearest, mask, j)
                np.minimum(mind, buf, out=mind)
        mind[c] = 0.0
        nearest[c] = j
        c = int(np.argmax(mind))
        if j == 0:
            picked[0] = mind[c]  # the first centre: the radius it leaves
    return idx, picked, mind, nearest, cen


def kcenter_cover(
    embeddings: np.ndarray, k: int | float, *, seed: int = 0, start: int | None = None
) -> KCenterResult:
    """The k-center greedy core-set of ``embeddings`` (N, D), with per-row detail.

    Parameters
    ----------
    embeddings : (N, D) numeric array; NaN or inf rows raise ValueError.
    k : the budget: an int is a count, a float in (0, 1] a fraction of N (rounded). A
        budget of 0 or above N raises :class:`~datapipe.stages.subset.budget.BudgetError`.
    seed : draws the first centre (``np.random.default_rng(seed).integers(N)``).
    start : the first centre's row, instead of the seed's draw.

    If fewer than ``k`` distinct points exist, the remaining picks are the unchosen rows in
    index order, at distance 0.

    Returns
    -------
    KCenterResult
        ``indices`` int64, the chosen rows in selection order; ``radius``, the covering
        radius (the largest distance from any row to its nearest chosen row); per chosen row
        the radius it reduced, per row the distance to and position of its nearest centre.

    Examples
    --------
    >>> from datapipe import ops
    >>> x = np.array([[0.0, 0], [1, 0], [10, 0], [10, 1], [5, 5]])
    >>> res = ops.select_kcenter(x, 3, start=0)
    >>> res.indices.tolist(), round(res.radius, 3), res.nearest.tolist()
    ([0, 3, 4], 1.0, [0, 0, 1, 1, 2])
    >>> ops.select_kcenter(x, 0.4, start=0).indices.tolist()
    [0, 3]
    """
    raw = check_finite_matrix(embeddings, dtype=None)
    n = len(raw)
    budget = resolve_budget(n, **split_budget(k))
    if start is None:
        first = int(np.random.default_rng(seed).integers(n))
    elif not 0 <= int(start) < n:
        raise ValueError(f"start index {start} is outside 0..{n - 1}")
    else:
        first = int(start)
    # The norm trick loses float32 precision when the rows sit far from the origin compared
    # with their spread, so such data is centred (in float64, stored float32): one copy.
    # Float32 data already near the origin is used as it is (no copy).
    mean = raw.mean(axis=0, dtype=np.float64)
    flat = raw.reshape(-1)
    sq = float(np.dot(flat, flat)) / max(n, 1)  # mean squared norm
    offset = float(mean @ mean)
    if raw.dtype == np.float32 and offset <= 0.25 * max(sq - offset, 0.0):
        x = raw
    else:
        x = np.empty(raw.shape, np.float32)
        step = max(1, (1 << 21) // max(1, raw.shape[1]))
        for lo in range(0, n, step):
            np.subtract(raw[lo : lo + step], mean, out=x[lo : lo + step], casting="same_kind")
    del raw, flat
    idx, picked, _, nearest, cen = _greedy(x, budget, first, prune=True)
    # exact distances to the nearest centre, in float64 and in chunks (the reported radius)
    dist = np.empty(n, np.float64)
    step = max(1, (1 << 16) // max(1, x.shape[1]))
    for lo in range(0, n, step):
        diff = x[lo : lo + step].astype(np.float64) - cen[nearest[lo : lo + step]]
        dist[lo : lo + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    dist[idx] = 0.0
    return KCenterResult(
        indices=idx,
        radius=float(dist.max(initial=0.0)),
        pick_distance=np.sqrt(np.maximum(picked, 0.0)).astype(np.float64),
        distance=dist,
        nearest=nearest.astype(np.int64),
    )


def kcenter_greedy(
    embeddings: np.ndarray, k: int | float, *, seed: int = 0, start: int | None = None
) -> tuple[np.ndarray, float]:
    """``(indices, radius)`` of :func:`kcenter_cover`: int64 row indices in selection order
    and the covering radius (what the deprecated ``ops.kcenter_greedy`` gives).

    Examples
    --------
    >>> x = np.array([[0.0, 0], [1, 0], [10, 0], [10, 1], [5, 5]])
    >>> idx, radius = kcenter_greedy(x, 3, start=0)
    >>> idx.tolist(), round(radius, 3)
    ([0, 3, 4], 1.0)
    >>> kcenter_greedy(x, 0.4, start=0)[0].tolist()
    [0, 3]
    """
    res = kcenter_cover(embeddings, k, seed=seed, start=start)
    return res.indices, res.radius


class KCenterParams(BudgetParams):
    embedding: str = PField("embedding", description="Embedding field (a D-vector per key).")
    stratify: bool = PField(False, description="Run per class, budgets in proportion.")
    label: str = PField("label", description="Class field, read when stratify is true.")
    plot: str | None = PField(None, description="Write a PNG of kept vs removed here.")


class KCenter(Select):
    """Keep a k-center greedy core-set of the embeddings (Sener & Savarese).

    Score of a kept key: the covering radius it reduced (its distance to the nearest earlier
    centre when picked; the first centre: the radius it alone leaves). Score of a removed key:
    its distance to the nearest kept key, which the reason names. With ``stratify: true`` the
    core-set is built per class, with largest-remainder budgets (see ``select.stratified``).
    Keys whose embedding has NaN/inf are left out with a ``nonfinite`` reason.
    """

    name = "select.kcenter"
    description = "Keep a k-center greedy core-set of an embedding field."
    Params = KCenterParams
    EXAMPLE_PARAMS = {"fraction": 0.5}

    def consumes(self) -> tuple[Field, ...]:
        p = self.params
        fields = [Field(p.embedding, "float32|float64|float16", "D", "embedding")]
        if p.stratify:
            fields.append(Field(p.label, "str|int", "", "class of the sample"))
        return tuple(fields)

    def select(
        self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context
    ) -> Selection:
        p = self.params
        label = p.label if p.stratify else None
        v = read_view(keys, view, embedding=p.embedding, label=label, stage=self.name)
        reasons = dict(v.dropped)
        if not v.keys:
            return Selection(keep=set(), reasons=reasons)
        x = v.x if v.x is not None else np.zeros((len(v.keys), 0), np.float32)
        budget = budget_of(p, len(v.keys), ctx, self.name)
        if v.labels is not None:
            check_classes(v.labels, self.name, ctx, "stratify")
            groups: dict[str, list[int]] = {}
            for i, lab in enumerate(v.labels):
                groups.setdefault(lab, []).append(i)
            quotas = stratum_budgets({c: len(r) for c, r in groups.items()}, budget)
        else:
            groups, quotas = {"": list(range(len(v.keys)))}, {"": budget}
        keep: set[str] = set()
        scores: dict[str, float] = {}
        for cls in sorted(groups):
            rows = np.asarray(groups[cls])
            where = f" in class {cls!r}" if v.labels is not None else ""
            if quotas[cls] == 0:
                for i in rows:
                    reasons[v.keys[i]] = f"class {cls!r} gets 0 of the budget of {budget}"
                continue
            res = kcenter_cover(x[rows], quotas[cls], seed=ctx.seed)
            for pos, i in enumerate(res.indices):
                keep.add(v.keys[rows[i]])
                scores[v.keys[rows[i]]] = float(res.pick_distance[pos])
            centre = rows[res.indices[res.nearest]]
            chosen = set(res.indices.tolist())
            for i in range(len(rows)):
                key = v.keys[rows[i]]
                if i in chosen:
                    continue
                scores[key] = float(res.distance[i])
                reasons[key] = (
                    f"covered by {v.keys[centre[i]]} at distance {res.distance[i]:.4g} "
                    f"(covering radius {res.radius:.4g}, {quotas[cls]} centres of "
                    f"{len(rows)}{where})"
                )
        if p.plot:
            mask = np.array([k in keep for k in v.keys])
            plot_selection(x, mask, ctx.resolve(p.plot), title=self.name, labels=v.labels)
        return Selection(keep=keep, scores=scores, reasons=reasons)

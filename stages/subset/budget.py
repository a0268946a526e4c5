"""What every budgeted Select stage shares: the budget, the embedding and label views.

The budget follows ``select.random`` (:class:`~datapipe.stages.subset.random_subset.RandomParams`):
exactly one of ``fraction`` or ``count``; a fraction keeps ``round(fraction * n)``; a budget
that keeps nothing is refused. Unlike the random baseline, the methods here also refuse a
budget above what there is, because a core-set "of 120 out of 80" is a configuration mistake,
not a request to keep all.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datapipe.errors import ParamError, Problem
from datapipe.stage import Context
from datapipe.stages.subset.random_subset import RandomParams

logger = logging.getLogger(__name__)

#: manifest reason for keys whose embedding cannot be used
NONFINITE = "nonfinite"


class BudgetError(ValueError):
    """A budget that resolves to 0 samples or to more samples than there are."""

    def __init__(self, message: str, param: str = "count") -> None:
        self.param = param
        super().__init__(message)


class BudgetParams(RandomParams):
    """``fraction`` or ``count``, as in ``select.random``."""


def resolve_budget(n: int, *, fraction: float | None = None, count: int | None = None) -> int:
    """The number of samples to keep out of ``n``: ``count``, or ``round(fraction * n)``.

    Raises :class:`BudgetError` (a ``ValueError``) when the budget is 0 or above ``n``.

    Returns
    -------
    int
        The budget, in 1..n.

    Examples
    --------
    >>> resolve_budget(40, fraction=0.25), resolve_budget(40, count=3)
    (10, 3)
    >>> try:
    ...     resolve_budget(5, count=9)
    ... except ValueError as exc:
    ...     print(exc)
    a budget of 9 samples is above the 5 available
    """
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of 'fraction' or 'count'")
    if count is not None:
        if isinstance(count, bool) or int(count) != count:
            raise BudgetError(f"a count must be a whole number; got {count!r}")
        budget, param = int(count), "count"
    else:
        f = float(fraction)  # type: ignore[arg-type]
        if not 0 < f <= 1:
            raise BudgetError(f"a fraction must be in (0, 1]; got {f!r}", "fraction")
        budget, param = round(f * n), "fraction"
    if budget <= 0:
        why = f"fraction {fraction} of {n} samples rounds to 0" if param == "fraction" else ""
        raise BudgetError(f"a budget of 0 samples keeps nothing{'; ' + why if why else ''}", param)
    if budget > n:
        raise BudgetError(f"a budget of {budget} samples is above the {n} available", param)
    return budget


def split_budget(k: int | float) -> dict[str, Any]:
    """``k`` as ``{"count": k}`` for an integer, ``{"fraction": k}`` for a float in (0, 1]."""
    if isinstance(k, (bool, np.bool_)):
        raise BudgetError(f"the budget must be an int (count) or a float (fraction); got {k!r}")
    if isinstance(k, (int, np.integer)):
        return {"count": int(k)}
    if isinstance(k, (float, np.floating)):
        return {"fraction": float(k)}
    raise BudgetError(f"the budget must be an int (count) or a float (fraction); got {k!r}")


def budget_of(params: Any, n: int, ctx: Context, stage: str) -> int:
    """Resolve a stage's budget; a bad one becomes a ParamError with the param's path."""
    try:
        return resolve_budget(n, fraction=params.fraction, count=params.count)
    except BudgetError as exc:
        raise ParamError(
            [Problem(f"nodes.{ctx.node}.params.{exc.param}", f"{stage}: {exc}")]
        ) from None


def check_finite_matrix(
    x: np.ndarray, what: str = "embeddings", dtype: Any = np.float32
) -> np.ndarray:
    """``x`` as a C-contiguous (N, D) array of ``dtype`` (None: float32 or float64 as given);
    ValueError naming the NaN/inf rows."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (N, D); got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"{what} must be real numbers; got dtype {arr.dtype}")
    if dtype is None:
        dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float64
    arr = np.ascontiguousarray(arr, dtype=dtype)
    finite = np.empty(len(arr), np.bool_)
    step = max(1, (1 << 20) // max(1, arr.shape[1]))
    for lo in range(0, len(arr), step):  # in chunks: no (N, D) temporary
        finite[lo : lo + step] = np.isfinite(arr[lo : lo + step]).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        shown = ", ".join(str(i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"{what} contain NaN or inf in {len(bad)} rows ({shown})")
    return arr


@dataclass
class View:
    """The usable part of a Select's light view: rows aligned with ``keys``."""

    keys: list[str]
    x: np.ndarray | None  # (N, D) float32, finite
    labels: list[str] | None
    #: keys left out, with why (NaN/inf or missing embedding)
    dropped: dict[str, str]


def label_text(value: Any) -> str:
    """A label as text; '' for unknown (None, '', or the files source's -1)."""
    if value is None or value == -1:
        return ""
    return str(value)


def read_view(
    keys: Sequence[str],
    view: Mapping[str, Sequence[Any]],
    *,
    embedding: str | None,
    label: str | None,
    stage: str,
) -> View:
    """Embeddings as one float32 matrix; rows with NaN/inf, a missing or a misshapen embedding
    are dropped with a reason, so the others still go through the selection."""
    keys = list(keys)
    dropped: dict[str, str] = {}
    rows: list[np.ndarray] = []
    ok: list[int] = []
    dim: int | None = None
    if embedding is not None:
        for i, (k, v) in enumerate(zip(keys, view[embedding], strict=True)):
            if v is None:
                dropped[k] = f"invalid: no {embedding!r} value reached {stage}"
                continue
            try:
                arr = np.asarray(v, dtype=np.float32).reshape(-1)
            except (TypeError, ValueError):
                dropped[k] = f"invalid: {embedding!r} is not a numeric vector"
                continue
            if dim is None:
                dim = arr.size
            if arr.size != dim or dim == 0:
                dropped[k] = f"invalid: {embedding!r} has {arr.size} values, others have {dim}"
                continue
            if not np.isfinite(arr).all():
                n_bad = int((~np.isfinite(arr)).sum())
                dropped[k] = (
                    f"{NONFINITE}: {embedding!r} has {n_bad} NaN/inf values; left out of {stage}"
                )
                continue
            rows.append(arr)
            ok.append(i)
    else:
        ok = list(range(len(keys)))
    if dropped:
        logger.warning("%s: %d keys left out (bad embeddings)", stage, len(dropped))
    labels = None
    if label is not None:
        col = view[label]
        labels = [label_text(col[i]) for i in ok]
    x = np.stack(rows) if rows else (np.zeros((0, dim or 0), np.float32) if embedding else None)
    return View([keys[i] for i in ok], x, labels, dropped)


def check_classes(labels: Sequence[str], stage: str, ctx: Context, param: str) -> None:
    """Stratified methods need two classes or more: one class is nothing to balance."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        only = f"every sample has label {classes[0]!r}" if classes else "there are no samples"
        raise ParamError(
            [
                Problem(
                    f"nodes.{ctx.node}.params.{param}",
                    f"{stage} keeps classes in proportion and needs at least 2 classes; "
                    f"{only}. Use an unstratified method for a single-class dataset.",
                )
            ]
        )

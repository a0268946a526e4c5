"""``select.random``: keep a seeded random subset of the keys (the baseline selector)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from pydantic import Field as PField
from pydantic import model_validator

from datapipe.errors import ParamError, Problem
from datapipe.stage import Context, Params, Select, Selection


class RandomParams(Params):
    fraction: float | None = PField(None, gt=0, le=1, description="Share of keys to keep.")
    count: int | None = PField(None, ge=1, description="Number of keys to keep.")

    @model_validator(mode="after")
    def _one_budget(self) -> RandomParams:
        if (self.fraction is None) == (self.count is None):
            raise ValueError("give exactly one of 'fraction' or 'count'")
        return self


class Subset(NamedTuple):
    """The keys a seeded subset keeps, and the draw it ranked every key by."""

    #: the kept keys, in rank order
    kept: list[str]
    #: every key's draw in [0, 1) (:func:`key_uniform`)
    draws: dict[str, float]


def key_uniform(key: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, key): order- and worker-independent.

    Returns
    -------
    float
        The draw, from a keyed hash: the same on every machine, worker and run.

    Examples
    --------
    >>> from datapipe import ops
    >>> draw = ops.draw_key_uniform("cats/tom_01", 0)
    >>> 0 <= draw < 1, draw == ops.draw_key_uniform("cats/tom_01", 0)
    (True, True)
    """
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def random_subset(
    keys: Sequence[str], *, fraction: float | None = None, count: int | None = None, seed: int = 0
) -> Subset:
    """Keep ``count`` keys, or ``round(fraction * len(keys))``, ranked by a seeded key hash.

    Returns
    -------
    Subset
        ``kept``, the kept keys in rank order, and ``draws``, the draw of every key.

    Examples
    --------
    >>> from datapipe import ops
    >>> kept, draws = ops.select_random_subset(["a", "b", "c", "d"], fraction=0.5, seed=1)
    >>> len(kept), kept == ops.select_random_subset(["d", "c", "b", "a"], count=2, seed=1).kept
    (2, True)
    """
    budget = random_budget(len(keys), fraction, count)
    scores = {k: key_uniform(k, seed) for k in keys}
    ranked = sorted(keys, key=lambda k: (scores[k], k))
    return Subset(ranked[:budget], scores)


def random_budget(n: int, fraction: float | None, count: int | None) -> int:
    """``count``, or ``round(fraction * n)``, capped at ``n`` (asking for more than there is
    keeps everything). Raises ValueError for a budget that keeps nothing out of ``n > 0``."""
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of 'fraction' or 'count'")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"a count must be an int >= 1; got {count!r}")
        return min(n, int(count))
    if not 0 < fraction <= 1:  # type: ignore[operator]
        raise ValueError(f"a fraction must be in (0, 1]; got {fraction!r}")
    budget = round(fraction * n)  # type: ignore[operator]
    if budget == 0 and n > 0:
        raise ValueError(f"fraction {fraction} of {n} keys rounds to 0: it keeps nothing")
    return budget


class RandomSubset(Select):
    """Keep ``fraction`` (or ``count``) of the keys, chosen by a seeded hash of each key.

    Each key's draw depends only on (seed, key), so adding inputs later keeps earlier
    decisions mostly stable, and every executor picks the same subset.
    """

    name = "select.random"
    description = "Keep a seeded random fraction or count of the samples."
    Params = RandomParams
    EXAMPLE_PARAMS = {"fraction": 0.5}

    def select(
        self, keys: Sequence[str], view: Mapping[str, Sequence[Any]], ctx: Context
    ) -> Selection:
        p = self.params
        n = len(keys)
        try:
            budget = random_budget(n, p.fraction, p.count)
        except ValueError as exc:
            where = f"nodes.{ctx.node}.params.{'count' if p.count is not None else 'fraction'}"
            raise ParamError([Problem(where, f"select.random: {exc}")]) from None
        scores = {k: key_uniform(k, ctx.seed) for k in keys}
        ranked = sorted(keys, key=lambda k: (scores[k], k))
        keep = set(ranked[:budget])
        reasons = {
            k: f"random draw {scores[k]:.4f} outside the {budget} kept of {n}"
            for k in ranked[budget:]
        }
        return Selection(keep=keep, scores=scores, reasons=reasons)

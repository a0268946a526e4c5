"""Per-class budgets: a total split over classes in proportion to their sizes.

Used by the ``select.*`` stages that stratify and by training's re-selection
(:mod:`datapipe.train.reselect`), so it sits below both (no numpy, no stage contract).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

Class = TypeVar("Class")  # a class label: str, int, ... (sortable)


def stratum_budgets(counts: Mapping[Class, int], budget: int) -> dict[Class, int]:
    """Split ``budget`` over classes in proportion to ``counts`` (largest-remainder rounding).

    Each class first gets ``floor(budget * n_c / N)``; the seats left go to the largest
    remainders (ties: the larger class, then the class name). When ``budget`` is at least the
    number of classes, a class left at 0 takes one seat from the class most above its quota,
    so every class with a sample keeps at least one. Exact integer arithmetic throughout.

    Returns
    -------
    dict[str, int]
        Each class's share of ``budget``; the shares sum to ``budget``.

    Examples
    --------
    >>> from datapipe import ops
    >>> ops.allocate_stratum_budgets({"a": 50, "b": 30, "c": 20}, 10)
    {'a': 5, 'b': 3, 'c': 2}
    >>> stratum_budgets({"a": 5, "b": 3, "c": 2}, 3)
    {'a': 1, 'b': 1, 'c': 1}
    >>> stratum_budgets({"a": 97, "b": 2, "c": 1}, 10)
    {'a': 8, 'b': 1, 'c': 1}
    """
    counts = {c: int(n) for c, n in counts.items() if n > 0}
    total = sum(counts.values())
    if not 0 <= budget <= total:
        raise ValueError(f"a budget of {budget} does not fit {total} samples")
    classes = sorted(counts)
    alloc = {c: budget * counts[c] // total for c in classes}
    rem = {c: budget * counts[c] % total for c in classes}  # remainder, in units of 1/total
    left = budget - sum(alloc.values())
    for c in sorted(classes, key=lambda c: (-rem[c], -counts[c], c))[:left]:
        alloc[c] += 1
    if budget >= len(classes):
        for c in sorted((c for c in classes if alloc[c] == 0), key=lambda c: (-rem[c], c)):
            # most above quota: largest alloc - budget*n/total, compared in units of 1/total
            donor = max(
                (d for d in classes if alloc[d] >= 2),
                key=lambda d: (alloc[d] * total - budget * counts[d], counts[d], d),
            )
            alloc[donor] -= 1
            alloc[c] += 1
    return alloc

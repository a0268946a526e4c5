"""How the records of several branches of one item meet: sample by sample, and totally (no
sample dropped without a word)."""

from __future__ import annotations

from datapipe.stage import Record


def _lineage(sub: str) -> list[str]:
    """The sub-key and those it was expanded from: ``@0001_0002`` -> ``["", "@0001",
    "@0001_0002"]``."""
    parts = sub.split("_") if sub else []
    return ["", *("_".join(parts[: i + 1]) for i in range(len(parts)))]


class JoinError(Exception):
    """Records of several branches that cannot be matched sample by sample."""


def join_branches(
    branches: list[list[tuple[str, Record]]], names: list[str] | None = None
) -> list[tuple[str, Record]]:
    """Merge the records of several branches of one item into samples (total: no sub-key
    is dropped).

    The samples are the finest sub-keys of all branches. A branch's record joins every
    sample derived from its sub-key: an unexpanded branch (sub-key ``""``) joins every
    sample of an expanded one, ``@0001`` joins ``@0001_0000`` and ``@0001_0001``. A sample
    that some branch has no record for (branches expanded the item differently) raises
    :class:`JoinError` naming both; fields merge in branch order.

    >>> clips = [("@0000", {"clip": 0}), ("@0001", {"clip": 1})]
    >>> join_branches([clips, [("", {"label": "cat"})]])
    [('@0000', {'clip': 0, 'label': 'cat'}), ('@0001', {'clip': 1, 'label': 'cat'})]
    """
    if len(branches) <= 1:
        return branches[0] if branches else []
    names = names or [f"input {i}" for i in range(len(branches))]
    subs = {sub for branch in branches for sub, _ in branch}
    coarser = {a for sub in subs for a in _lineage(sub)[:-1]}
    finest = sorted(subs - coarser)
    by_sub = [dict(branch) for branch in branches]
    merged: list[tuple[str, Record]] = []
    for sample in finest:
        lineage = _lineage(sample)
        record: Record = {}
        for name, recs in zip(names, by_sub, strict=True):
            match = [recs[a] for a in lineage if a in recs]
            if not match:
                other = next(n for n, r in zip(names, by_sub, strict=True) if sample in r)
                raise JoinError(
                    f"{name!r} has no record for sample {sample!r} that {other!r} has: the "
                    "branches expanded this item into different samples"
                )
            record.update(match[-1])
        merged.append((sample, record))
    return merged

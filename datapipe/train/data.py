"""Data for the training loop: a key-based split, a key filter over a stream, batch checks.

The loop takes any iterable of batches; :class:`KeyFilter` and :func:`split_by_key` turn one
``from_shards`` output into train and validation streams without touching the stream's code.
:func:`prepare_batch` turns a batch of uint8 ``H W C`` images into normalised float ``N C H W``
tensors, dropping (and counting) samples whose image is missing, not finite or of the wrong
shape, or whose label is missing or negative.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from datapipe.train.inputs import SKIP_REASONS, PixelInputs

__all__ = [
    "SKIP_REASONS",
    "FixedEpoch",
    "KeyFilter",
    "channel_stats",
    "key_labels",
    "normalize",
    "prepare_batch",
    "split_by_key",
]


def _unit(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by ``(seed, key)``: the same in every process and re-run."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_by_key(
    keys: Iterable[str], labels: Iterable[Hashable], val_fraction: float, seed: int = 0
) -> set[str]:
    """The validation keys: per label, the keys whose hash of ``(seed, key)`` is < fraction.

    Each key's side depends only on ``(seed, key)`` (blake2b), so the split is identical
    across processes and re-runs, and adding keys never moves an old key to the other side.
    Per label the validation share is therefore ``val_fraction`` on average, not exactly
    ``round(val_fraction * n)``: exact per-class counts cannot also be stable under additions.
    Two guarantees per label: one with >= 2 keys gives at least 1 validation key (its lowest
    hash when none fell below the fraction) and keeps at least 1 training key.

    Examples
    --------
    >>> keys = [f"k{i}" for i in range(8)]
    >>> val = split_by_key(keys, ["a"] * 4 + ["b"] * 4, 0.25, seed=0)
    >>> sorted(val) == sorted(split_by_key(keys, ["a"] * 4 + ["b"] * 4, 0.25, seed=0))
    True
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(
            f"The 'val_fraction' parameter of split_by_key must be a float in [0, 1). "
            f"Got {val_fraction!r} instead."
        )
    by_label: dict[Hashable, list[tuple[float, str]]] = defaultdict(list)
    for key, label in zip(keys, labels, strict=True):
        by_label[label].append((_unit(seed, key), key))
    val: set[str] = set()
    for members in by_label.values():
        members.sort()
        chosen = [k for u, k in members if u < val_fraction]
        if len(members) >= 2 and val_fraction > 0:
            if not chosen:
                chosen = [members[0][1]]
            elif len(chosen) == len(members):
                chosen = chosen[:-1]
        val.update(chosen)
    return val


def key_labels(dataset: Iterable[Mapping[str, Any]], label: str = "label_id") -> dict[str, Any]:
    """``{key: label}`` of every sample of a dataset (e.g. ``from_shards(out, shuffle=False,
    fields=[label])``, which reads only the label members)."""
    out: dict[str, Any] = {}
    for sample in dataset:
        value = sample.get(label)
        out[sample["key"]] = value.item() if isinstance(value, Tensor) else value
    return out


class KeyFilter(IterableDataset):
    """The samples of ``dataset`` whose key is in ``keys`` (or not, with ``exclude=True``).

    Keeps ``set_epoch`` and ``collate`` of the wrapped stream; ``len()`` counts the wrapped
    dataset's ``keys`` that pass (exact for one process; with several ranks each rank filters
    its own share, so their lengths may differ). The filtered-out samples are still read.
    """

    def __init__(self, dataset: IterableDataset, keys: Iterable[str], *, exclude: bool = False):
        super().__init__()
        self.dataset = dataset
        self.keys = frozenset(keys)
        self.exclude = exclude
        self.collate = getattr(dataset, "collate", None)

    def _passes(self, key: str) -> bool:
        return (key in self.keys) != self.exclude

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the wrapped dataset."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """The wrapped dataset's skipped samples (key, reason), when it records them."""
        return list(getattr(self.dataset, "skipped", []))

    def __len__(self) -> int:
        return sum(1 for k in self.dataset.keys if self._passes(k))  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        for sample in self.dataset:
            if self._passes(sample["key"]):
                yield sample


class FixedEpoch(IterableDataset):
    """``dataset`` held at one epoch: ``set_epoch`` is ignored. For validation on a stream
    whose samples change with the epoch (a resize schedule): score at the final size."""

    def __init__(self, dataset: IterableDataset, epoch: int) -> None:
        super().__init__()
        self.dataset, self.epoch = dataset, epoch
        self.collate = getattr(dataset, "collate", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the dataset stays at its fixed epoch."""

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return list(getattr(self.dataset, "skipped", []))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Mapping[str, Any]]:
        return iter(self.dataset)


def prepare_batch(
    batch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    field: str,
    label: str,
    shape: tuple[int, ...] | None,
    skipped: Counter,
) -> tuple[Tensor, Tensor, tuple[int, ...] | None]:
    """``(images, labels, shape)``: the batch's good samples as float ``N C H W`` in [0, 1]
    (uint8 images are divided by 255; float ones taken as they are) and int64 labels.

    ``shape`` is the ``H W C`` every image must have (None: the first good image's, returned).
    Bad samples are left out and counted in ``skipped`` by reason (:data:`SKIP_REASONS`).
    :class:`~datapipe.train.inputs.PixelInputs` does the work (it also crops and flips).
    """
    inputs = PixelInputs(field, label)
    inputs.shape = shape
    (x,), y = inputs(batch, train=False, skipped=skipped)
    return x, y, inputs.shape


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``(x - mean) / std`` per channel; the channels are dim -3 (``N C H W``, ``N S C H W``)."""
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s


def channel_stats(
    batches: Iterable[Tensor], std_floor: float = 1e-3
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (float64 sums) over batches whose channels are dim -3.

    For pixels scaled to [0, 1] these are the usual colour statistics; for DCT channels the
    per-frequency ones (the DC channel's spread dwarfs the others' without them). A spread
    under ``std_floor`` counts as ``std_floor``: a channel that is almost always 0 (a high
    DCT frequency) must not blow its rare values up by 1 / (nearly 0)."""
    total = sq = None
    count = 0
    for x in batches:
        x = x.double().movedim(-3, 0).reshape(x.shape[-3], -1)
        s, q = x.sum(dim=1), (x * x).sum(dim=1)
        total, sq = (s, q) if total is None else (total + s, sq + q)
        count += x.shape[1]
    if total is None or count == 0:
        raise ValueError("no good training samples to compute the normalisation from")
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(std_floor)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]

"""What both streaming datasets share: the epoch, the split, and the skip-and-replace loop.

Skip policy. A unit (a sample of a shard, or an input item of a pipeline) that cannot be
produced — a member that does not decode, a stage error, a stage that filters it — is
*skipped* and remembered as bad for the life of the dataset object: it is never read or run
again, in this epoch or a later one. When it is found, a warning is logged with its key and the
reason, ``(key, reason)`` is appended to ``dataset.skipped`` in the process that found it, and a
JSON line is appended to ``errors_path`` when one was given (every DataLoader worker appends to
the same file); later epochs skip it silently. The memory is one byte per unit in shared
memory, made with the dataset: every DataLoader worker (persistent, or started anew each
epoch) and the main process see what any of them found, and ``dataset.known_bad`` lists it. In
one process a bad unit is therefore read at most once; two workers that meet it at the same
moment may both read it once. A copy pickled outside worker start (``copy.deepcopy``, a
checkpoint) keeps what was found so far but shares no more. Failures are assumed not to depend
on the epoch: a stage that fails an item only in some epochs loses that item for good.

To keep every rank's length constant (a rank that runs short hangs the all-reduce of
distributed training), a skipped unit is replaced by a good unit of the same rank's list for
this epoch, which therefore appears twice in the epoch. The candidates for position ``p`` of
a rank's list of ``L`` are the positions ``perm[i], perm[i + 1], ...`` (cyclically, from
``i = perm[p]``) of a permutation ``perm`` of ``range(L)`` seeded by ``(seed, epoch, rank)``:
the first one not known bad that can be produced is the replacement. Replacements are thus
spread over the list, not the neighbours of bad units (nor, mostly, shared by neighbouring bad
units), and each epoch is deterministic: given the bad units, it depends on the seed, epoch
and rank, not on the number of workers nor on which of them found what first. Only when no
unit of the rank's list can be produced does the iteration stop with a :class:`RuntimeError`.
Without bad units every unit appears exactly once per epoch (as :mod:`datapipe.stream.split`
says); with them every good unit still appears at least once, and one good unit once more per
bad position.

Subsets. :meth:`StreamDataset.select` restricts the units read from the next epoch on: the
epoch's permutation, the rank split, the worker split and the replacements then run over the
active units only (kept in shared memory like the bad flags), so each comes exactly once.

Batches. Every rank has the same ``len()`` and, with the same ``num_workers`` and
``batch_size``, the same number of batches (the worker split is deterministic and skips do not
shorten it). As for any ``IterableDataset``, each DataLoader worker batches its own share, so
with ``num_workers > 1`` a worker's last batch may be partial and ``len(loader)`` may undercount;
``drop_last=True`` drops those partial batches on every rank alike.

Errors that are not about one unit (a shard that changed on disk, a bug in a ``transform``)
propagate. A worker process that dies (a segfault in a decoder, ``os._exit``) makes the
DataLoader raise ``RuntimeError: DataLoader worker (pid ...) exited unexpectedly`` (or "is
killed by signal"); nothing hangs.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.context import get_spawning_popen
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from datapipe.stage import to_jsonable
from datapipe.stream.split import (
    check_epoch,
    check_even,
    epoch_order,
    rank_length,
    rank_positions,
    resolve_rank,
    worker_positions,
)

logger = logging.getLogger(__name__)

Sample = dict[str, Any]
Transform = Callable[[Sample], Sample]


class BadUnit(Exception):
    """One unit cannot be produced this time; it is skipped and replaced."""

    def __init__(self, key: str, reason: str) -> None:
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


class SharedEpoch:
    """An epoch number shared with DataLoader worker processes.

    It lives in shared memory, so ``set_epoch`` in the main process reaches workers started
    earlier (``persistent_workers=True``). Pickled outside of process start (a deepcopy, a
    checkpoint), it travels as a plain number.
    """

    def __init__(self, value: int = 0) -> None:
        self._shared = multiprocessing.RawValue("q", value)

    @property
    def value(self) -> int:
        return int(self._shared.value)

    @value.setter
    def value(self, epoch: int) -> None:
        self._shared.value = epoch

    def __getstate__(self) -> dict[str, Any]:
        if get_spawning_popen() is not None:
            return {"shared": self._shared}
        return {"value": self.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "shared" in state:
            self._shared = state["shared"]
        else:
            self._shared = multiprocessing.RawValue("q", state["value"])


class SharedFlags:
    """One flag per unit in shared memory, set once and never cleared (the known-bad units).

    Like :class:`SharedEpoch`, it reaches DataLoader workers at their start, so what one finds
    every other (and the main process) sees; pickled outside of process start it travels as a
    copy of its bytes.
    """

    def __init__(self, n: int) -> None:
        self._shared = multiprocessing.RawArray("B", n)

    def __getitem__(self, i: int) -> bool:
        return bool(self._shared[i])

    def set(self, i: int) -> None:
        self._shared[i] = 1

    def indices(self) -> list[int]:
        """The set flags, in order."""
        if not len(self._shared):
            return []
        return np.flatnonzero(np.frombuffer(self._shared, dtype=np.uint8)).tolist()

    def __getstate__(self) -> dict[str, Any]:
        if get_spawning_popen() is not None:
            return {"shared": self._shared}
        return {"bytes": bytes(self._shared)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "shared" in state:
            self._shared = state["shared"]
        else:
            self._shared = multiprocessing.RawArray("B", state["bytes"])


class SharedSubset:
    """The active subset of the units (None: all), in shared memory like :class:`SharedFlags`
    but rewritable: a mask byte per unit and a flag saying whether the mask applies. The main
    process changes it between epochs (:meth:`StreamDataset.select`); DataLoader workers,
    persistent or not, read it when an epoch starts."""

    def __init__(self, n: int) -> None:
        self._mask = multiprocessing.RawArray("B", n)
        self._on = multiprocessing.RawValue("B", 0)

    def get(self) -> np.ndarray | None:
        """The active unit indices, ascending, or None when every unit is active."""
        if not self._on.value:
            return None
        return np.flatnonzero(np.frombuffer(self._mask, dtype=np.uint8)).astype(np.int64)

    def set(self, units: np.ndarray | None) -> None:
        mask = np.frombuffer(self._mask, dtype=np.uint8)
        mask[:] = 0
        if units is not None:
            mask[units] = 1
        self._on.value = units is not None

    def __getstate__(self) -> dict[str, Any]:
        if get_spawning_popen() is not None:
            return {"mask": self._mask, "on": self._on}
        return {"bytes": bytes(self._mask), "value": self._on.value}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "mask" in state:
            self._mask, self._on = state["mask"], state["on"]
        else:
            self._mask = multiprocessing.RawArray("B", state["bytes"])
            self._on = multiprocessing.RawValue("B", state["value"])


def replacement_order(length: int, seed: int, epoch: int, rank: int) -> np.ndarray:
    """The permutation of a rank's ``length`` positions that replacements are drawn from.

    Examples
    --------
    >>> sorted(replacement_order(4, seed=0, epoch=0, rank=0).tolist())
    [0, 1, 2, 3]
    """
    return np.random.default_rng((seed, epoch, rank, 1)).permutation(length).astype(np.int64)


def to_torch(record: dict[str, Any], keep: frozenset[str] | None = None) -> Sample:
    """Arrays -> tensors (sharing memory); numpy scalars -> Python; strings stay strings.

    Arrays of a dtype torch lacks (unicode, bytes strings) stay numpy arrays. ``keep``: only
    these fields (None: all).
    """
    out: Sample = {}
    for name, value in record.items():
        if keep is not None and name not in keep:
            continue
        if isinstance(value, np.ndarray):
            if not value.dtype.isnative:
                value = value.astype(value.dtype.newbyteorder("="))
            elif not value.flags.writeable:  # e.g. np.asarray(PIL image); torch wants writable
                value = value.copy()
            try:
                value = torch.from_numpy(value)
            except TypeError:
                pass
        elif not isinstance(value, (bytes, bytearray, torch.Tensor)):
            value = to_jsonable(value)
        out[name] = value
    return out


class StreamDataset(IterableDataset):
    """Base of :func:`~datapipe.stream.from_shards` and :func:`~datapipe.stream.from_pipeline`.

    Subclasses give the keys of their units (``self.keys``, a deterministic, sorted list) and
    :meth:`_open`, which returns a callable producing the samples of one unit (or raising
    :class:`BadUnit`) plus a function that releases what it opened.
    """

    _where = "StreamDataset"

    def __init__(
        self,
        keys: list[str],
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        even: str = "pad",
        errors_path: str | Path | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__()
        if seed < 0:
            raise ValueError(
                f"The 'seed' parameter of {self._where} must be an int >= 0. Got {seed} instead."
            )
        self.keys = keys
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.even = check_even(even, self._where)
        self.errors_path = Path(errors_path) if errors_path is not None else None
        self.transform = transform
        self._epoch = SharedEpoch(0)
        self._bad = SharedFlags(len(keys))
        self._subset = SharedSubset(len(keys))
        self._key_index: dict[str, int] | None = None
        #: (key, reason) of every unit found bad by iterations run in this process
        self.skipped: list[tuple[str, str]] = []
        #: key -> reason for units left out when the dataset was built (never iterated)
        self.excluded: dict[str, str] = {}

    # -- epoch and split --------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._epoch.value

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: the order and (in pipelines) ``ctx.epoch`` seen by the stages.

        Call it before iterating each epoch, on every rank, with the same number.
        """
        self._epoch.value = check_epoch(epoch)

    def select(self, keys: Iterable[str] | None) -> int:
        """Read only the units of ``keys`` from the next epoch on (None: every unit again);
        returns how many are active. Each epoch then permutes the active units alone (seeded
        by the seed and epoch, as before), so every one of them comes exactly once per epoch
        and a skipped one is replaced by another active one. A key the dataset does not hold
        is a ValueError; an empty selection too.

        Call it in the main process between epochs (it reaches DataLoader workers, persistent
        or not, as ``set_epoch`` does), on every rank with the same keys: ranks split the
        active units as they split all of them."""
        if keys is None:
            self._subset.set(None)
            return len(self.keys)
        index = self._index()
        wanted = list(dict.fromkeys(keys))
        unknown = [k for k in wanted if k not in index]
        if unknown:
            raise ValueError(
                f"{self._where}.select: {len(unknown)} key(s) the dataset does not hold, "
                f"e.g. {unknown[:3]}"
            )
        if not wanted:
            raise ValueError(f"{self._where}.select: an empty selection (give None for all)")
        self._subset.set(np.sort(np.fromiter((index[k] for k in wanted), np.int64, len(wanted))))
        return len(wanted)

    @property
    def selected(self) -> list[str] | None:
        """The keys :meth:`select` made active, in key order (None: all are)."""
        units = self._subset.get()
        return None if units is None else [self.keys[i] for i in units]

    def _index(self) -> dict[str, int]:
        if self._key_index is None:
            self._key_index = {k: i for i, k in enumerate(self.keys)}
        return self._key_index

    def __len__(self) -> int:
        units = self._subset.get()
        n = len(self.keys) if units is None else len(units)
        return rank_length(n, self.world_size, self.even, self.rank)

    def rank_units(self, epoch: int | None = None) -> np.ndarray:
        """Indices into ``self.keys`` this rank reads in ``epoch`` (default: the current one):
        its share of a permutation of the active units (all units, unless :meth:`select`)."""
        e = self.epoch if epoch is None else epoch
        active = self._subset.get()
        n = len(self.keys) if active is None else len(active)
        order = epoch_order(n, self.seed, e, self.shuffle)
        if active is not None:
            order = active[order]
        return rank_positions(order, self.rank, self.world_size, self.even)

    @property
    def known_bad(self) -> list[str]:
        """Keys found bad so far, by this process or any DataLoader worker (never read again)."""
        return [self.keys[i] for i in self._bad.indices()]

    # -- iteration --------------------------------------------------------------------------
    def _open(self, epoch: int) -> tuple[Callable[[int], list[Sample]], Callable[[], None]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        units = self.rank_units(epoch)
        produce, close = self._open(epoch)
        order: list[np.ndarray] = []  # the replacement order, drawn at the first bad unit
        try:
            for pos in worker_positions(len(units), worker, n_workers):
                samples = self._produce_or_replace(produce, units, pos, order, epoch, worker)
                for sample in samples:
                    yield self.transform(sample) if self.transform is not None else sample
        finally:
            close()

    def _try(self, produce: Callable[[int], list[Sample]], unit: int) -> list[Sample] | BadUnit:
        """The unit's samples, or the reason it is bad (then remembered as such)."""
        try:
            return produce(unit)
        except BadUnit as exc:
            self._bad.set(unit)
            return exc

    def _produce_or_replace(
        self,
        produce: Callable[[int], list[Sample]],
        units: np.ndarray,
        pos: int,
        order: list[np.ndarray],
        epoch: int,
        worker: int,
    ) -> list[Sample]:
        unit = int(units[pos])
        known = self._bad[unit]
        found: list[BadUnit] = []  # units found bad now (known ones are not reported again)
        if not known:
            got = self._try(produce, unit)
            if not isinstance(got, BadUnit):
                return got
            found.append(got)
        n = len(units)
        if not order:
            order.append(replacement_order(n, self.seed, epoch, self.rank))
        perm = order[0]
        start = int(perm[pos])  # a random place to start walking, different for every pos
        for step in range(n):
            candidate = int(units[perm[(start + step) % n]])
            if self._bad[candidate]:
                continue
            got = self._try(produce, candidate)
            if isinstance(got, BadUnit):
                found.append(got)
                continue
            replaced_by = self.keys[candidate]
            for exc in found:
                self._record(exc, epoch, worker, replaced_by=replaced_by)
            if known:
                logger.debug("skipped %s (known bad); replaced by %s", self.keys[unit], replaced_by)
            return got
        for exc in found:
            self._record(exc, epoch, worker, replaced_by=None)
        raise RuntimeError(
            f"{self._where}: no unit of rank {self.rank}'s {n} can be read in epoch {epoch}; "
            f"last problem: {found[-1] if found else 'all were found bad before'}"
        )

    def _record(self, exc: BadUnit, epoch: int, worker: int, replaced_by: str | None) -> None:
        self.skipped.append((exc.key, exc.reason))
        logger.warning(
            "skipped %s (epoch %d, rank %d, worker %d): %s; replaced by %s",
            exc.key,
            epoch,
            self.rank,
            worker,
            exc.reason,
            replaced_by,
        )
        if self.errors_path is None:
            return
        line = json.dumps(
            {
                "key": exc.key,
                "reason": exc.reason,
                "epoch": epoch,
                "rank": self.rank,
                "worker": worker,
                "pid": os.getpid(),
                "replaced_by": replaced_by,
            },
            sort_keys=True,
        )
        with open(self.errors_path, "a", encoding="utf-8") as fh:  # O_APPEND: whole lines
            fh.write(line + "\n")

"""What both streaming datasets share: the epoch, the split, and the skip-and-replace loop.

Skip policy. A unit (a sample of a shard, or an input item of a pipeline) that cannot be
produced — a member that does not decode, a stage error, a stage that filters it — is
*skipped*: a warning is logged with its key and the reason, ``(key, reason)`` is appended to
``dataset.skipped`` in the process that iterated it, and a JSON line is appended to
``errors_path`` when one was given (every DataLoader worker appends to the same file). To keep
every rank's length constant (a rank that runs short hangs the all-reduce of distributed
training), the skipped unit is replaced by the next good unit of the same rank's list for this
epoch (cyclically), which therefore appears twice in the epoch. Units already found bad in this
pass are not tried again as replacements. Only when no unit of the rank's list can be produced
does the iteration stop with a :class:`RuntimeError`.

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
from collections.abc import Callable, Iterator
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
        #: (key, reason) of every unit skipped by iterations run in this process
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

    def __len__(self) -> int:
        return rank_length(len(self.keys), self.world_size, self.even, self.rank)

    def rank_units(self, epoch: int | None = None) -> np.ndarray:
        """Indices into ``self.keys`` this rank reads in ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else epoch
        order = epoch_order(len(self.keys), self.seed, e, self.shuffle)
        return rank_positions(order, self.rank, self.world_size, self.even)

    # -- iteration --------------------------------------------------------------------------
    def _open(self, epoch: int) -> tuple[Callable[[int], list[Sample]], Callable[[], None]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        units = self.rank_units(epoch)
        produce, close = self._open(epoch)
        bad: set[int] = set()
        try:
            for pos in worker_positions(len(units), worker, n_workers):
                samples = self._produce_or_replace(produce, units, pos, bad, epoch, worker)
                for sample in samples:
                    yield self.transform(sample) if self.transform is not None else sample
        finally:
            close()

    def _produce_or_replace(
        self,
        produce: Callable[[int], list[Sample]],
        units: np.ndarray,
        pos: int,
        bad: set[int],
        epoch: int,
        worker: int,
    ) -> list[Sample]:
        n = len(units)
        skipped: list[BadUnit] = []
        for step in range(n):
            unit = int(units[(pos + step) % n])
            if unit in bad:
                continue
            try:
                samples = produce(unit)
            except BadUnit as exc:
                bad.add(unit)
                skipped.append(exc)
                continue
            for exc in skipped:
                self._record(exc, epoch, worker, replaced_by=self.keys[unit])
            return samples
        for exc in skipped:
            self._record(exc, epoch, worker, replaced_by=None)
        raise RuntimeError(
            f"{self._where}: no unit of rank {self.rank}'s {n} can be read in epoch {epoch}; "
            f"last problem: {skipped[-1] if skipped else 'all were skipped before'}"
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

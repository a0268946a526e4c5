"""The few ``torch.distributed`` steps :func:`~datapipe.train.fit` takes under ``torchrun``.

Every helper is a no-op (or the identity) unless a process group is initialised with more
than one process, so the single-process loop runs exactly as before. They are collectives:
every rank must call them, in the same order.

Examples
--------
>>> is_distributed(), rank(), world_size()
(False, 0, 1)
>>> sum_over_ranks(1.5, 3, {"wrong_shape": 2})
(1.5, 3, {'wrong_shape': 2})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "barrier",
    "broadcast_object",
    "is_distributed",
    "rank",
    "sum_over_ranks",
    "sync_buffers",
    "unwrap",
    "world_size",
    "wrap",
]


def is_distributed() -> bool:
    """True when a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    """Wait for every rank."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable), on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _sum(parts: list[Any]) -> Any:
    """The sum of one value over ranks, in rank order; None parts count as nothing."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    if isinstance(parts[0], Mapping):
        total: Counter = Counter()
        for p in parts:
            total.update(p)
        return dict(total)
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def sum_over_ranks(*values: Any) -> tuple[Any, ...]:
    """Each of ``values`` (numbers, tensors, count dicts or None) summed over ranks.

    The parts are gathered and added in rank order, so every rank gets the same result, bit
    for bit (floats included). Without a process group: ``values`` themselves."""
    if not is_distributed():
        return values
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, values)
    return tuple(_sum([g[i] for g in gathered]) for i in range(len(values)))


def sync_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each training forward, so after an epoch every rank
    holds rank ``src``'s plus its own last update; this makes them identical again."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` (else ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when distributed and not wrapped already
    (construction broadcasts rank 0's parameters and buffers to every rank)."""
    if not is_distributed() or isinstance(model, DistributedDataParallel):
        return model
    return DistributedDataParallel(model)

"""Who reads what in an epoch: the epoch permutation, the rank split and the worker split.

Pure functions of integers, so the invariants (every sample exactly once per epoch, ranks
balanced, ``pad``/``drop`` lengths) are property-tested without torch or data.

The policy, for ``N`` samples (or items) and ``W`` ranks:

- ``epoch_order``: a permutation of ``range(N)`` drawn from ``numpy.random.default_rng((seed,
  epoch))`` (PCG64, the same on every machine), or ``range(N)`` itself when ``shuffle`` is off.
- ``rank_positions``: rank ``r`` takes every ``W``-th entry of the (possibly padded or cut)
  order, starting at ``r``, like :class:`torch.utils.data.DistributedSampler`.

  * ``even="pad"`` (the default): the order is extended with its own first entries (cyclically,
    when ``N < W``) to ``ceil(N / W) * W``; every rank gets ``ceil(N / W)`` and up to ``W - 1``
    samples appear twice in the epoch.
  * ``even="drop"``: the order is cut to ``floor(N / W) * W``; every rank gets
    ``floor(N / W)`` and up to ``W - 1`` samples (different ones each epoch when shuffled) are
    left out of the epoch.
  * ``even="none"``: no change; rank lengths differ by at most one, every sample appears
    exactly once. Only safe when ranks need not run the same number of steps.

  When ``W`` divides ``N`` the three agree: every sample exactly once, equal lengths.
- ``worker_positions``: DataLoader worker ``w`` of ``K`` takes every ``K``-th entry of its
  rank's list, starting at ``w``. The workers of a rank together read the rank's list exactly
  once, for any ``K``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Even = Literal["pad", "drop", "none"]
EVEN_POLICIES: tuple[str, ...] = ("pad", "drop", "none")


def check_even(even: str, where: str = "from_shards") -> str:
    if even not in EVEN_POLICIES:
        raise ValueError(
            f"The 'even' parameter of {where} must be one of {EVEN_POLICIES}. Got {even!r} instead."
        )
    return even


def check_epoch(epoch: int) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"The epoch must be an int >= 0. Got {epoch!r} instead.")
    return int(epoch)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of ``range(n)`` for one epoch.

    Examples
    --------
    >>> epoch_order(5, seed=0, epoch=0, shuffle=False).tolist()
    [0, 1, 2, 3, 4]
    >>> sorted(epoch_order(5, seed=0, epoch=1).tolist())
    [0, 1, 2, 3, 4]
    """
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0. Got seed={seed}, epoch={epoch} instead.")
    return np.random.default_rng((seed, epoch)).permutation(n).astype(np.int64)


def rank_length(n: int, world_size: int, even: str = "pad", rank: int = 0) -> int:
    """How many entries rank ``rank`` gets out of ``n`` (see the module docstring)."""
    if n == 0:
        return 0
    if even == "pad":
        return -(-n // world_size)
    if even == "drop":
        return n // world_size
    return len(range(rank, n, world_size))


def rank_positions(order: np.ndarray, rank: int, world_size: int, even: str = "pad") -> np.ndarray:
    """The entries of ``order`` that rank ``rank`` of ``world_size`` reads, in order.

    Examples
    --------
    >>> rank_positions(np.arange(5), 1, 2, "pad").tolist()
    [1, 3, 0]
    >>> rank_positions(np.arange(5), 1, 2, "drop").tolist()
    [1, 3]
    >>> rank_positions(np.arange(5), 1, 2, "none").tolist()
    [1, 3]
    """
    check_even(even)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}). Got {rank} instead.")
    n = len(order)
    if n == 0:
        return np.asarray(order[:0], dtype=np.int64)
    if even == "pad":
        total = -(-n // world_size) * world_size
        order = np.resize(order, total)  # repeats the order cyclically
    elif even == "drop":
        order = order[: (n // world_size) * world_size]
    return np.asarray(order[rank::world_size], dtype=np.int64)


def worker_positions(length: int, worker_id: int, num_workers: int) -> range:
    """Positions in a rank's list of ``length`` that DataLoader worker ``worker_id`` reads.

    Examples
    --------
    >>> list(worker_positions(5, 1, 2))
    [1, 3]
    """
    if not 0 <= worker_id < num_workers:
        raise ValueError(f"worker_id must be in [0, {num_workers}). Got {worker_id} instead.")
    return range(worker_id, length, num_workers)


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Rank and world size from the arguments, else torch.distributed, else (0, 1)."""
    if (rank is None) != (world_size is None):
        raise ValueError("give both 'rank' and 'world_size', or neither")
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if world_size < 1:
        raise ValueError(f"The 'world_size' parameter must be >= 1. Got {world_size} instead.")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"The 'rank' parameter must be an int in [0, {world_size}). Got {rank} instead."
        )
    return int(rank), int(world_size)

"""Key-frame index arithmetic on plain numbers and arrays: no video is opened here.

- :func:`uniform_indices`: ``k`` frames spread evenly from the first frame to the last, or
  every ``n``-th frame;
- :func:`tsn_indices`: TSN segment sampling (Wang et al., ECCV 2016): the clip is cut into
  ``k`` equal segments; training draws one frame at random inside each (seeded by
  ``(seed, key, epoch)``, so each epoch of a streaming loader sees other frames), testing
  takes each segment's centre;
- :func:`motion_peaks`: local maxima of a per-frame signal with a minimum gap between them;
- :func:`top_k_with_gap`: the ``k`` best-scored frames, no two closer than ``min_gap``;
- :func:`scene_cuts`: hard cuts from a per-frame change score, with a minimum scene length.

Every function returns int64 frame indices in presentation order, sorted ascending.

Budgets: ``k`` must be at least 1. When a video holds fewer frames (or candidates) than
``k``, ``too_few`` decides: ``"error"`` (the default) raises :class:`ItemError` ``invalid``;
``"clamp"`` keeps what there is; ``"repeat"`` (uniform and TSN only) repeats frames so that
exactly ``k`` come out, as fixed-size training batches need.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np

from datapipe.errors import ItemError

TooFew = Literal["error", "clamp", "repeat"]
_POLICIES = ("error", "clamp", "repeat")


def budget(k: int, available: int, too_few: str = "error", what: str = "frames") -> int:
    """How many frames to pick when ``k`` are asked for and ``available`` exist.

    >>> budget(4, 30), budget(40, 30, "clamp"), budget(40, 30, "repeat")
    (4, 30, 40)
    """
    if too_few not in _POLICIES:
        raise ValueError(f"too_few must be one of {_POLICIES}; got {too_few!r}")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ItemError("invalid", f"the budget k must be an integer of at least 1; got {k!r}")
    if available < 1:
        raise ItemError("empty", f"the video has no {what} to pick from")
    if k <= available or too_few == "repeat":
        return int(k)
    if too_few == "clamp":
        return int(available)
    raise ItemError(
        "invalid",
        f"k={k} {what} requested but the video has only {available} "
        "(too_few: 'clamp' keeps them all)",
    )


def uniform_indices(
    n: int, k: int | None = None, *, every: int | None = None, too_few: TooFew = "error"
) -> np.ndarray:
    """``k`` frames at uniform intervals from the first to the last frame, or every n-th.

    Frame ``i`` of ``k`` is ``round(i * (n - 1) / (k - 1))`` (halves round up, computed in
    integers); ``k = 1`` gives the middle frame ``(n - 1) // 2``. ``every`` gives frames
    ``0, every, 2 * every, ...``.

    Examples
    --------
    >>> uniform_indices(30, 4).tolist(), uniform_indices(30, every=8).tolist()
    ([0, 10, 19, 29], [0, 8, 16, 24])
    """
    if k is None:
        if every is None:
            raise ValueError("give exactly one of k or every")
        if every < 1:
            raise ItemError("invalid", f"every must be at least 1; got {every}")
        if n < 1:
            raise ItemError("empty", "the video has no frames to pick from")
        return np.arange(0, n, every, dtype=np.int64)
    if every is not None:
        raise ValueError("give exactly one of k or every")
    k = budget(k, n, too_few)
    if k == 1:
        return np.array([(n - 1) // 2], dtype=np.int64)
    i = np.arange(k, dtype=np.int64)
    return (2 * i * (n - 1) + (k - 1)) // (2 * (k - 1))


def tsn_seed(seed: int, key: str, epoch: int) -> int:
    """A 64-bit seed fixed by (seed, key, epoch): independent of order and worker."""
    digest = hashlib.blake2b(f"tsn:{seed}:{key}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def tsn_segments(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(start, end)`` of the ``k`` TSN segments: ``[floor(i n / k), floor((i + 1) n / k))``."""
    i = np.arange(k, dtype=np.int64)
    return (i * n) // k, ((i + 1) * n) // k


def tsn_indices(
    n: int,
    k: int,
    *,
    mode: Literal["train", "test"] = "test",
    seed: int = 0,
    key: str = "",
    epoch: int = 0,
    too_few: TooFew = "error",
) -> np.ndarray:
    """TSN segment sampling: one frame in each of ``k`` equal segments of an ``n``-frame clip.

    ``mode="test"``: the centre of each segment, ``floor((2 i + 1) n / (2 k))`` (TSN's test
    offsets). ``mode="train"``: a uniform draw in ``[floor(i n / k), floor((i + 1) n / k))``
    from a generator seeded by ``(seed, key, epoch)``. With ``too_few="repeat"`` and
    ``k > n``, empty segments take their start frame, so frames repeat.

    Examples
    --------
    >>> tsn_indices(30, 4, mode="test").tolist()
    [3, 11, 18, 26]
    >>> idx = tsn_indices(30, 4, mode="train", seed=0, key="a", epoch=1)
    >>> bool(((idx >= [0, 7, 15, 22]) & (idx < [7, 15, 22, 30])).all())
    True
    """
    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test'; got {mode!r}")
    k = budget(k, n, too_few)
    if mode == "test":
        i = np.arange(k, dtype=np.int64)
        return ((2 * i + 1) * n) // (2 * k)
    start, end = tsn_segments(n, k)
    rng = np.random.default_rng(tsn_seed(seed, key, epoch))
    offset = rng.integers(0, np.maximum(end - start, 1))
    return np.minimum(start + offset, n - 1).astype(np.int64)


def top_k_with_gap(scores: np.ndarray, k: int, min_gap: int = 1) -> np.ndarray:
    """Greedy non-maximum suppression: the best-scored frames, no two closer than ``min_gap``.

    Frames are taken by decreasing score (ties: the earlier frame); a frame closer than
    ``min_gap`` to one already taken is skipped. Returns at most ``k`` indices, sorted.

    >>> top_k_with_gap(np.array([0.1, 0.9, 0.8, 0.2, 0.7]), 2, min_gap=2).tolist()
    [1, 4]
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional; got shape {s.shape}")
    if min_gap < 1:
        raise ValueError(f"min_gap must be at least 1; got {min_gap}")
    if not np.isfinite(s).all():
        raise ItemError("nonfinite", "frame scores hold NaN or infinite values")
    order = np.argsort(-s, kind="stable")
    blocked = np.zeros(len(s), dtype=bool)
    picked: list[int] = []
    for t in order:
        if len(picked) >= k:
            break
        if blocked[t]:
            continue
        picked.append(int(t))
        blocked[max(0, t - min_gap + 1) : t + min_gap] = True
    return np.sort(np.asarray(picked, dtype=np.int64))


def motion_peaks(
    signal: np.ndarray,
    *,
    k: int | None = None,
    threshold: float | None = None,
    min_gap: int = 1,
) -> np.ndarray:
    """Local maxima of a per-frame signal, at least ``min_gap`` frames apart.

    A peak is higher than its left neighbour and not lower than its right one (a plateau
    counts once, at its middle); the first and last frames are never peaks. Of two peaks
    closer than ``min_gap`` the lower is dropped (``scipy.signal.find_peaks`` with
    ``distance``). ``threshold`` keeps peaks at or above it; ``k`` keeps the ``k`` highest
    (ties: the earlier). Returns the kept peaks sorted by frame.

    >>> motion_peaks(np.array([0, 3, 1, 0, 5, 0, 2, 4, 0.0]), min_gap=1).tolist()
    [1, 4, 7]
    >>> motion_peaks(np.array([0, 3, 1, 0, 5, 0, 2, 4, 0.0]), k=2, min_gap=3).tolist()
    [4, 7]
    """
    from scipy.signal import find_peaks

    e = np.asarray(signal, dtype=np.float64)
    if e.ndim != 1:
        raise ValueError(f"signal must be one-dimensional; got shape {e.shape}")
    if not np.isfinite(e).all():
        raise ItemError("nonfinite", "the per-frame signal holds NaN or infinite values")
    if min_gap < 1:
        raise ValueError(f"min_gap must be at least 1; got {min_gap}")
    peaks, _ = find_peaks(e, height=threshold, distance=min_gap)
    peaks = peaks.astype(np.int64)
    if k is not None and len(peaks) > k:
        best = np.argsort(-e[peaks], kind="stable")[:k]
        peaks = np.sort(peaks[best])
    return peaks


def scene_cuts(change: np.ndarray, threshold: float, min_scene_len: int = 1) -> np.ndarray:
    """Frames that start a new scene: ``change[t] >= threshold`` and at least
    ``min_scene_len`` frames after the previous scene's start (frame 0 starts the first).

    Decided left to right, so a flash (two large changes in a row) gives one cut. Frame 0 is
    never a cut.

    >>> scene_cuts(np.array([0, 0.1, 0.9, 0.8, 0.1, 0.7, 0.0]), 0.5, min_scene_len=2).tolist()
    [2, 5]
    """
    c = np.asarray(change, dtype=np.float64)
    if min_scene_len < 1:
        raise ValueError(f"min_scene_len must be at least 1; got {min_scene_len}")
    cuts: list[int] = []
    start = 0
    for t in np.flatnonzero(c >= threshold):
        if t > 0 and t - start >= min_scene_len:
            cuts.append(int(t))
            start = int(t)
    return np.asarray(cuts, dtype=np.int64)

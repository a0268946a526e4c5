"""Batching samples whose arrays differ in size: zero padding plus a mask.

Convention, for a field ``F`` whose tensors have the same number of dimensions and dtype:

- same shape in every sample: ``batch[F]`` is ``torch.stack`` of them, shape ``(B, *shape)``,
  and there is no mask;
- shapes that differ: every dimension is padded at its end (with ``pad_value``, default 0)
  to the largest size in the batch, ``batch[F]`` has shape ``(B, *max_shape)``, and
  ``batch[F + "_mask"]`` is a bool tensor, ``True`` over real data, whose shape is
  ``(B, *max_shape[:k + 1])`` where ``k`` is the last dimension that varies. A point cloud
  ``(N, 3)`` gets a mask ``(B, N_max)``; an image ``(H, W, 3)`` a mask ``(B, H_max, W_max)``;
  a clip ``(T, H, W, 3)`` with varying ``T`` a mask ``(B, T_max)``. ``mask[..., None]``
  broadcasts over the trailing, fixed dimensions.

Python ints, floats and bools become one tensor per field (``torch.tensor`` of the list:
int64, float32... as torch infers, float if ints and floats mix). Strings (``key``) and
everything else (lists, dicts, bytes, numpy arrays of strings) become a plain list.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

MASK_SUFFIX = "_mask"


def _new(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker, allocated in shared memory directly
    (as torch's default collate does), which saves a copy when the batch is sent."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=like.dtype)
    storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
    return like.new(storage).resize_(*shape)


def _pad_stack(name: str, values: list[torch.Tensor], pad_value: float) -> dict[str, Any]:
    first = values[0]
    for v in values[1:]:
        if v.dim() != first.dim() or v.dtype != first.dtype:
            raise ValueError(
                f"cannot collate field {name!r}: a sample has {tuple(v.shape)} {v.dtype}, "
                f"another {tuple(first.shape)} {first.dtype}; only sizes may differ"
            )
    shapes = [tuple(v.shape) for v in values]
    if all(s == shapes[0] for s in shapes):
        return {name: torch.stack(values, out=_new(first, (len(values), *shapes[0])))}
    max_shape = tuple(max(dims) for dims in zip(*shapes, strict=True))
    varying = [d for d in range(len(max_shape)) if any(s[d] != max_shape[d] for s in shapes)]
    mask_dims = max_shape[: varying[-1] + 1]
    out = _new(first, (len(values), *max_shape)).fill_(pad_value)
    mask = torch.zeros((len(values), *mask_dims), dtype=torch.bool)
    for i, (v, s) in enumerate(zip(values, shapes, strict=True)):
        out[(i, *(slice(0, n) for n in s))] = v
        mask[(i, *(slice(0, n) for n in s[: len(mask_dims)]))] = True
    return {name: out, name + MASK_SUFFIX: mask}


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float)) and not isinstance(value, np.generic)


def collate(batch: Sequence[dict[str, Any]], *, pad_value: float = 0) -> dict[str, Any]:
    """Collate sample dicts into one batch dict (see the module docstring).

    Use it as ``DataLoader(ds, batch_size=..., collate_fn=collate)``; for another padding
    value, ``functools.partial(collate, pad_value=-1)``. A single sample dict (what the
    DataLoader passes with ``batch_size=None``) is returned as it is.

    Examples
    --------
    >>> a = {"key": "a", "points": torch.ones(2, 3), "label": 1}
    >>> b = {"key": "b", "points": torch.ones(1, 3), "label": 0}
    >>> out = collate([a, b])
    >>> out["key"], out["points"].shape, out["points_mask"].tolist(), out["label"].tolist()
    (['a', 'b'], torch.Size([2, 2, 3]), [[True, True], [True, False]], [1, 0])
    """
    if isinstance(batch, Mapping):  # DataLoader(batch_size=None) hands over single samples
        return dict(batch)
    if not batch:
        return {}
    names = list(batch[0])
    for i, sample in enumerate(batch[1:], start=1):
        if set(sample) != set(names):
            raise ValueError(
                f"cannot collate: sample {i} has fields {sorted(sample)}, "
                f"sample 0 has {sorted(names)}"
            )
    out: dict[str, Any] = {}
    for name in names:
        values = [s[name] for s in batch]
        if all(isinstance(v, (torch.Tensor, np.ndarray)) for v in values):
            if all(isinstance(v, np.ndarray) and v.dtype.kind in "USOV" for v in values):
                out[name] = values
                continue
            tensors = [torch.as_tensor(v) for v in values]
            collated = _pad_stack(name, tensors, pad_value)
        elif all(_is_number(v) for v in values):
            collated = {name: torch.tensor(values)}
        else:
            collated = {name: values}
        for k, v in collated.items():
            if k != name and k in names:
                raise ValueError(f"cannot add mask {k!r}: the samples already have that field")
            out[k] = v
    return out

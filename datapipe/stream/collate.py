"""Batching samples whose arrays differ in size: padding plus a mask, decided by the field spec.

Which array fields get a mask is decided by their declared shape pattern
(:class:`~datapipe.fields.Field`), never by the batch at hand, so a batch always has the same
keys. A pattern is *fixed* when every dimension is an integer (``"64 64 3"``, ``"1"``, or the
empty pattern of a scalar) and *variable* when a dimension is a name (``N``, ``H``, ``W``) or
``*`` (any number of dimensions, each counted as variable). A field the specs do not name
counts as ``"*"``, the default shape of a ``Field``. For an array field ``F`` whose tensors
have the same number of dimensions and dtype:

- fixed: ``batch[F]`` is ``torch.stack`` of them, shape ``(B, *shape)``; there is never a
  mask, and samples of different shapes are a ``ValueError``;
- variable: every dimension is padded at its end (with ``pad_value``, default 0) to the
  largest size in the batch, ``batch[F]`` has shape ``(B, *max_shape)``, and there is always a
  bool ``batch[F + "_mask"]``, ``True`` over real data, of shape ``(B, *max_shape[:k + 1])``
  where ``k`` is the last dimension the pattern declares variable, even when every sample of
  the batch has the same shape (the mask is then all True). ``"N 3"`` gets a mask
  ``(B, N_max)``; ``"H W 3"`` a mask ``(B, H_max, W_max)``; ``"T H W 3"`` a mask
  ``(B, T_max, H_max, W_max)``; ``"*"`` over 2-d arrays a mask ``(B, *max_shape)``, over
  0-d arrays a mask ``(B,)`` (``k = -1``).
  ``mask[..., None]`` broadcasts over the trailing, fixed dimensions. A dimension the pattern
  declares fixed must have the same size in every sample (else ``ValueError``).

Without specs (``collate(batch)``, ``Collate()``) the rule is inferred from the batch: same
shapes are stacked without a mask, differing shapes are padded with a mask up to the last
dimension that differs *in this batch*, so whether ``F_mask`` exists depends on the batch.
The datasets' ``collate`` attribute (``DataLoader(ds, collate_fn=ds.collate)``) carries the
specs of their fields.

Python ints, floats and bools become one tensor per field (``torch.tensor`` of the list:
int64, float32... as torch infers, float if ints and floats mix). Strings (``key``) and
everything else (lists, dicts, bytes, numpy arrays of strings) become a plain list.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from datapipe.fields import Field

MASK_SUFFIX = "_mask"
_DIM = re.compile(r"^(\d+|\*|[A-Za-z_][A-Za-z0-9_]*)$")


def check_pattern(pattern: str) -> str:
    """A shape pattern, checked: integers, names and at most one ``*``, space-separated."""
    dims = pattern.split()
    if any(not _DIM.match(d) for d in dims) or dims.count("*") > 1:
        raise ValueError(
            f"shape pattern {pattern!r}: dimensions are integers, names or one '*', "
            "separated by spaces"
        )
    return " ".join(dims)


def is_variable(pattern: str) -> bool:
    """Whether a shape pattern lets sizes differ between samples.

    Examples
    --------
    >>> is_variable("N 3"), is_variable("*"), is_variable("64 64 3"), is_variable("")
    (True, True, False, False)
    """
    return any(not d.isdigit() for d in pattern.split())


def variable_dims(pattern: str, ndim: int) -> tuple[bool, ...] | None:
    """Per dimension of an ``ndim``-d array: declared variable? None: the pattern cannot match.

    Examples
    --------
    >>> variable_dims("H W 3", 3), variable_dims("* 3", 3), variable_dims("N 3", 1)
    ((True, True, False), (True, True, False), None)
    """
    dims = pattern.split()
    if "*" in dims:
        i = dims.index("*")
        n_star = ndim - (len(dims) - 1)
        if n_star < 0:
            return None
        dims = dims[:i] + ["*"] * n_star + dims[i + 1 :]
    if len(dims) != ndim:
        return None
    return tuple(not d.isdigit() for d in dims)


def _new(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker, allocated in shared memory directly
    (as torch's default collate does), which saves a copy when the batch is sent."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=like.dtype)
    storage = like._typed_storage()._new_shared(math.prod(shape), device=like.device)
    return like.new(storage).resize_(*shape)


def _pad_stack(
    name: str, values: list[torch.Tensor], pad_value: float, pattern: str | None
) -> dict[str, Any]:
    first = values[0]
    for v in values[1:]:
        if v.dim() != first.dim() or v.dtype != first.dtype:
            raise ValueError(
                f"cannot collate field {name!r}: a sample has {tuple(v.shape)} {v.dtype}, "
                f"another {tuple(first.shape)} {first.dtype}; only sizes may differ"
            )
    shapes = [tuple(v.shape) for v in values]
    max_shape = tuple(max(dims) for dims in zip(*shapes, strict=True))
    differ = [any(s[d] != max_shape[d] for s in shapes) for d in range(len(max_shape))]
    if pattern is None:  # inferred from this batch
        declared = tuple(differ) if any(differ) else None
    else:
        declared = variable_dims(pattern, first.dim())
        if declared is None:
            raise ValueError(
                f"cannot collate field {name!r}: declared ({pattern}), a sample has "
                f"shape {tuple(first.shape)}"
            )
        pairs = enumerate(zip(declared, differ, strict=True))
        fixed_differ = [d for d, (var, dif) in pairs if dif and not var]
        if fixed_differ:
            raise ValueError(
                f"cannot collate field {name!r}: declared ({pattern}), but dimension "
                f"{fixed_differ[0]} differs: {sorted(set(shapes))}"
            )
        if not is_variable(pattern):
            declared = None  # fixed: no mask
    if declared is None:
        return {name: torch.stack(values, out=_new(first, (len(values), *shapes[0])))}
    last = max((d for d, var in enumerate(declared) if var), default=-1)
    mask_dims = max_shape[: last + 1]
    out = _new(first, (len(values), *max_shape))
    if any(differ):
        out.fill_(pad_value)
    mask = torch.zeros((len(values), *mask_dims), dtype=torch.bool)
    for i, (v, s) in enumerate(zip(values, shapes, strict=True)):
        out[(i, *(slice(0, n) for n in s))] = v
        mask[(i, *(slice(0, n) for n in s[: len(mask_dims)]))] = True
    return {name: out, name + MASK_SUFFIX: mask}


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float)) and not isinstance(value, np.generic)


class Collate:
    """A ``collate_fn`` that pads and masks by declared shape (see the module docstring).

    ``fields`` maps a field name to its :class:`~datapipe.fields.Field` or shape pattern;
    arrays of fields it does not name count as ``"*"``. ``fields=None``: infer from each batch
    (the behaviour of :func:`collate`). Instances pickle, so DataLoader workers can use them.

    Examples
    --------
    >>> c = Collate({"points": "N 3", "label": Field("label", "int", "")})
    >>> a, b = {"points": torch.ones(2, 3), "label": 1}, {"points": torch.ones(2, 3), "label": 0}
    >>> out = c([a, b])
    >>> out["points"].shape, out["points_mask"].tolist(), out["label"].tolist()
    (torch.Size([2, 2, 3]), [[True, True], [True, True]], [1, 0])
    """

    def __init__(
        self, fields: Mapping[str, Field | str] | None = None, *, pad_value: float = 0
    ) -> None:
        self.pad_value = pad_value
        #: name -> shape pattern (None: infer from each batch)
        self.fields: dict[str, str] | None = None
        if fields is not None:
            self.fields = {
                name: check_pattern(f.shape if isinstance(f, Field) else str(f))
                for name, f in fields.items()
            }

    @property
    def variable(self) -> frozenset[str]:
        """The named fields whose pattern is variable (they always get a mask when arrays)."""
        return frozenset(n for n, p in (self.fields or {}).items() if is_variable(p))

    def pattern(self, name: str) -> str | None:
        """The shape pattern ``name`` is collated by (None: inferred from the batch)."""
        return None if self.fields is None else self.fields.get(name, "*")

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
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
                collated = _pad_stack(name, tensors, self.pad_value, self.pattern(name))
            elif all(_is_number(v) for v in values):
                collated = {name: torch.tensor(values)}
            else:
                collated = {name: values}
            for k, v in collated.items():
                if k != name and k in names:
                    raise ValueError(f"cannot add mask {k!r}: the samples already have that field")
                out[k] = v
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Collate):
            return NotImplemented
        return (self.fields, self.pad_value) == (other.fields, other.pad_value)

    def __repr__(self) -> str:
        return f"Collate({self.fields!r}, pad_value={self.pad_value!r})"


def collate(
    batch: Sequence[dict[str, Any]],
    *,
    pad_value: float = 0,
    fields: Mapping[str, Field | str] | None = None,
) -> dict[str, Any]:
    """Collate sample dicts into one batch dict (see the module docstring).

    Without ``fields`` a mask appears only when the batch's shapes differ; for training, give
    the specs (``fields={"points": "N 3"}``, or ``collate_fn=dataset.collate``), so that a
    variable field always has its mask. A single sample dict (what the DataLoader passes
    with ``batch_size=None``) is returned as it is.

    Examples
    --------
    >>> a = {"key": "a", "points": torch.ones(2, 3), "label": 1}
    >>> b = {"key": "b", "points": torch.ones(1, 3), "label": 0}
    >>> out = collate([a, b])
    >>> out["key"], out["points"].shape, out["points_mask"].tolist(), out["label"].tolist()
    (['a', 'b'], torch.Size([2, 2, 3]), [[True, True], [True, False]], [1, 0])
    >>> "points_mask" in collate([a, a]), "points_mask" in collate([a, a], fields={"points": "N 3"})
    (False, True)
    """
    return Collate(fields, pad_value=pad_value)(batch)


def merge_specs(specs: Mapping[str, Field | str], into: dict[str, str]) -> dict[str, str]:
    """Add ``specs`` to ``into`` (name -> pattern); a name declared differently becomes ``*``."""
    for name, f in specs.items():
        pattern = check_pattern(f.shape if isinstance(f, Field) else str(f))
        into[name] = pattern if into.get(name, pattern) == pattern else "*"
    return into

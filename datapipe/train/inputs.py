"""What the loop feeds a model: an :class:`Inputs` turns a loader batch into tensors.

An inputs object maps a batch (a collated dict, or a list of sample dicts) to ``(xs, y)``:
``xs`` a tuple of float tensors, one per model argument, whose last three dims are
``C H W`` (leading dims ``N``, or ``N S`` for segments of a clip), and ``y`` int64 labels.
Bad samples are left out and counted by reason (:data:`SKIP_REASONS`), never raised.
Augmentation (``train=True``) draws from torch's global RNG, which :func:`~datapipe.train.fit`
seeds and checkpoints, so an augmented run resumes bit for bit. ``state()`` is the JSON-able
part a checkpoint keeps (the reference shape bad shapes are judged against).

- :class:`PixelInputs`: uint8 ``H W C`` images; random crop and horizontal flip.
- :class:`DctInputs`: ``jpeg.dct`` coefficients in the channels layout (``Hb Wb K``), luma and
  chroma as two inputs; block-aligned crops and a horizontal flip done on the coefficients
  (:func:`flip_dct`), so the pixels are never reconstructed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

#: the reasons a sample is left out of a batch
SKIP_REASONS = ("missing_field", "missing_label", "not_finite", "wrong_shape")

Batch = Mapping[str, Any] | Sequence[Mapping[str, Any]]


class Inputs(Protocol):
    """Turns loader batches into model inputs (see the module docstring)."""

    label: str

    def __call__(
        self, batch: Batch, *, train: bool, skipped: Counter
    ) -> tuple[tuple[Tensor, ...], Tensor]: ...

    def state(self) -> dict[str, Any]: ...

    def load_state(self, state: Mapping[str, Any]) -> None: ...

    def describe(self) -> dict[str, Any]: ...


def unpad(value: Tensor, mask: Tensor) -> Tensor:
    """A sample's array without the collate's padding: cut, along each dim the ``mask`` has,
    to the extent where the mask is True (the collate pads every dim at its end)."""
    index = []
    for dim in range(mask.dim()):
        others = [d for d in range(mask.dim()) if d != dim]
        live = mask.any(dim=others) if others else mask
        index.append(slice(0, int(live.sum())))
    return value[tuple(index)]


def batch_samples(batch: Batch, fields: Sequence[str], label: str) -> Iterator[list[Any]]:
    """Per sample ``[value of each field (None: absent)..., label]`` from a collated dict
    (arrays the collate padded, with a ``FIELD_mask``, are cut back to their own size) or
    from a list of sample dicts."""
    if isinstance(batch, Mapping):
        n = len(batch.get("key", ())) or len(batch.get(label, ()))
        columns = [batch.get(f) for f in (*fields, label)]
        masks = [batch.get(f + "_mask") for f in fields]
        for i in range(n):
            row = [None if c is None else c[i] for c in columns]
            for j, mask in enumerate(masks):
                if isinstance(row[j], Tensor) and mask is not None and not bool(mask[i].all()):
                    row[j] = unpad(row[j], mask[i])
            yield row
    else:
        for sample in batch:
            yield [sample.get(f) for f in (*fields, label)]


def label_value(y: Any) -> int | None:
    """The class index of a label, or None when it is missing, not an int or negative."""
    value = y.item() if isinstance(y, Tensor) else y
    if isinstance(value, (np.integer,)):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return None
    return value


def accepted(fitted: object | None, y: Any, skipped: Counter) -> int | None:
    """The class of a sample whose tensors fit the batch (``fitted`` not None) and whose
    label is a class index; else None, counted as ``wrong_shape`` or ``missing_label``."""
    if fitted is None:
        skipped["wrong_shape"] += 1
        return None
    cls = label_value(y)
    if cls is None:
        skipped["missing_label"] += 1
    return cls


def _as_tensor(value: Any) -> Tensor | None:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(value)
    return None


def _check(value: Any, dims: tuple[int, ...], skipped: Counter) -> Tensor | None:
    """``value`` as a tensor of one of ``dims`` dims with finite values, or None (counted)."""
    if value is None:
        skipped["missing_field"] += 1
        return None
    t = _as_tensor(value)
    if t is None or t.dim() not in dims:
        skipped["wrong_shape"] += 1
        return None
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        skipped["not_finite"] += 1
        return None
    return t


def _offsets(room_y: int, room_x: int, train: bool, step: int = 1) -> tuple[int, int]:
    """A crop's top-left corner: random multiples of ``step`` in training, centred in eval."""
    if not train:
        return (room_y // 2) // step * step, (room_x // 2) // step * step
    oy = int(torch.randint(room_y // step + 1, ())) * step
    ox = int(torch.randint(room_x // step + 1, ())) * step
    return oy, ox


def _coin(train: bool, enabled: bool) -> bool:
    """A fair coin from torch's RNG when augmenting (drawn even when disabled: no)."""
    return bool(train and enabled and float(torch.rand(())) < 0.5)


class PixelInputs:
    """uint8 (or float) ``H W C`` images -> one float ``N C H W`` input in [0, 1]. A clip
    field of one frame (``1 H W C``, e.g. the centre frame ``keyframes.tsn`` picks) counts as
    its frame; ``H W`` as one channel.

    Without ``crop`` every image must have the first good image's shape (with
    ``per_batch=True``: the first good image *of its batch*, for sizes that change between
    epochs). With ``crop`` (a side in pixels) images at least that large are cropped: at
    random in training, centred in evaluation. ``flip``: a horizontal flip with probability
    1/2 in training.
    """

    def __init__(
        self, field: str = "image", label: str = "label_id", crop: int | None = None,
        flip: bool = False, per_batch: bool = False,
    ) -> None:  # fmt: skip
        self.field, self.label, self.crop, self.flip = field, label, crop, flip
        self.per_batch = per_batch
        self.shape: tuple[int, ...] | None = None

    def __call__(
        self, batch: Batch, *, train: bool, skipped: Counter
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        images: list[Tensor] = []
        labels: list[int] = []
        if self.per_batch and self.crop is None:
            self.shape = None
        for value, y in batch_samples(batch, [self.field], self.label):
            image = _check(value, (2, 3, 4), skipped)
            if image is None:
                continue
            if image.dim() == 4:  # one frame of a clip field (1 H W C), e.g. a centre frame
                if image.shape[0] != 1:
                    skipped["wrong_shape"] += 1
                    continue
                image = image[0]
            if image.dim() == 2:
                image = image[:, :, None]
            image = self._fit(image, train)
            cls = accepted(image, y, skipped)
            if image is None or cls is None:
                continue
            images.append(image)
            labels.append(cls)
        if not images:
            return (torch.empty(0),), torch.empty(0, dtype=torch.int64)
        x = torch.stack(images).permute(0, 3, 1, 2)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (x.contiguous(),), torch.tensor(labels, dtype=torch.int64)

    def _fit(self, image: Tensor, train: bool) -> Tensor | None:
        """The image cropped (and flipped) to the common shape, or None if it cannot be."""
        h, w, c = image.shape
        if self.crop is None:
            if self.shape is None:
                self.shape = (h, w, c)
            return image if tuple(image.shape) == self.shape else None
        if self.shape is None:
            self.shape = (self.crop, self.crop, c)
        if h < self.crop or w < self.crop or c != self.shape[2]:
            return None
        oy, ox = _offsets(h - self.crop, w - self.crop, train)
        out = image[oy : oy + self.crop, ox : ox + self.crop]
        return out.flip(1) if _coin(train, self.flip) else out

    def state(self) -> dict[str, Any]:
        return {"shape": list(self.shape or ())}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.shape = tuple(state["shape"]) or None

    def describe(self) -> dict[str, Any]:
        shape = list(self.shape or ())
        chw = [shape[2], shape[0], shape[1]] if shape else []
        return {"kind": "pixels", "fields": [self.field], "shapes": [chw], "crop": self.crop,
                "per_batch": self.per_batch}  # fmt: skip

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], label: str = "label_id") -> PixelInputs:
        """Rebuilt from :meth:`describe` (with its shapes: new images must match them)."""
        inputs = cls(spec["fields"][0], label, crop=spec.get("crop"))
        # prediction takes every image at the trained (final) size, even after a schedule
        if spec.get("shapes") and spec["shapes"][0]:
            c, h, w = spec["shapes"][0]
            inputs.shape = (h, w, c)
        return inputs


@cache
def _zigzag_columns() -> tuple[int, ...]:
    cells = sorted(
        ((r, c) for r in range(8) for c in range(8)),
        key=lambda rc: (rc[0] + rc[1], rc[0] if (rc[0] + rc[1]) % 2 else -rc[0]),
    )
    return tuple(c for _, c in cells)


def zigzag_columns() -> list[int]:
    """The horizontal frequency (block column) of each of the 64 zigzag positions of JPEG:
    anti-diagonals ``row + col = d`` in turn, odd ones walked down, even ones up."""
    return list(_zigzag_columns())


def odd_horizontal(k: int) -> Tensor:
    """bool (k,): the zigzag channels whose horizontal frequency is odd (their sign flips
    when the pixels of a block are mirrored left to right: cos((2(7-x)+1)u pi/16) =
    (-1)^u cos((2x+1)u pi/16))."""
    return torch.tensor([c % 2 == 1 for c in _zigzag_columns()[:k]])


def flip_dct(coefs: Tensor) -> Tensor:
    """Mirror an image left to right in the DCT domain: ``(..., Hb, Wb, K)`` zigzag channels
    -> the block columns in reverse order, odd horizontal frequencies negated. Exact for
    images whose width is a multiple of the block grid's (8 px per luma block)."""
    sign = torch.where(odd_horizontal(coefs.shape[-1]), -1, 1).to(coefs.dtype)
    return coefs.flip(-2) * sign


class DctInputs:
    """``jpeg.dct`` output (``layout: channels``) -> ``(luma N K Hb Wb, chroma N 2K' Hc Wc)``.

    Chroma may be on its own grid (4:2:0: half the luma grid) or on the luma grid. With
    ``crop`` (a side in luma blocks) the coefficient grids are cropped at block-aligned
    offsets (multiples of the chroma ratio, so luma and chroma stay registered): random in
    training, centred in evaluation. ``flip``: :func:`flip_dct` with probability 1/2 in
    training. A grayscale JPEG (0 x 0 chroma) gets zero chroma, the DCT of a neutral grey.
    ``std_floor``: the smallest spread a channel's normalisation divides by, 1 (a level, or
    a step of at least 1 once dequantized): high frequencies are 0 in nearly every block.
    """

    std_floor = 1.0

    def __init__(
        self, fields: Sequence[str] = ("dct_y", "dct_cb", "dct_cr"), label: str = "label_id",
        crop: int | None = None, flip: bool = False,
    ) -> None:  # fmt: skip
        if len(fields) != 3:
            raise ValueError(f"DctInputs needs 3 fields (Y, Cb, Cr); got {list(fields)}")
        self.fields, self.label, self.crop, self.flip = list(fields), label, crop, flip
        self.shape: tuple[int, ...] | None = None  # (Hb, Wb, K, Hc, Wc, Kc) after the crop

    def __call__(
        self, batch: Batch, *, train: bool, skipped: Counter
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        lumas: list[Tensor] = []
        chromas: list[Tensor] = []
        labels: list[int] = []
        for *values, y in batch_samples(batch, self.fields, self.label):
            parts = []
            for value in values:  # one reason per sample: the first that applies
                part = _check(value, (3,), skipped)
                if part is None:
                    break
                parts.append(part)
            if len(parts) < len(values):
                continue
            fitted = self._fit(*parts, train=train)  # type: ignore[misc]
            cls = accepted(fitted, y, skipped)
            if fitted is None or cls is None:
                continue
            lumas.append(fitted[0])
            chromas.append(fitted[1])
            labels.append(cls)
        if not lumas:
            return (torch.empty(0), torch.empty(0)), torch.empty(0, dtype=torch.int64)
        luma = torch.stack(lumas).permute(0, 3, 1, 2).float().contiguous()
        chroma = torch.stack(chromas).permute(0, 3, 1, 2).float().contiguous()
        return (luma, chroma), torch.tensor(labels, dtype=torch.int64)

    def _fit(
        self, y: Tensor, cb: Tensor, cr: Tensor, *, train: bool
    ) -> tuple[Tensor, Tensor] | None:
        hb, wb = y.shape[:2]
        if cb.shape[:2] == (0, 0) and cr.shape[:2] == (0, 0):  # grayscale
            if self.shape is None:
                return None  # the chroma shape is not known yet
            hc, wc, kc = self.shape[3:]
            ry, rx = self.shape[0] // hc, self.shape[1] // wc
            cb = cr = torch.zeros((hb // ry, wb // rx, kc), dtype=y.dtype)
        if cb.shape != cr.shape or cb.shape[0] == 0 or cb.shape[1] == 0:
            return None
        ry, rx = -(-hb // cb.shape[0]), -(-wb // cb.shape[1])
        if ry not in (1, 2) or rx not in (1, 2):
            return None
        chroma = torch.cat([cb, cr], dim=-1)
        if self.crop is not None:
            c = self.crop
            if hb < c or wb < c or c % ry or c % rx:
                return None
            oy, ox = _offsets(hb - c, wb - c, train, step=max(ry, rx))
            y = y[oy : oy + c, ox : ox + c]
            chroma = chroma[oy // ry : (oy + c) // ry, ox // rx : (ox + c) // rx]
        shape = (*y.shape, *chroma.shape)
        if self.shape is None:
            self.shape = shape
        if shape != self.shape:
            return None
        if _coin(train, self.flip):
            y, chroma = flip_dct(y), torch.cat([flip_dct(p) for p in chroma.chunk(2, -1)], -1)
        return y, chroma

    def state(self) -> dict[str, Any]:
        return {"shape": list(self.shape or ())}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.shape = tuple(state["shape"]) or None

    def describe(self) -> dict[str, Any]:
        s = self.shape
        shapes = [[s[2], s[0], s[1]], [s[5], s[3], s[4]]] if s else []
        return {"kind": "dct", "fields": self.fields, "shapes": shapes, "crop": self.crop}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], label: str = "label_id") -> DctInputs:
        """Rebuilt from :meth:`describe` (with its shapes: new samples must match them)."""
        inputs = cls(spec["fields"], label, crop=spec.get("crop"))
        if spec.get("shapes"):
            (k, hb, wb), (kc, hc, wc) = spec["shapes"]
            inputs.shape = (hb, wb, k, hc, wc, kc)
        return inputs


#: ``describe()["kind"]`` -> the inputs class that rebuilds from ``describe()`` (see
#: :func:`inputs_from_spec`); other kinds register here
INPUT_KINDS: dict[str, type] = {"pixels": PixelInputs, "dct": DctInputs}


def inputs_from_spec(spec: Mapping[str, Any], label: str = "label_id") -> Inputs:
    """The inputs object a model was trained with, from its ``model.json`` ``inputs`` entry
    (``describe()`` plus the ``shapes`` seen), ready to prepare new samples for prediction."""
    import datapipe.train.point_inputs  # (registers the "points" kind)
    import datapipe.train.video_inputs  # noqa: F401  (registers the "video" kind)

    kind = spec.get("kind")
    if kind not in INPUT_KINDS:
        raise ValueError(f"unknown inputs kind {kind!r}; known: {sorted(INPUT_KINDS)}")
    cls = INPUT_KINDS[kind]
    return cls.from_spec(spec, label)  # type: ignore[attr-defined,no-any-return]

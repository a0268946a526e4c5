"""Point clouds for the training loop: :class:`PointInputs` (``train.points``).

A sample's ``(N, 3)`` points become one float input ``(B, 3, N, 1)``: the coordinates are
the channels and sit at dim -3, where the loop's per-channel normalisation
(:func:`~datapipe.train.data.channel_stats`, :func:`~datapipe.train.data.normalize`) looks
for them, so x, y and z are each centred and scaled over the training points.
:class:`~datapipe.models.PointNet` squeezes the trailing 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from datapipe.train.inputs import INPUT_KINDS, Batch, _check, accepted, batch_samples


def rotate_z(points: Tensor, angle: float) -> Tensor:
    """``(N, 3)`` points rotated by ``angle`` (radians) about the up (z) axis."""
    c, s = math.cos(angle), math.sin(angle)
    r = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=points.dtype)
    return points @ r.T


class PointInputs:
    """``(N, 3)`` float points -> one float ``(B, 3, N, 1)`` input (see the module docstring).

    Without ``points`` every cloud must have as many points as the first good one (a
    sampler upstream, ``points.fps`` / ``points.random``, makes them equal). With ``points``
    a cloud of at least that many is cut to it: a random subset (torch's RNG) in training,
    the first ``points`` in evaluation (a sampler's order: FPS's first points cover the
    cloud). A cloud of fewer points, not ``N 3``, or not finite is left out and counted.

    Augmentation, in training only, per cloud: ``rotate`` a rotation about z by a uniform
    random angle; ``jitter`` Gaussian noise of that standard deviation on every coordinate;
    ``scale`` ``(lo, hi)`` one uniform random factor for the cloud.
    """

    def __init__(
        self, field: str = "points", label: str = "label_id", points: int | None = None,
        rotate: bool = False, jitter: float = 0.0, scale: Sequence[float] | None = None,
    ) -> None:  # fmt: skip
        if points is not None and points < 1:
            raise ValueError(f"points must be >= 1; got {points}")
        if scale is not None and (len(scale) != 2 or not 0 < scale[0] <= scale[1]):
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi; got {scale!r}")
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0; got {jitter}")
        self.field, self.label, self.points = field, label, points
        self.rotate, self.jitter = rotate, float(jitter)
        self.scale = None if scale is None else (float(scale[0]), float(scale[1]))
        self.n: int | None = points  # the points every cloud of a batch has

    def __call__(
        self, batch: Batch, *, train: bool, skipped: Counter
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        clouds: list[Tensor] = []
        labels: list[int] = []
        for value, y in batch_samples(batch, [self.field], self.label):
            pts = _check(value, (2,), skipped)
            if pts is None:
                continue
            if pts.shape[1] != 3 or not pts.is_floating_point() or pts.shape[0] == 0:
                skipped["wrong_shape"] += 1
                continue
            pts = self._fit(pts.float(), train)
            cls = accepted(pts, y, skipped)
            if pts is None or cls is None:
                continue
            clouds.append(self._augment(pts) if train else pts)
            labels.append(cls)
        if not clouds:
            return (torch.empty(0),), torch.empty(0, dtype=torch.int64)
        x = torch.stack(clouds).permute(0, 2, 1).unsqueeze(-1)
        return (x.contiguous(),), torch.tensor(labels, dtype=torch.int64)

    def _fit(self, pts: Tensor, train: bool) -> Tensor | None:
        """The cloud cut to the common number of points, or None if it cannot be."""
        n = pts.shape[0]
        if self.points is None:
            if self.n is None:
                self.n = n
            return pts if n == self.n else None
        if n < self.points:
            return None
        if not train:
            return pts[: self.points]
        return pts[torch.randperm(n)[: self.points]]

    def _augment(self, pts: Tensor) -> Tensor:
        if self.rotate:
            pts = rotate_z(pts, float(torch.rand(())) * 2 * math.pi)
        if self.scale is not None:
            lo, hi = self.scale
            pts = pts * (lo + (hi - lo) * float(torch.rand(())))
        if self.jitter > 0:
            pts = pts + self.jitter * torch.randn(pts.shape)
        return pts

    def state(self) -> dict[str, Any]:
        return {"n": self.n}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.n = state.get("n")

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "points",
            "fields": [self.field],
            "shapes": [[3, self.n, 1]] if self.n else [],
            "points": self.points,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], label: str = "label_id") -> PointInputs:
        """Rebuilt from :meth:`describe` (with its shapes: new clouds must match them)."""
        inputs = cls(spec["fields"][0], label, points=spec.get("points"))
        if spec.get("shapes") and spec["shapes"][0]:
            inputs.n = int(spec["shapes"][0][1])
        return inputs


INPUT_KINDS["points"] = PointInputs

"""``train.points``: PointNet (Qi et al. 2017) on a points field of the committed samples."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field as PField

from datapipe.fields import Field
from datapipe.stages.train.base import Trainer, TrainParams

if TYPE_CHECKING:
    from torch import nn

    from datapipe.train.inputs import Inputs


class TrainPointsParams(TrainParams):
    field: str = PField("points", description="Points field to train on: N 3 float.")
    points: int | None = PField(
        None,
        ge=1,
        le=1_000_000,
        description="Points per cloud: a random subset in training, the first in validation "
        "(None: every cloud must have the same N, e.g. after points.fps).",
    )
    width: int = PField(
        64, ge=4, le=256, description="First layer's channels (64: the paper's sizes)."
    )
    tnet: bool = PField(False, description="A learned 3x3 input transform (T-Net).")
    rotate: bool = PField(False, description="Random rotations about z (up) in training.")
    jitter: float = PField(
        0.0, ge=0, le=1, description="Std of Gaussian noise on every coordinate in training."
    )
    scale: tuple[float, float] | None = PField(
        None, description="(lo, hi): a uniform random scale per cloud in training."
    )


class TrainPoints(Trainer):
    """Train :class:`~datapipe.models.PointNet` on ``(N, 3)`` point clouds.

    Each cloud enters as ``3 N`` channels; x, y and z are normalised with their own mean
    and spread over the training points. Clouds of fewer than ``points`` points (or, without
    ``points``, of another N than the first), not ``N 3`` or not finite are left out and
    counted. Otherwise as ``train.image``: the same split, checkpoints, reuse and report.
    """

    name = "train.points"
    description = "Train PointNet on a points field (N 3) of the committed samples."
    Params = TrainPointsParams
    EXAMPLE_PARAMS = {"epochs": 2, "width": 8}

    def consumes(self) -> tuple[Field, ...]:
        return (
            Field(self.params.field, "float32|float64", "N 3", "points"),
            Field(self.params.label, "int", "", "class index"),
        )

    def read_fields(self) -> list[str]:
        return [self.params.field]

    def make_inputs(self) -> Inputs:
        from datapipe.train.point_inputs import PointInputs

        p = self.params
        return PointInputs(
            p.field, p.label, points=p.points, rotate=p.rotate, jitter=p.jitter, scale=p.scale
        )

    def make_model(self, num_classes: int, shapes: list[list[int]]) -> nn.Module:
        from datapipe.models import pointnet

        p = self.params
        return pointnet(
            num_classes=num_classes, width=p.width, tnet=p.tnet, in_channels=shapes[0][0]
        )

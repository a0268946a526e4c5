"""``train.image``: a small ResNet on a pixel field of the committed samples."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field as PField

from datapipe.fields import Field
from datapipe.stages.train.base import Trainer, TrainParams

if TYPE_CHECKING:
    from torch import nn

    from datapipe.train.inputs import Inputs


class TrainImageParams(TrainParams):
    field: str = PField(
        "image", description="Pixel field to train on: H W C (uint8, or float), or 1 H W C."
    )
    stages: Literal[3, 4] = PField(
        3, description="3: CIFAR-style ResNet; 4: the 4-stage twin of train.dct (stride-2 stem)."
    )
    depth: Literal[8, 10, 14, 18, 20, 26] = PField(
        8, description="ResNet depth: 8/14/18/20 with 3 stages, 10/18/26 with 4."
    )
    width: int = PField(16, ge=4, le=128, description="Channels of the first stage.")
    crop: int | None = PField(
        None, ge=8, le=4096, description="Random crop side (centre crop in validation)."
    )
    flip: bool = PField(False, description="Random horizontal flips in training.")


class TrainImage(Trainer):
    """Train a ResNet (CPU-sized) on a pixel field: a deterministic key-hash validation split,
    a checkpoint per epoch (``checkpoints/FINGERPRINT/``: a killed run resumes), and reuse when
    nothing it depends on (samples, params, code version) changed."""

    name = "train.image"
    description = "Train a small ResNet on a pixel field of the committed samples."
    Params = TrainImageParams
    EXAMPLE_PARAMS = {"epochs": 2, "width": 8}

    def consumes(self) -> tuple[Field, ...]:
        return (
            Field(self.params.field, "uint8|float32", "* H W C", "pixels (or one frame)"),
            Field(self.params.label, "int", "", "class index"),
        )

    def read_fields(self) -> list[str]:
        return [self.params.field]

    def make_inputs(self) -> Inputs:
        from datapipe.train.inputs import PixelInputs

        p = self.params
        return PixelInputs(
            p.field, p.label, crop=p.crop, flip=p.flip, per_batch=self.epoch_dependent
        )

    def make_model(self, num_classes: int, shapes: list[list[int]]) -> nn.Module:
        from datapipe.models import resnet

        p = self.params
        return resnet(
            depth=p.depth,
            width=p.width,
            num_classes=num_classes,
            in_channels=shapes[0][0],
            stages=p.stages,
        )

"""``train.dct``: a ResNet on JPEG DCT coefficients (Gueguen et al. 2018), the pixel twin's
trunk from stride 8 on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field as PField

from datapipe.fields import Field
from datapipe.stages.train.base import Trainer, TrainParams

if TYPE_CHECKING:
    from torch import nn

    from datapipe.train.inputs import Inputs


class TrainDctParams(TrainParams):
    fields: list[str] = PField(
        ["dct_y", "dct_cb", "dct_cr"],
        min_length=3,
        max_length=3,
        description="Y, Cb, Cr coefficient fields (jpeg.dct with layout: channels).",
    )
    depth: Literal[10, 18, 26] = PField(
        10, description="Depth of the 4-stage pixel twin (train.image stages: 4)."
    )
    width: int = PField(16, ge=4, le=128, description="Channels of the twin's first stage.")
    crop: int | None = PField(
        None, ge=1, le=512, description="Random crop side in luma blocks (8 px), block-aligned."
    )
    flip: bool = PField(
        False, description="Random horizontal flips done on the coefficients (no decode)."
    )


class TrainDct(Trainer):
    """Train :class:`~datapipe.models.DctResNet` on ``jpeg.dct`` coefficients.

    The luma blocks enter at the pixel twin's stride-8 stage, the chroma joins by late
    concatenation one stage later, and every input channel (one per zigzag frequency) is
    normalised with its own mean and spread: the DC channel's dwarfs the rest. Augmentation
    stays in the DCT domain: block-aligned crops and mirror flips (block columns reversed,
    odd horizontal frequencies negated). ``jpeg.dct``'s ``keep`` sets how many frequencies
    enter (DCTNet keeps 24 of 192); its ``dequantize`` whether they are quantized levels or
    values. Otherwise as ``train.image``: the same split, checkpoints, reuse and report.
    """

    name = "train.dct"
    description = "Train a ResNet on JPEG DCT coefficients (jpeg.dct, layout: channels)."
    Params = TrainDctParams
    EXAMPLE_PARAMS = {"epochs": 2, "width": 8}

    def consumes(self) -> tuple[Field, ...]:
        y, cb, cr = self.params.fields
        return (
            Field(y, "float32|int16", "Hb Wb K", "luma DCT coefficients, zigzag channels"),
            Field(cb, "float32|int16", "Hc Wc Kc", "Cb DCT coefficients"),
            Field(cr, "float32|int16", "Hc Wc Kc", "Cr DCT coefficients"),
            Field(self.params.label, "int", "", "class index"),
        )

    def read_fields(self) -> list[str]:
        return list(self.params.fields)

    def make_inputs(self) -> Inputs:
        from datapipe.train.inputs import DctInputs

        p = self.params
        return DctInputs(p.fields, p.label, crop=p.crop, flip=p.flip)

    def make_model(self, num_classes: int, shapes: list[list[int]]) -> nn.Module:
        from datapipe.models import dct_resnet

        p = self.params
        return dct_resnet(
            depth=p.depth,
            width=p.width,
            num_classes=num_classes,
            luma_channels=shapes[0][0],
            chroma_channels=shapes[1][0],
        )

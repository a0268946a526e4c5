"""``train.video``: CoViAR (Wu et al., CVPR 2018) on ``video.coviar`` output, and its RGB
baseline (TSN on decoded frames), one ``streams`` param apart."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field as PField
from pydantic import field_validator

from datapipe.fields import Field
from datapipe.stages.train.base import Trainer, TrainParams

if TYPE_CHECKING:
    from torch import nn

    from datapipe.train.inputs import Inputs
    from datapipe.train.video_inputs import SegmentInputs

Stream = Literal["iframe", "mv", "residual", "rgb"]
#: fusion weights unless told otherwise (datapipe.models.coviar.DEFAULT_WEIGHTS; a plain prior)
FUSION = {"iframe": 1.0, "mv": 1.0, "residual": 0.5, "rgb": 1.0}


class TrainVideoParams(TrainParams):
    streams: list[Stream] = PField(
        ["iframe", "mv", "residual"],
        min_length=1,
        max_length=4,
        description="Streams, one ResNet each: iframe, mv, residual (video.coviar), rgb (frames).",
    )
    segments: int = PField(3, ge=1, le=64, description="TSN segments per clip, one frame each.")
    size: int | None = PField(
        32, ge=8, le=1024, description="Resize frames to this square side (area); None: keep."
    )
    depth: Literal[8, 14, 18, 20] = PField(8, description="Depth of each 3-stage ResNet.")
    width: int = PField(16, ge=4, le=128, description="Channels of each ResNet's first stage.")
    fusion: dict[Stream, float] = PField(
        dict(FUSION), description="Weight of each stream's segment-averaged logits in the sum."
    )
    iframes_field: str = PField("coviar_iframes", description="I-frame of each GOP (G H W 3).")
    gop_field: str = PField("coviar_gop", description="GOP of each kept frame (T).")
    mv_field: str = PField("coviar_mv", description="Accumulated motion (T H W 2).")
    residual_field: str = PField("coviar_residual", description="Accumulated residual (T H W 3).")
    rgb_field: str = PField(
        "keyframes", description="Decoded RGB frames (K H W 3), e.g. keyframes.* decode: true."
    )

    @field_validator("streams")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"streams must be distinct, got {value}")
        return value

    @field_validator("fusion")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        if any(v < 0 for v in value.values()):
            raise ValueError(f"fusion weights must be >= 0, got {value}")
        return value


class TrainVideo(Trainer):
    """Train :class:`~datapipe.models.CoviarNet`: per stream a small ResNet on ``segments``
    frames sampled TSN-style (a random frame per equal chunk in training, the chunk's middle
    in validation), logits averaged over segments, then summed with the ``fusion`` weights.
    The ``iframe`` stream reads the I-frame of the sampled frame's GOP, ``mv`` and
    ``residual`` the motion and residual accumulated back to it (int8 residuals doubled),
    ``rgb`` a decoded frame. All streams train jointly on the fused logits' loss (the paper
    trains them apart and fuses scores afterwards). Otherwise as ``train.image``: the same
    split, checkpoints, reuse and report."""

    name = "train.video"
    description = "Train CoViAR (I-frame / motion / residual streams) or TSN on RGB frames."
    Params = TrainVideoParams
    EXAMPLE_PARAMS = {"epochs": 2, "width": 4, "segments": 2, "size": 16}

    def _roles(self) -> dict[str, str]:
        p = self.params
        return {
            "iframes": p.iframes_field,
            "gop": p.gop_field,
            "mv": p.mv_field,
            "residual": p.residual_field,
            "rgb": p.rgb_field,
        }

    def consumes(self) -> tuple[Field, ...]:
        f, streams = self._roles(), self.params.streams
        fields: list[Field] = []
        if "iframe" in streams:
            fields += [
                Field(f["iframes"], "uint8", "G H W 3", "I-frame of each GOP, RGB"),
                Field(f["gop"], "int64", "T", "GOP of each kept frame"),
            ]
        if "mv" in streams:
            fields.append(Field(f["mv"], "int16", "T H W 2", "motion accumulated to the I-frame"))
        if "residual" in streams:
            fields.append(
                Field(f["residual"], "int8|int16", "T H W 3", "residual accumulated, int8 halved")
            )
        if "rgb" in streams:
            fields.append(Field(f["rgb"], "uint8", "K H W 3", "decoded frames, RGB"))
        return (*fields, Field(self.params.label, "int", "", "class index"))

    def read_fields(self) -> list[str]:
        return self._segments().read_fields()

    def make_inputs(self) -> Inputs:
        return self._segments()

    def _segments(self) -> SegmentInputs:
        from datapipe.train.video_inputs import SegmentInputs

        p = self.params
        return SegmentInputs(p.streams, p.segments, p.size, p.label, self._roles())

    def make_model(self, num_classes: int, shapes: list[list[int]]) -> nn.Module:
        from datapipe.models import coviar_net

        p = self.params
        weights = [p.fusion.get(s, FUSION[s]) for s in p.streams]
        return coviar_net(p.streams, num_classes, p.depth, p.width, weights)

"""What a trainer's ``compress:`` block accepts (see :mod:`datapipe.stages.train.compress`).

The steps run in the survey's order: the structural ones (``decompose``, then ``prune``), one
fine-tuning (learning from a ``distill`` teacher too, when given), then ``quantize`` (with
``mode: qat`` after a fine-tuning of its own with the int8 rounding simulated).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field as PField
from pydantic import model_validator

from datapipe.stage import Params
from datapipe.stages.train.distill import DistillParams


def _epochs(what: str, default: int = 3, least: int = 0) -> Any:
    return PField(default, ge=least, le=10_000, description=f"Epochs of fine-tuning {what}.")


def _lr() -> Any:
    return PField(None, gt=0, description="Peak learning rate of it (None: the trainer's).")


class PruneParams(Params):
    """Structured channel pruning, then fine-tuning (Torch-Pruning)."""

    amount: float = PField(
        0.5, gt=0, lt=1, description="Share of each layer's output channels removed."
    )
    method: Literal["l1", "l2", "group_norm"] = PField(
        "l1", description="Channel ranking: weight L1 / L2 norm, or the coupled group's norm."
    )
    finetune_epochs: int = _epochs("after pruning (0: none)")
    lr: float | None = _lr()


class DecomposeParams(Params):
    """Low-rank factorisation of the k x k convolutions, then fine-tuning."""

    method: Literal["tucker", "cp"] = PField(
        "tucker", description="Tucker-2 on the channel modes (Kim et al.) or CP (Lebedev et al.)."
    )
    rank: float = PField(
        0.5, gt=0, le=1, description="Share of each channel mode kept (see decompose_convs)."
    )
    finetune_epochs: int = _epochs("after the factorisation (0: none)")
    lr: float | None = _lr()


class QuantizeParams(Params):
    """int8 inference with ONNX Runtime (:mod:`datapipe.train.int8`)."""

    mode: Literal["ptq", "qat"] = PField(
        "ptq",
        description="ptq: calibrate the trained model; qat: fine-tune it with the int8 "
        "rounding simulated first (quantization-aware training), then calibrate.",
    )
    calibration_batches: int = PField(
        8, ge=1, le=10_000, description="Training batches that calibrate activation ranges."
    )
    per_channel: bool = PField(True, description="One weight scale per output channel.")
    reduce_range: bool = PField(
        True, description="7-bit weights (saturation-free on CPUs without VNNI)."
    )
    finetune_epochs: int = _epochs("with the rounding simulated (qat only)", 2, 1)
    lr: float | None = PField(
        None, gt=0, description="Peak learning rate of the QAT (None: a tenth of the trainer's)."
    )

    @model_validator(mode="after")
    def _qat_only(self) -> QuantizeParams:
        given = {"finetune_epochs", "lr"} & self.model_fields_set
        if self.mode == "ptq" and given:
            raise ValueError(f"{', '.join(sorted(given))}: only mode qat fine-tunes")
        return self


class CompressParams(Params):
    """What to make of the trained model (see :mod:`datapipe.stages.train.compress`)."""

    decompose: DecomposeParams | None = PField(
        None, description="Factorise the k x k convolutions, then fine-tune."
    )
    prune: PruneParams | None = PField(None, description="Remove channels, then fine-tune.")
    distill: DistillParams | None = PField(
        None, description="Fine-tune on another trainer node's soft outputs too."
    )
    quantize: QuantizeParams | None = PField(
        None, description="int8 weights and activations (an ONNX Runtime model)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> CompressParams:
        steps = (self.decompose, self.prune, self.distill, self.quantize)
        if all(step is None for step in steps):
            raise ValueError("an empty compress block: give decompose, prune, distill or quantize")
        tuning = {
            name: sorted({"finetune_epochs", "lr"} & step.model_fields_set)
            for name, step in self._tuning_steps()
        }
        set_by = [f"{name}.{k}" for name, keys in tuning.items() for k in keys]
        if len({name for name, keys in tuning.items() if keys}) > 1:
            raise ValueError(
                f"{', '.join(set_by)}: the structural steps share one fine-tuning; give its "
                f"epochs and lr once (they come from the first of {', '.join(tuning)})"
            )
        if self.distill is not None and self.finetune()[0] == 0:
            raise ValueError("distill needs a fine-tuning to teach in: finetune_epochs is 0")
        return self

    def _tuning_steps(self) -> list[tuple[str, DecomposeParams | PruneParams | DistillParams]]:
        steps = (("decompose", self.decompose), ("prune", self.prune), ("distill", self.distill))
        return [(name, step) for name, step in steps if step is not None]

    def finetune(self) -> tuple[int, float | None]:
        """The fine-tuning after the structural steps: epochs and peak learning rate (None:
        the trainer's), from the first of decompose, prune and distill given (one that sets
        them, where one does)."""
        steps = self._tuning_steps()
        if not steps:
            return 0, None
        chosen = next(
            (s for _, s in steps if {"finetune_epochs", "lr"} & s.model_fields_set), steps[0][1]
        )
        return chosen.finetune_epochs, chosen.lr

    def describe(self) -> str:
        """A short name of the variant, e.g. ``prune 50% l1 + int8 ptq``."""
        parts = []
        if self.decompose is not None:
            parts.append(f"{self.decompose.method} rank {self.decompose.rank:g}")
        if self.prune is not None:
            parts.append(f"prune {self.prune.amount:.0%} {self.prune.method}")
        if self.distill is not None:
            parts.append(f"distill {self.distill.teacher}")
        if self.quantize is not None:
            parts.append(f"int8 {self.quantize.mode}")
        return " + ".join(parts)

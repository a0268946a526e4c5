"""A trainer's saved model back in memory, from its folder and ``model.json``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from datapipe.models import build_model
from datapipe.train.data import normalize
from datapipe.train.inputs import Inputs, inputs_from_spec

#: what rebuilding a saved model raises when its folder or ``model.json`` is not usable
LOAD_ERRORS = (ValueError, TypeError, KeyError, RuntimeError, OSError)
#: the error class of a record whose fields the model cannot take (else the skip reason)
WRONG_SHAPE = "wrong_shape"


def load_model(folder: Path, spec: dict[str, Any]) -> nn.Module:
    """The model a trainer's (or its compressed variant's) folder holds, in eval mode: the
    state_dict of ``model.pt`` in the spec's model (its ``decomposed`` convolutions
    factorised, then shrunk to a pruned model's ``resized`` sizes; ``weights_only``), or the
    int8 ONNX Runtime model ``spec["file"]`` names."""
    file = spec.get("file", "model.pt")
    if file.endswith(".onnx"):
        from datapipe.train.int8 import OnnxModule

        return OnnxModule(folder / file).eval()
    model = build_model(spec["model"])
    state = torch.load(folder / file, weights_only=True, map_location="cpu")
    if spec.get("decomposed"):  # factorised convolutions: sequences of smaller ones
        from datapipe.train.decompose import rebuild_decomposed

        model = rebuild_decomposed(model, spec["decomposed"])
    if spec.get("resized"):  # a pruned model: its layers are smaller than the spec's
        from datapipe.train.prune import rebuild_pruned

        model = rebuild_pruned(model, spec["resized"], state)
    else:
        model.load_state_dict(state)
    return model.eval()


class TrainedModel:
    """A saved model with the preparation of its inputs (``model.json``): what prediction and
    a distillation teacher run. Raises one of :data:`LOAD_ERRORS` when it cannot be rebuilt."""

    def __init__(self, model_dir: Path, spec: dict[str, Any]) -> None:
        self.label = spec.get("label") or "label_id"
        self.inputs: Inputs = inputs_from_spec(spec["inputs"], self.label)
        self.model: nn.Module = load_model(model_dir, spec)
        self.fields = list(spec["inputs"].get("fields") or [])
        self.mean = list(spec["normalize"].get("mean") or [])
        self.std = list(spec["normalize"].get("std") or [])
        self.classes = [str(c) for c in spec["classes"]]

    def prepare(self, record: dict[str, Any]) -> tuple[Tensor, ...] | tuple[str, str]:
        """One sample's inputs (leading dim 1), or ``(error class, message)``."""
        skipped: Counter = Counter()
        xs, y = self.inputs([{**record, self.label: 0}], train=False, skipped=skipped)
        if len(y):
            return xs
        reason = next(iter(skipped), WRONG_SHAPE)
        found = {
            f: tuple(record[f].shape) if hasattr(record.get(f), "shape") else None
            for f in self.fields
        }
        shapes = self.inputs.describe().get("shapes")
        return reason, f"the model cannot take this sample ({reason}): {found}; it takes {shapes}"

    def logits(self, samples: list[tuple[Tensor, ...]]) -> Tensor:
        """The model's outputs (N, classes) for prepared samples, normalised as in training."""
        xs, at = [], 0
        for part in zip(*samples, strict=True):
            x = torch.cat(part)
            c = x.shape[-3]
            xs.append(normalize(x, self.mean[at : at + c], self.std[at : at + c]))
            at += c
        with torch.inference_mode():
            return self.model(*xs).float()

    def classify(self, samples: list[tuple[Tensor, ...]]) -> Tensor:
        """Class probabilities (N, classes) of prepared samples."""
        return torch.softmax(self.logits(samples), dim=1)

    def name(self, index: int) -> str:
        """The class name of ``index`` (the index itself past the known classes)."""
        return self.classes[index] if index < len(self.classes) else str(index)

"""A trainer's saved model back in memory, from its folder and ``model.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from datapipe.models import build_model


def load_model(folder: Path, spec: dict[str, Any]) -> nn.Module:
    """The model a trainer's (or its compressed variant's) folder holds, in eval mode: the
    state_dict of ``model.pt`` in the spec's model (shrunk to a pruned model's ``resized``
    sizes; ``weights_only``), or the int8 ONNX Runtime model ``spec["file"]`` names."""
    file = spec.get("file", "model.pt")
    if file.endswith(".onnx"):
        from datapipe.train.int8 import OnnxModule

        return OnnxModule(folder / file).eval()
    model = build_model(spec["model"])
    state = torch.load(folder / file, weights_only=True, map_location="cpu")
    if spec.get("resized"):  # a pruned model: its layers are smaller than the spec's
        from datapipe.train.prune import rebuild_pruned

        model = rebuild_pruned(model, spec["resized"], state)
    else:
        model.load_state_dict(state)
    return model.eval()

"""Export a trained model for serving without datapipe: ONNX (``model.onnx``) or a
``torch.export`` program (``model.pt2``), both with a dynamic batch dimension."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from datapipe.models.measure import zero_inputs

FORMATS = {"onnx": "model.onnx", "pt2": "model.pt2"}


def export_model(
    model: nn.Module, input_shape: Sequence[int] | Sequence[Sequence[int]], out: str | Path,
    fmt: str,
) -> Path:  # fmt: skip
    """Write ``out/model.onnx`` or ``out/model.pt2`` for inputs of ``input_shape`` (one
    sample's shape, or one per input); returns the path. ONNX needs the ``export`` extra
    (onnx, onnxscript)."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {sorted(FORMATS)}; got {fmt!r}")
    path = Path(out) / FORMATS[fmt]
    was_training = model.training
    model.eval()
    args = tuple(zero_inputs(input_shape, 2))
    dynamic = _batch_dims(model, len(args))
    try:
        if fmt == "pt2":
            program = torch.export.export(model, args, dynamic_shapes=dynamic)
            torch.export.save(program, path)
        else:
            names = [f"input_{i}" for i in range(len(args))]
            torch.onnx.export(
                model, args, path, input_names=names, output_names=["logits"],
                dynamic_shapes=dynamic, dynamo=True, external_data=False,
            )  # fmt: skip
    finally:
        model.train(was_training)
    return path


def _batch_dims(model: nn.Module, n: int) -> tuple[Any, ...]:
    """``dynamic_shapes`` with a dynamic batch dimension on each of ``n`` inputs, shaped as
    ``forward``'s signature: one spec per argument, or one tuple of them for ``*xs``."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    per_input = tuple({0: batch} for _ in range(n))
    kinds = [p.kind for p in inspect.signature(model.forward).parameters.values()]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return (per_input,)
    return per_input

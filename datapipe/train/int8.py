"""int8 inference on CPU: post-training static quantization of an exported ONNX model with
ONNX Runtime, and the int8 model as a torch module for evaluation, timing and prediction.

Why ONNX Runtime: in torch 2.13 the eager/FX ``torch.ao.quantization`` flows are
deprecated, and the maintained PT2E flow (torchao) leaves a graph that is slower than fp32
until it is lowered for one fixed batch size and does not save as int8; ONNX Runtime's
``quantize_static`` writes a QDQ model with int8 weights (about a quarter of the fp32 bytes)
that its CPU kernels run in int8, at any batch size, and that loads without pickle.

:func:`quantize_onnx` pre-processes the fp32 model (shape inference), calibrates activation
ranges on normalised batches (min/max), and quantizes weights per output channel, with
``reduce_range`` (7-bit weights: CPUs without VNNI saturate int8 x uint8 products
otherwise). :func:`unquantized_layers` lists the convolutions and matrix products left in
fp32: an int8 model with one of them is refused rather than reported as int8.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

#: the ops whose weights must be int8 in a quantized model
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


class Int8Error(ValueError):
    """The model cannot be quantized as asked (names the layer or the reason)."""


def quantize_onnx(
    fp32_onnx: str | Path,
    out: str | Path,
    calibration: Iterable[Sequence[Tensor]],
    *,
    per_channel: bool = True,
    reduce_range: bool = True,
) -> Path:
    """Write the int8 (QDQ) version of ``fp32_onnx`` to ``out``, calibrated on
    ``calibration`` (batches of the model's normalised inputs, in input order)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [[np.ascontiguousarray(x.numpy(), np.float32) for x in xs] for xs in calibration]
    if not batches:
        raise Int8Error("no calibration batch: the training split gave no usable sample")
    names = input_names(fp32_onnx)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            xs = next(self.it, None)
            return None if xs is None else dict(zip(names, xs, strict=True))

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX's own shape inference: ONNX Runtime's symbolic one gives up on some graphs (a
        # T-Net's bmm) and then leaves a temporary model in the working directory
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    left = unquantized_layers(out)
    if left:
        raise Int8Error(
            f"{len(left)} layer(s) have no int8 kernel and would stay fp32: {', '.join(left)}"
        )
    return out


def input_names(path: str | Path) -> list[str]:
    """The graph input names of an ONNX model, in order."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def unquantized_layers(path: str | Path) -> list[str]:
    """Names of the weighted nodes (:data:`WEIGHTED_OPS`) of an ONNX model that do not take
    both their input and their weight from a ``DequantizeLinear``: the layers left in fp32
    (in a QDQ model, ONNX Runtime runs a node whose inputs are all dequantized in int8)."""
    import onnx

    graph = onnx.load(str(path)).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return [
        n.name or n.output[0]
        for n in graph.node
        if n.op_type in WEIGHTED_OPS and not all(i in dequantized for i in n.input[:2])
    ]


class OnnxModule(nn.Module):
    """An ONNX Runtime session as a torch module (``forward(*inputs) -> logits``), so that
    evaluation, timing and prediction treat an int8 model like any other. CPU, ``threads``
    intra-op threads, no spinning (spinning threads starve torch's beside them)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def forward(self, *xs: Tensor) -> Tensor:
        feed = {
            name: np.ascontiguousarray(x.detach().numpy(), np.float32)
            for name, x in zip(self.names, xs, strict=True)
        }
        return torch.from_numpy(self.session.run(None, feed)[0])

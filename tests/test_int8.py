"""int8 with ONNX Runtime (``datapipe.train.int8``): every weighted layer really runs in
int8, the model is about a quarter of the bytes, and it computes what the fp32 model does
within quantization error."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from datapipe.models import build_model
from datapipe.train.export import export_model
from datapipe.train.int8 import Int8Error, OnnxModule, quantize_onnx, unquantized_layers

warnings.filterwarnings("ignore")

CASES = {
    "resnet": ({"arch": "resnet", "depth": 8, "width": 8, "num_classes": 5}, [[3, 16, 16]]),
    # the T-Net's transform multiplies two activations (a MatMul without weights)
    "pointnet": ({"arch": "pointnet", "num_classes": 5, "width": 8, "tnet": True}, [[3, 64]]),
    "dct_resnet": (
        {"arch": "dct_resnet", "num_classes": 5, "width": 8, "luma_channels": 8},
        [[8, 4, 4], [128, 2, 2]],
    ),
    # forward(*xs): one input per stream, segments folded into the batch
    "coviar": (
        {"arch": "coviar", "streams": ["iframe", "mv"], "num_classes": 5, "width": 16},
        [[3, 3, 16, 16], [3, 2, 16, 16]],
    ),
}


def _fp32(arch: str, tmp: Path) -> tuple[torch.nn.Module, list[list[int]], Path]:
    spec, shapes = CASES[arch]
    torch.manual_seed(0)
    model = build_model(spec).eval()
    shape = shapes[0] if len(shapes) == 1 else shapes
    return model, shapes, export_model(model, shape, tmp, "onnx")


def _batches(shapes: list[list[int]], n: int, seed: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(16, *s, generator=gen) for s in shapes] for _ in range(n)]


@pytest.mark.parametrize("arch", sorted(CASES))
def test_int8_runs_every_weighted_layer_in_int8_and_stays_close(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    model, shapes, fp32_onnx = _fp32(arch, tmp_path)
    weighted = [n for n in onnx.load(str(fp32_onnx)).graph.node if n.op_type in ("Conv", "Gemm")]
    # the oracle for the check itself: in the fp32 graph every conv and linear is fp32
    assert len(unquantized_layers(fp32_onnx)) >= len(weighted) > 0
    int8 = quantize_onnx(fp32_onnx, tmp_path / "int8.onnx", _batches(shapes, 4, 0))
    assert unquantized_layers(int8) == []
    assert list(cwd.iterdir()) == []  # no temporary model left in the working directory
    graph = onnx.load(str(int8)).graph
    dtype = {i.name: i.data_type for i in graph.initializer}
    producer = {n.output[0]: n for n in graph.node}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            stored = producer[node.input[1]].input[0]  # DequantizeLinear(int8 weight)
            assert dtype[stored] == onnx.TensorProto.INT8, node.name
    # int8 weights: a quarter of the bytes, plus scales, zero points and the graph
    assert int8.stat().st_size < 0.55 * fp32_onnx.stat().st_size
    xs = _batches(shapes, 1, 1)[0]
    with torch.no_grad():
        want = model(*xs)
        got = OnnxModule(int8, threads=1)(*xs)
    # 8-bit weights and activations: an error of a few percent of the logits' range
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) < 0.1 * scale
    assert float((got.argmax(1) == want.argmax(1)).float().mean()) >= 0.75


def test_a_layer_left_in_fp32_is_named_and_refused(tmp_path: Path):
    _, shapes, fp32_onnx = _fp32("resnet", tmp_path)
    int8 = quantize_onnx(fp32_onnx, tmp_path / "int8.onnx", _batches(shapes, 2, 0))
    # undo the quantization of the first conv's weight: feed it the fp32 tensor again
    fp32_graph = onnx.load(str(fp32_onnx)).graph
    first = next(n for n in fp32_graph.node if n.op_type == "Conv")
    weight = next(i for i in fp32_graph.initializer if i.name == first.input[1])
    weight.name = "fp32_weight"
    model = onnx.load(str(int8))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    model.graph.initializer.append(weight)
    conv.input[1] = weight.name
    onnx.save(model, str(tmp_path / "mixed.onnx"))
    assert unquantized_layers(tmp_path / "mixed.onnx") == [conv.name]
    with pytest.raises(Int8Error, match="no calibration batch"):
        quantize_onnx(fp32_onnx, tmp_path / "none.onnx", [])


def test_the_onnx_module_takes_any_batch_size(tmp_path: Path):
    model, shapes, fp32_onnx = _fp32("resnet", tmp_path)
    runner = OnnxModule(fp32_onnx, threads=1)
    for n in (1, 7):
        x = torch.randn(n, *shapes[0])
        with torch.no_grad():
            np.testing.assert_allclose(runner(x).numpy(), model(x).numpy(), atol=1e-4)

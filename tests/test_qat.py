"""Quantization-aware training (``datapipe.train.qat``): the fake quantization rounds as ONNX
Runtime's static quantization does (hand computations, ORT's own stored int8 model), the
gradient passes straight through, removal leaves the plain fp32 model, and fine-tuning with
it gives a better ORT int8 model than fine-tuning without."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from datapipe.models import build_model
from datapipe.train.export import export_model
from datapipe.train.int8 import OnnxModule, quantize_onnx
from datapipe.train.qat import (
    ACT_MAX,
    ACT_MIN,
    QatError,
    activation_qparams,
    fake_quant_weight,
    prepare_qat,
)

warnings.filterwarnings("ignore")
TINY = np.finfo(np.float32).tiny


@pytest.fixture(autouse=True)
def _deterministic() -> Iterator[None]:
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(was)


def _np_fake_quant(w: np.ndarray, per_channel: bool, qmin: int, qmax: int) -> np.ndarray:
    """Symmetric int8 by hand: scale 2 max|w| / (qmax - qmin) (float64, kept in float32),
    round half to even, clamp, back to float."""
    absmax = np.abs(w).max(axis=1, keepdims=True) if per_channel else np.abs(w).max()
    scale = (np.float64(absmax) * 2 / (qmax - qmin)).astype(np.float32)
    scale = np.where(scale < TINY, np.float32(1), scale)
    return np.clip(np.round(w / scale), qmin, qmax).astype(np.float32) * scale


def _np_act_fake_quant(x: np.ndarray, low: float, high: float) -> np.ndarray:
    rmin, rmax = min(low, 0.0), max(high, 0.0)
    scale = (rmax - rmin) / 255  # float64, as ORT
    zero = np.round(-rmin / scale)
    s32 = np.float32(scale)
    return ((np.clip(np.round(x / s32) + zero, 0, 255) - zero) * s32).astype(np.float32)


W = np.array([[64.0, 0.5, 1.5, -2.5], [0.3, -0.77, 0.1234, 0.05], [0.0, 0.0, 0.0, 0.0]], np.float32)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("reduce_range", [True, False])
def test_weights_round_as_by_hand(per_channel: bool, reduce_range: bool):
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
    prepare_qat(layer, per_channel=per_channel, reduce_range=reduce_range)
    got = layer.weight.detach().numpy()  # the parametrized (fake-quantized) weight
    qmin, qmax = (-64, 64) if reduce_range else (-127, 127)
    np.testing.assert_array_equal(got, _np_fake_quant(W, per_channel, qmin, qmax))
    if per_channel and reduce_range:
        # scale 64 / 64 = 1: ties round to even, and 64 itself is on ORT's reduced grid
        np.testing.assert_array_equal(got[0], [64.0, 0.0, 2.0, -2.0])
        np.testing.assert_array_equal(got[2], 0.0)  # an all-zero channel stays zero


def test_the_input_range_is_a_running_min_max_frozen_in_eval():
    layer = nn.Linear(3, 1)
    prepare_qat(layer, momentum=0.1)
    x0 = torch.tensor([[1.0, -4.0, 2.0]])
    with torch.no_grad():
        want = nn.functional.linear(x0, layer.weight, layer.bias)
        assert torch.equal(layer.eval()(x0), want)  # no range yet: the input passes as is
    layer.train()
    x1 = torch.tensor([[0.5, 1.0, 3.0], [2.0, 1.5, 0.7]])  # all positive: 0 joins the range
    layer(x1)
    assert (float(getattr(layer, ACT_MIN)), float(getattr(layer, ACT_MAX))) == (0.0, 3.0)
    x2 = torch.tensor([[-2.5, 1.0, 0.5], [0.25, -1.0, 0.0]])
    layer(x2)
    low, high = 0.9 * 0.0 + 0.1 * -2.5, 0.9 * 3.0 + 0.1 * 1.0
    np.testing.assert_allclose(float(getattr(layer, ACT_MIN)), low, rtol=1e-6)
    np.testing.assert_allclose(float(getattr(layer, ACT_MAX)), high, rtol=1e-6)
    layer.eval()
    x3 = torch.tensor([[-5.0, 10.0, 0.1]])
    with torch.no_grad():
        out = layer(x3).numpy()
    np.testing.assert_allclose(float(getattr(layer, ACT_MIN)), low, rtol=1e-6)  # unmoved
    np.testing.assert_allclose(float(getattr(layer, ACT_MAX)), high, rtol=1e-6)
    low, high = float(getattr(layer, ACT_MIN)), float(getattr(layer, ACT_MAX))
    xq = _np_act_fake_quant(x3.numpy(), low, high)  # zero point round(20.9) = 21
    w = layer.weight.detach().numpy()
    np.testing.assert_allclose(out, xq @ w.T + layer.bias.detach().numpy(), atol=1e-6)


def test_the_gradient_passes_straight_through_inside_the_range():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)  # on the grid (scale 1/64): the fake-quantized weight is 1
    handle = prepare_qat(layer)
    with torch.no_grad():
        layer(torch.tensor([[0.0, 2.55, 1.0, 1.0]]))  # range [0, 2.55]: scale 0.01, zero 0
    layer.eval()
    x = torch.tensor([[-1.0, 0.5, 1.0, 3.0]], requires_grad=True)
    layer(x).sum().backward()
    # clamped below 0 and above 2.55: no gradient there; 1 (the weight) inside
    np.testing.assert_array_equal(x.grad.numpy(), [[0.0, 1.0, 1.0, 0.0]])
    original = handle.layers[""].parametrizations.weight.original
    # the weight's gradient reaches the fp32 parameter unchanged: the quantized input
    np.testing.assert_allclose(original.grad.numpy(), [[0.0, 0.5, 1.0, 2.55]], rtol=1e-6)


def _net(seed: int = 0, wide: bool = True) -> nn.Sequential:
    """Two convolutions and a linear layer; ``wide``: heavy-tailed weights (a few large ones
    per channel), where 8-bit weights visibly move the output."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 5),
    )  # fmt: skip
    if wide:
        with torch.no_grad():
            for p in net.parameters():
                if p.dim() > 1:
                    p.mul_(torch.randn_like(p).exp())
    return net.eval()


def _batches(n: int, seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 3, 12, 12, generator=gen) for _ in range(n)]


def _sgd_steps(model: nn.Module, xs: list[Tensor], opt: torch.optim.Optimizer) -> None:
    model.train()
    for x in xs:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


@pytest.mark.parametrize(
    "arch",
    [
        ({"arch": "resnet", "depth": 8, "width": 8, "num_classes": 5}, [3, 16, 16]),
        ({"arch": "pointnet", "num_classes": 5, "width": 8, "tnet": True}, [3, 64]),
        None,
    ],
    ids=["resnet", "pointnet", "convnet"],
)
def test_removal_leaves_the_plain_fp32_model(arch):
    if arch is None:
        model, shape = _net(), [3, 12, 12]
    else:
        torch.manual_seed(0)
        model, shape = build_model(arch[0]), arch[1]
    before = [(k, v.shape) for k, v in model.state_dict().items()]
    classes = {name: type(m) for name, m in model.named_modules()}
    handle = prepare_qat(model)
    params = {n: layer.parametrizations.weight.original for n, layer in handle.layers.items()}
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(4, *shape, generator=gen) for _ in range(2)]
    _sgd_steps(model, xs, torch.optim.SGD(model.parameters(), lr=0.01))
    handle.remove()
    assert [(k, v.shape) for k, v in model.state_dict().items()] == before
    assert {name: type(m) for name, m in model.named_modules()} == classes
    for name, layer in model.named_modules():
        assert not layer._forward_pre_hooks and not hasattr(layer, ACT_MIN), name
        if name in params:
            # the very parameter that was trained, fp32, not rounded to the int8 grid
            assert layer.weight is params[name]
            fq = fake_quant_weight(layer.weight, per_channel=True, reduce_range=True)
            assert not torch.equal(layer.weight, fq), name
    plain = build_model(arch[0]) if arch else _net(1)
    plain.load_state_dict(model.state_dict())
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(model(xs[0]), plain(xs[0]))
    handle.remove()  # idempotent


def test_a_checkpoint_resumes_exactly_in_a_freshly_prepared_model():
    xs = _batches(3, 2)
    a = _net()
    prepare_qat(a)
    opt_a = torch.optim.SGD(a.parameters(), lr=1e-3, momentum=0.9)
    _sgd_steps(a, xs[:2], opt_a)
    buf = io.BytesIO()  # a checkpoint file, as the trainers write it
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    assert f"0.{ACT_MIN}" in saved["model"]
    b = _net(5)
    prepare_qat(b)
    opt_b = torch.optim.SGD(b.parameters(), lr=1e-3, momentum=0.9)
    b.load_state_dict(saved["model"])
    opt_b.load_state_dict(saved["opt"])
    _sgd_steps(a, xs[2:], opt_a)
    _sgd_steps(b, xs[2:], opt_b)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    a.eval()
    b.eval()
    with torch.no_grad():
        assert torch.equal(a(xs[0]), b(xs[0]))


def test_refusals():
    with pytest.raises(QatError, match="momentum"):
        prepare_qat(_net(), momentum=0.0)
    with pytest.raises(QatError, match="no convolution or linear"):
        prepare_qat(nn.Sequential(nn.ReLU()))
    model = _net()
    prepare_qat(model)
    with pytest.raises(QatError, match="already"):
        prepare_qat(model)


@pytest.fixture(scope="module")
def conv_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Tensor]]:
    """The fp32 ONNX of :func:`_net` and its calibration batches."""
    path = export_model(_net(), [3, 12, 12], tmp_path_factory.mktemp("fp32"), "onnx")
    return path, _batches(4, 100)


def _input_ranges(
    model: nn.Module, batches: list[Tensor]
) -> dict[nn.Module, tuple[Tensor, Tensor]]:
    """The min and max of each conv and linear layer's input over ``batches``, in order."""
    ranges: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def see(layer: nn.Module, args: tuple[Tensor, ...]) -> None:
        low, high = ranges.get(layer, (args[0].max(), args[0].min()))
        ranges[layer] = (torch.minimum(low, args[0].min()), torch.maximum(high, args[0].max()))

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_pre_hook(see) for m in layers]
    with torch.no_grad():
        for x in batches:
            model(x)
    for hook in hooks:
        hook.remove()
    return {m: ranges[m] for m in layers}


def _producer(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: n for n in graph.node for out in n.output}


def test_weights_and_input_qparams_equal_those_ort_stores(
    conv_onnx: tuple[Path, list[Tensor]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    fp32_onnx, calibration = conv_onnx
    model = _net()
    ranges = _input_ranges(model, calibration)
    layers = list(ranges)
    for per_channel in (True, False):
        for reduce_range in (True, False):
            path = quantize_onnx(
                fp32_onnx, tmp_path / "int8.onnx", [[x] for x in calibration],
                per_channel=per_channel, reduce_range=reduce_range,
            )  # fmt: skip
            graph = onnx.load(str(path)).graph
            init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
            made = _producer(graph)
            nodes = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
            assert len(nodes) == len(layers)
            for node, layer in zip(nodes, layers, strict=True):
                # ORT's int8 weight, dequantized, is the fake-quantized weight, bit for bit
                q, scale, zero = (init[i] for i in made[node.input[1]].input)
                assert q.dtype == np.int8 and not zero.any()
                scale = scale.reshape(-1, *[1] * (q.ndim - 1)) if per_channel else scale
                want = fake_quant_weight(
                    layer.weight, per_channel=per_channel, reduce_range=reduce_range
                )
                np.testing.assert_array_equal(q.astype(np.float32) * scale, want.detach())
                # ORT's input scale and zero point are those of the calibrated min/max (to an
                # ulp after the first layer: ORT's convolutions sum in another order)
                quantized = made[made[node.input[0]].input[0]]
                _, s_ort, z_ort = (init.get(i) for i in quantized.input)
                s, z = activation_qparams(*ranges[layer])
                assert z_ort.dtype == np.uint8
                assert int(z_ort) == int(z), node.name
                assert float(s_ort) == pytest.approx(float(s), rel=1e-6), node.name
                if layer is layers[0]:
                    assert float(s_ort) == float(s)


def test_the_fake_quantized_model_tracks_the_ort_int8_model(
    conv_onnx: tuple[Path, list[Tensor]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    fp32_onnx, calibration = conv_onnx
    model = _net()
    ranges = _input_ranges(model, calibration)  # what ORT calibrates: the fp32 model's
    x = _batches(2, 7)[1]
    path = quantize_onnx(fp32_onnx, tmp_path / "int8.onnx", [[c] for c in calibration])
    graph = onnx.load(str(path)).graph
    with torch.no_grad():
        int8 = OnnxModule(path, threads=1)(x)
        fp32 = model(x)
        handle = prepare_qat(model)
        model.train()(torch.cat(calibration))  # one batch: the ranges are its min/max
        fake = model.eval()(x)
        # the rest: calibration (the fake-quantized model's ranges are not quite the fp32
        # model's) and ORT's rounding of the logits to uint8, which the model does not do
        for layer, (low, high) in ranges.items():
            getattr(layer, ACT_MIN).copy_(low.clamp(max=0))
            getattr(layer, ACT_MAX).copy_(high.clamp(min=0))
        _, scale, zero = _producer(graph)["logits"].input
        init = {i.name: torch.from_numpy(numpy_helper.to_array(i)) for i in graph.initializer}
        logits = torch.fake_quantize_per_tensor_affine(
            model(x), init[scale], init[zero].int(), 0, 255
        )
    handle.remove()
    with torch.no_grad():
        assert torch.equal(model(x), fp32)
    plain, sim, rest = (float((y - int8).abs().mean()) for y in (fp32, fake, logits))
    # measured 0.063 (fp32), 0.029 (fake-quantized), 0.0024 (ORT's ranges, logits rounded)
    assert sim < 0.6 * plain, (sim, plain)
    assert rest < 0.1 * plain, (rest, plain)
    assert list(tmp_path.iterdir()) == [tmp_path / "int8.onnx"]


def _int8_mse(model: nn.Module, x: Tensor, test_x: Tensor, test_y: Tensor, tmp: Path) -> float:
    tmp.mkdir()
    fp32_onnx = export_model(model, [x.shape[1]], tmp, "onnx")
    path = quantize_onnx(fp32_onnx, tmp / "int8.onnx", [[x]])
    with torch.no_grad():
        return float(nn.functional.mse_loss(OnnxModule(path, threads=1)(test_x), test_y))


def test_fine_tuning_with_qat_gives_a_better_int8_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    trained = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():  # one large weight per hidden unit: coarse 7-bit grids for the rest
        trained[0].weight[torch.arange(32), torch.randint(0, 16, (32,))] = 4 * torch.sign(
            torch.randn(32)
        )
    # inputs off zero: rounding errors add up to offsets; the labels: the model plus noise
    x, test_x = 3 + torch.randn(256, 16), 3 + torch.randn(256, 16)
    with torch.no_grad():
        y = trained(x) + 0.1 * torch.randn(256, 4)
        test_y = trained(test_x) + 0.1 * torch.randn(256, 4)
    losses = {}
    for qat in (False, True):
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        model.load_state_dict(trained.state_dict())
        handle = prepare_qat(model) if qat else None
        opt = torch.optim.SGD(model.parameters(), lr=3e-5, momentum=0.9)
        model.train()
        for _ in range(50):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        if handle is not None:
            handle.remove()
        model.eval()
        losses[qat] = _int8_mse(model, x, test_x, test_y, tmp_path / str(qat))
    with torch.no_grad():
        fp32 = float(nn.functional.mse_loss(trained(test_x), test_y))
    # measured: fp32 0.0101 (the noise), int8 without QAT 0.0418, with QAT 0.0120
    assert losses[False] > 2 * fp32  # post-training quantization visibly hurts
    assert losses[True] < 0.6 * losses[False], losses

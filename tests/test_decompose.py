"""Low-rank factorisation of convolutions (``datapipe.train.decompose``): the factorised
layers compute what their factors say, full-rank Tucker is exact, reduced-rank Tucker is the
truncated HOSVD, the cost falls as the formula says, and a factorised model comes back from a
plain ``state_dict`` loaded with weights_only."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datapipe.models import build_model, count_macs, count_params
from datapipe.train.decompose import (
    DecomposeError,
    decomposable,
    decompose_convs,
    rebuild_decomposed,
)

warnings.filterwarnings("ignore", module="torch_pruning")

SPEC = {"arch": "resnet", "depth": 8, "width": 8, "num_classes": 4}
SHAPE = (3, 16, 16)
#: the convs a depth-8 ResNet factorises: the stem and two 3x3 convs per block
RESNET_CONVS = {"stem.0"} | {f"trunk.stages.{i}.0.conv{j}" for i in range(3) for j in (1, 2)}

# (in, out, kernel, keyword arguments): strides, paddings and dilations differ per axis
# where they can, so an axis mixed up in a factorised layer shows
CONVS = {
    "stride2-pad1-bias": (4, 6, 3, {"stride": 2, "padding": 1, "bias": True}),
    "no-bias-pad0": (5, 3, 3, {"bias": False}),
    "asymmetric": (3, 5, (3, 5), {"stride": (2, 1), "padding": (2, 1), "dilation": (2, 1)}),
    "same-reflect": (4, 4, 3, {"padding": "same", "padding_mode": "reflect", "dilation": 2}),
}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _conv(key: str, seed: int = 0) -> nn.Conv2d:
    c_in, c_out, k, kwargs = CONVS[key]
    torch.manual_seed(seed)
    return nn.Conv2d(c_in, c_out, k, **kwargs)


def _decompose_one(conv: nn.Conv2d, method: str, rank: float) -> tuple[nn.Sequential, dict]:
    net = nn.Sequential(conv)
    layers = decompose_convs(net, method, rank)  # type: ignore[arg-type]
    assert list(layers) == ["0"]
    assert isinstance(net[0], nn.Sequential)
    return net[0], layers["0"]


def _conv_with(conv: nn.Conv2d, kernel: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    """``conv`` computed with another kernel (its stride, padding, dilation, bias, padding
    mode), in float64: the oracle of a factorised layer."""
    weight = torch.from_numpy(np.ascontiguousarray(kernel)).double()
    bias = None if conv.bias is None else conv.bias.detach().double()
    if conv.padding_mode != "zeros":
        pad = conv._reversed_padding_repeated_twice
        x = F.pad(x, pad, mode=conv.padding_mode)
        padding = 0
    else:
        padding = conv.padding
    return F.conv2d(x.double(), weight, bias, conv.stride, padding, conv.dilation)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("key", sorted(CONVS))
def test_full_rank_tucker_is_the_conv(key: str):
    conv = _conv(key)
    x = torch.randn(2, conv.in_channels, 11, 13)
    want = conv(x).detach()
    seq, desc = _decompose_one(conv, "tucker", 1.0)
    assert desc["method"] == "tucker" and desc["ranks"] == [conv.in_channels, conv.out_channels]
    assert [type(m) for m in seq] == [nn.Conv2d] * 3
    got = seq(x).detach()
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert desc["error"] < 1e-6


@pytest.mark.parametrize("key", ["stride2-pad1-bias", "asymmetric"])
def test_reduced_rank_tucker_is_the_truncated_hosvd(key: str):
    conv = _conv(key)
    w = conv.weight.detach().double().numpy()
    c_out, c_in = w.shape[:2]
    r_in, r_out = int(np.floor(0.5 * c_in + 0.5)), int(np.floor(0.5 * c_out + 0.5))  # half up
    # the oracle: project each channel mode on its leading left singular vectors
    u_out = np.linalg.svd(w.reshape(c_out, -1))[0][:, :r_out]
    u_in = np.linalg.svd(w.transpose(1, 0, 2, 3).reshape(c_in, -1))[0][:, :r_in]
    approx = np.einsum("oihw,op,iq->pqhw", w, u_out @ u_out.T, u_in @ u_in.T)
    x = torch.randn(2, c_in, 12, 10)
    want = _conv_with(conv, approx, x)
    original = conv(x).detach()
    seq, desc = _decompose_one(conv, "tucker", 0.5)
    assert desc["ranks"] == [r_in, r_out]
    got = seq(x).detach()
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=0)
    error = _relative(got, original)
    assert error == pytest.approx(_relative(want, original), abs=1e-4)
    assert 0.05 < error < 1  # a real truncation
    kernel_error = np.linalg.norm(approx - w) / np.linalg.norm(w)
    assert desc["error"] == pytest.approx(kernel_error, abs=1e-5)


def _cp_factors(seq: nn.Sequential) -> list[np.ndarray]:
    """The CP factors (out, in, height, width modes; each ``(size, R)``) read back from the
    weights of the four factorised layers."""
    first, vertical, horizontal, last = (m.weight.detach().double().numpy() for m in seq)
    return [last[:, :, 0, 0], first[:, :, 0, 0].T, vertical[:, 0, :, 0].T, horizontal[:, 0, 0].T]


@pytest.mark.parametrize("key", sorted(CONVS))
def test_cp_layers_compute_the_cp_kernel(key: str):
    import tensorly as tl

    conv = _conv(key)
    x = torch.randn(2, conv.in_channels, 11, 13)
    seq, desc = _decompose_one(conv, "cp", 0.5)
    rank = desc["rank"]
    assert [(m.groups, m.out_channels) for m in seq] == [
        (1, rank),
        (rank, rank),
        (rank, rank),
        (1, conv.out_channels),
    ]
    factors = _cp_factors(seq)
    kernel = tl.cp_to_tensor((np.ones(rank), factors))
    assert kernel.shape == tuple(conv.weight.shape)
    got = seq(x).detach()
    torch.testing.assert_close(got.double(), _conv_with(conv, kernel, x), atol=1e-4, rtol=0)
    w = conv.weight.detach().double().numpy()
    assert desc["error"] == pytest.approx(np.linalg.norm(kernel - w) / np.linalg.norm(w), abs=1e-5)


def test_cp_at_full_rank_is_close_to_the_conv():
    # rank=1 gives R = round((64 + 576 + 64) / 22) = 32 for a random 8->8 3x3 kernel, about
    # its generic CP rank (576 / (8 + 8 + 3 + 3 - 3) = 30.3); 200 ALS sweeps leave a kernel
    # error of 0.023 and an output error of about as much here (2% to 11% over seeds and sizes)
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, stride=2, padding=1)
    x = torch.randn(4, 8, 12, 12)
    want = conv(x).detach()
    seq, desc = _decompose_one(conv, "cp", 1.0)
    assert desc["rank"] == 32
    assert desc["error"] < 0.04
    assert _relative(seq(x).detach(), want) < 0.04


def test_cp_recovers_a_low_rank_kernel_and_is_deterministic():
    # a kernel of CP rank 3; rank=0.5 gives R = round((4*2 + 2*3*9 + 3*6) / (4+6+3+3)) = 5
    rng = np.random.default_rng(1)
    a, b, c, d = (rng.standard_normal((n, 3)) for n in (6, 4, 3, 3))
    conv = _conv("stride2-pad1-bias")
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.einsum("or,ir,hr,wr->oihw", a, b, c, d)))
    again = _conv("stride2-pad1-bias")
    again.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 10, 10)
    want = conv(x).detach()
    seq, desc = _decompose_one(conv, "cp", 0.5)
    assert desc["rank"] == 5
    assert desc["error"] < 1e-3
    assert _relative(seq(x).detach(), want) < 1e-3
    seq2, desc2 = _decompose_one(again, "cp", 0.5)
    assert desc2 == desc
    assert all(torch.equal(p, q) for p, q in zip(seq.parameters(), seq2.parameters(), strict=True))


def test_macs_and_params_follow_the_formula():
    # 16 -> 32 channels, 3x3, stride 2, padding 1 on 8x8: 4x4 outputs; the first 1x1 conv runs
    # on the 8x8 input, CP's vertical conv on 4x8 (its stride is the rows'), the rest on 4x4
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
    shape = (16, 8, 8)
    assert count_macs(conv, shape) == 16 * 32 * 16 * 9
    tucker = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False))
    assert decompose_convs(tucker, "tucker", 0.5)["0"]["ranks"] == [8, 16]
    assert count_params(tucker) == 16 * 8 + 8 * 16 * 9 + 16 * 32
    assert count_macs(tucker, shape) == 64 * 16 * 8 + 16 * 8 * 16 * 9 + 16 * 16 * 32
    cp = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=True))
    rank = decompose_convs(cp, "cp", 0.5)["0"]["rank"]
    assert rank == round((16 * 8 + 8 * 16 * 9 + 16 * 32) / (16 + 32 + 3 + 3))  # 1792 / 54
    assert count_params(cp) == rank * (16 + 3 + 3 + 32) + 32  # + the bias
    assert count_macs(cp, shape) == 64 * 16 * rank + 32 * rank * 3 + 16 * rank * 3 + 16 * rank * 32
    # at stride 2 the first 1x1 conv works at the input's resolution: the saving is smaller
    assert count_macs(tucker, shape) < 0.5 * count_macs(conv, shape)
    assert count_macs(cp, shape) < 0.8 * count_macs(conv, shape)


def _roundtrip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("method", ["tucker", "cp"])
def test_a_resnet_decomposes_and_reloads_from_a_plain_state_dict(method: str):
    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    x = torch.randn(3, *SHAPE)
    macs, params = count_macs(model, SHAPE), count_params(model)
    shortcut = model.trunk.stages[1][0].shortcut[0]  # a 1x1 conv: left alone
    layers = decompose_convs(model, method, 0.5)  # type: ignore[arg-type]
    assert set(layers) == RESNET_CONVS
    assert model.trunk.stages[1][0].shortcut[0] is shortcut
    assert count_macs(model, SHAPE) < 0.6 * macs
    assert count_params(model) < 0.6 * params
    out = model(x)
    assert out.shape == (3, 4) and torch.isfinite(out).all()
    recorded = json.loads(json.dumps(layers))  # what model.json holds
    fresh = rebuild_decomposed(build_model(SPEC), recorded)
    fresh.load_state_dict(_roundtrip(model.state_dict()))  # strict: every key, every shape
    assert torch.equal(fresh.eval()(x), out)


def test_torch_pruning_prunes_a_decomposed_resnet():
    from datapipe.train.prune import prune_channels

    torch.manual_seed(0)
    model = build_model(SPEC).eval()
    decompose_convs(model, "tucker", 0.5)
    macs = count_macs(model, SHAPE)
    prune_channels(model, [torch.randn(2, *SHAPE)], 0.5)
    assert count_macs(model, SHAPE) < 0.5 * macs
    assert model.eval()(torch.randn(2, *SHAPE)).shape == (2, 4)


def test_only_spatial_dense_2d_convs_are_decomposed():
    net = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.Conv2d(8, 8, 1),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Flatten(2),
        nn.Conv1d(8, 8, 3, padding=1),
        nn.Linear(16, 2),
    )
    kept = list(net)[1:]
    layers = decompose_convs(net, "tucker", 0.5)
    assert list(layers) == ["0"]
    assert list(net)[1:] == kept  # the same modules, untouched
    assert net(torch.randn(1, 4, 4, 4)).shape == (1, 8, 2)


def test_nothing_to_decompose_is_an_error():
    net = nn.Sequential(nn.Conv2d(4, 8, 1), nn.Conv2d(8, 8, 3, groups=8), nn.Linear(2, 2))
    before = [id(m) for m in net.modules()]
    with pytest.raises(DecomposeError, match="nothing to decompose"):
        decompose_convs(net, "cp", 0.5)
    assert [id(m) for m in net.modules()] == before


@pytest.mark.parametrize("rank", [0, 0.0, -0.5, 1.01, 2, float("nan"), True, "0.5"])
def test_a_rank_outside_zero_one_is_an_error(rank):
    net = nn.Sequential(nn.Conv2d(4, 4, 3))
    with pytest.raises(DecomposeError, match=r"rank must be a fraction in \(0, 1\]"):
        decompose_convs(net, "tucker", rank)
    assert isinstance(net[0], nn.Conv2d)


def test_an_unknown_method_is_an_error():
    with pytest.raises(DecomposeError, match="method must be one of"):
        decompose_convs(nn.Sequential(nn.Conv2d(4, 4, 3)), "svd", 0.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["tucker", "cp"])
def test_a_rank_that_leaves_a_layer_nothing_names_it_and_changes_nothing(method: str):
    # rank 0.1 keeps round(0.3) = 0 of the stem's 3 input channels; the other convs are fine
    model = build_model(SPEC)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DecomposeError, match=r"layer 'stem\.0'.* 0 of 3 input"):
        decompose_convs(model, method, 0.1)  # type: ignore[arg-type]
    assert all(decomposable(model.get_submodule(name)) for name in RESNET_CONVS)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_rebuild_rejects_what_it_cannot_build():
    with pytest.raises(DecomposeError, match="lacks: 'nope'"):
        rebuild_decomposed(build_model(SPEC), {"nope": {"method": "tucker", "ranks": [1, 1]}})
    with pytest.raises(DecomposeError, match=r"'trunk\.stages\.1\.0\.shortcut\.0' is Conv2d, not"):
        rebuild_decomposed(
            build_model(SPEC), {"trunk.stages.1.0.shortcut.0": {"method": "cp", "rank": 2}}
        )
    for bad in ({"method": "svd"}, {"method": "tucker", "ranks": [0, 2]}, {"method": "cp"}):
        with pytest.raises(DecomposeError, match=r"layer 'stem\.0': bad description"):
            rebuild_decomposed(build_model(SPEC), {"stem.0": bad})

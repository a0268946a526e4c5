"""Structured channel pruning (``datapipe.train.prune``): channels really go, the right ones
go, and the pruned model comes back from a plain ``state_dict`` loaded with weights_only."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

from datapipe.models import build_model, count_macs
from datapipe.models.measure import zero_inputs
from datapipe.train.prune import PruneError, prune_channels, rebuild_pruned, resized_layers

warnings.filterwarnings("ignore", module="torch_pruning")

SPECS = {
    "resnet": ({"arch": "resnet", "depth": 8, "width": 16, "num_classes": 4}, [3, 32, 32]),
    "pointnet": ({"arch": "pointnet", "num_classes": 4, "width": 16, "tnet": True}, [3, 64]),
    "dct_resnet": (
        {"arch": "dct_resnet", "num_classes": 4, "width": 16, "luma_channels": 8},
        [[8, 4, 4], [128, 2, 2]],
    ),
    "coviar": (
        {"arch": "coviar", "num_classes": 4, "width": 8},
        [[3, 3, 16, 16], [3, 2, 16, 16], [3, 3, 16, 16]],
    ),
}


def _roundtrip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_conv1d_macs_are_counted():
    # PointNet's shared MLPs are 1x1 Conv1d: 16 points x 8 out x 3 in, then a linear 8 -> 2
    net = nn.Sequential(nn.Conv1d(3, 8, 1), nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(8, 2))
    assert count_macs(net, (3, 16)) == 16 * 8 * 3 + 2 * 8


@pytest.mark.parametrize("arch", sorted(SPECS))
def test_pruning_halves_the_channels_and_reloads_from_a_plain_state_dict(arch: str):
    spec, shape = SPECS[arch]
    torch.manual_seed(0)
    model = build_model(spec).eval()
    xs = [torch.randn_like(x) for x in zero_inputs(shape, 2)]
    macs = count_macs(model, shape)
    prune_channels(model, xs, 0.5, "l1")
    model.eval()
    # every layer lost half its output channels (the classifier's and the T-Net's excepted):
    # a convolution's cost scales with in x out channels, so MACs fall to about a quarter
    assert count_macs(model, shape) < 0.3 * macs
    fresh = build_model(spec)
    for name, module in model.named_modules():
        before = dict(fresh.named_modules())[name]
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            assert module.out_channels == before.out_channels // 2, name
        if isinstance(module, nn.Linear):
            fixed = module.out_features in (4, 9)  # the classes, the 3x3 transform
            want = before.out_features if fixed else before.out_features // 2
            assert module.out_features == want, name
    assert model(*xs).shape == (2, 4)
    resized = resized_layers(model, build_model(spec))
    back = rebuild_pruned(build_model(spec), resized, _roundtrip(model.state_dict())).eval()
    assert torch.equal(back(*xs), model(*xs))


def _dead_odd_channels(net: nn.Module) -> None:
    """Zero every odd channel of a PointNet (out weights, batch-norm scale and shift, and the
    next layer's weights from it): the network computes with its even channels only."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Linear, nn.BatchNorm1d))]
    with torch.no_grad():
        for i, m in enumerate(layers):
            if isinstance(m, nn.BatchNorm1d):
                m.weight[1::2] = 0
                m.bias[1::2] = 0
                continue
            if i > 0:
                m.weight[:, 1::2] = 0  # inputs from the previous layer's odd channels
            if m is not net.fc:
                m.weight[1::2] = 0
                if m.bias is not None:
                    m.bias[1::2] = 0


@pytest.mark.parametrize("method", ["l1", "l2", "group_norm"])
def test_the_pruned_channels_are_the_dead_ones_and_the_function_is_unchanged(method: str):
    torch.manual_seed(1)
    net = build_model({"arch": "pointnet", "num_classes": 3, "width": 8, "dropout": 0.0}).eval()
    _dead_odd_channels(net)
    x = torch.randn(4, 3, 50)
    before = net(x)
    first = net.features[0].weight.clone()
    prune_channels(net, [x], 0.5, method)
    net.eval()
    # the oracle: removing channels that contribute nothing keeps the outputs, and the
    # survivors are exactly the even channels, in order
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    assert torch.equal(net.features[0].weight, first[0::2])


def test_channel_counts_follow_the_keep_rule_and_an_emptied_layer_is_refused():
    net = build_model({"arch": "pointnet", "num_classes": 4, "width": 6})
    prune_channels(net, [torch.randn(2, 3, 32)], 0.3, "l1")
    convs = [m.out_channels for m in net.features if isinstance(m, nn.Conv1d)]
    linears = [m.out_features for m in net.head if isinstance(m, nn.Linear)]
    # int(c * 0.7) of 6, 6, 6, 12, 96 and of 48, 24, by hand
    assert convs == [4, 4, 4, 8, 67] and linears == [33, 16]
    net = build_model({"arch": "pointnet", "num_classes": 4, "width": 6})
    with pytest.raises(PruneError, match=r"'features.0' \(6 output channels\)"):
        prune_channels(net, [torch.randn(2, 3, 32)], 0.9, "l1")
    with pytest.raises(PruneError, match=r"amount must be in \(0, 1\)"):
        prune_channels(net, [torch.randn(2, 3, 32)], 1.0, "l1")


def test_a_state_dict_that_does_not_fit_is_refused():
    spec, shape = SPECS["resnet"]
    model = build_model(spec)
    prune_channels(model, zero_inputs(shape, 2), 0.5, "l1")
    resized = resized_layers(model, build_model(spec))
    with pytest.raises(PruneError, match="does not have"):
        rebuild_pruned(build_model(spec), {"nope": {"out_channels": 2}}, model.state_dict())
    state = model.state_dict()
    state.pop("fc.weight")
    with pytest.raises(PruneError, match=r"no 'fc\.weight'"):
        rebuild_pruned(build_model(spec), resized, state)
    state = model.state_dict()
    state["fc.bias"] = torch.zeros(7)  # 7 outputs where the layer says 4
    with pytest.raises(PruneError, match=r"'fc': bias of shape \(7,\) does not fit"):
        rebuild_pruned(build_model(spec), resized, state)
    state = {**model.state_dict(), "extra.weight": torch.zeros(2)}
    with pytest.raises(PruneError, match="do not fit the pruned model"):
        rebuild_pruned(build_model(spec), resized, state)

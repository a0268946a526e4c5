"""A small ResNet family sized for CPU training.

``stages=3`` (CIFAR style, He et al. 2016, section 4.2): a 3x3 stem at full resolution and
three stages of BasicBlocks with widths ``w, 2w, 4w`` (strides 1, 2, 2; feature maps at
strides 1, 2, 4). ``stages=4`` (ImageNet style, scaled down): a 3x3 stride-2 stem and four
stages ``w, 2w, 4w, 8w`` (strides 1, 2, 2, 2; feature maps at strides 2, 4, 8, 16): the twin
of :class:`~datapipe.models.dct_resnet.DctResNet`, whose 8x8 DCT blocks enter at stride 8.
Both end in a global average pool and a linear head. The stem is a module apart from the trunk:
``stem="pixels"`` is a 3x3 convolution at full resolution, ``stem="none"`` feeds the input
straight into the first stage (its first block projects ``in_channels`` to ``w``).
:meth:`ResNet.trunk_from` returns the stages from one index on, so another input adaptation
(a DCT stem at 1/8 resolution, say) can enter the same trunk where the pixel twin's feature
map has the matching stride (:attr:`ResNet.stage_strides`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

#: blocks per stage for each depth (depth = 2 * blocks + 2: the stem conv and the head count)
DEPTHS: dict[int, tuple[int, int, int]] = {
    8: (1, 1, 1),
    14: (2, 2, 2),
    18: (3, 3, 2),
    20: (3, 3, 3),
}
#: blocks per stage of the 4-stage layout (depth 18 is torchvision's ResNet-18 block count)
DEPTHS4: dict[int, tuple[int, int, int, int]] = {
    10: (1, 1, 1, 1),
    18: (2, 2, 2, 2),
    26: (3, 3, 3, 3),
}
STEMS = ("pixels", "none")


def blocks_for(depth: int, stages: int) -> tuple[int, ...]:
    """Blocks per stage of a depth in the 3- or 4-stage layout (ValueError when unknown)."""
    table: dict[int, tuple[int, ...]] = dict(DEPTHS if stages == 3 else DEPTHS4)
    if stages not in (3, 4) or depth not in table:
        raise ValueError(
            f"The 'depth' parameter of resnet must be one of {sorted(DEPTHS)} with 3 stages "
            f"or {sorted(DEPTHS4)} with 4. Got depth={depth!r}, stages={stages!r} instead."
        )
    return table[depth]


def res_stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` BasicBlocks from ``cin`` to ``cout`` channels, the first with ``stride``."""
    return nn.Sequential(
        *(BasicBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1) for j in range(blocks))
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (a 1x1 conv-BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetTrunk(nn.Module):
    """The stages of a :class:`ResNet`: ``forward(x, start=0)`` runs stages ``start..end``."""

    def __init__(self, cin: int, width: int, blocks: tuple[int, ...]) -> None:
        super().__init__()
        stages = []
        for i, n in enumerate(blocks):
            cout = width * 2**i
            stages.append(res_stage(cin, cout, n, 1 if i == 0 else 2))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.out_channels = cin

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        for stage in self.stages[start:]:
            x = stage(x)
        return x


class ResNet(nn.Module):
    """Stem -> :class:`ResNetTrunk` -> global average pool -> linear head.

    Build it with :func:`resnet` or :func:`~datapipe.models.build_model`; ``spec`` holds the
    JSON-able arguments that rebuild it.
    """

    def __init__(
        self,
        *,
        depth: int = 8,
        width: int = 16,
        num_classes: int = 10,
        in_channels: int = 3,
        stem: str = "pixels",
        stages: int = 3,
    ) -> None:
        super().__init__()
        _check(depth, width, num_classes, in_channels, stem, stages)
        self.spec: dict[str, Any] = {
            "arch": "resnet",
            "depth": depth,
            "width": width,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "stem": stem,
        }
        if stages != 3:
            self.spec["stages"] = stages
        #: stride of each stage's first block; the stem's stride is ``stem_stride``
        self.stage_strides = (1, 2, 2) if stages == 3 else (1, 2, 2, 2)
        self.stem_stride = 1 if stages == 3 or stem == "none" else 2
        if stem == "pixels":
            self.stem: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, self.stem_stride, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
            trunk_in = width
        else:
            self.stem = nn.Identity()
            trunk_in = in_channels
        self.trunk = ResNetTrunk(trunk_in, width, blocks_for(depth, stages))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.trunk.out_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def trunk_from(self, stage_index: int) -> nn.Sequential:
        """The stages from ``stage_index`` on, with pool and head: an entry for another stem.

        Its input has ``width * 2**(stage_index - 1)`` channels (``stage_index >= 1``) at the
        cumulative stride ``stem_stride * prod(stage_strides[:stage_index])`` of the pixel
        input.
        """
        if not 0 <= stage_index < len(self.trunk.stages):
            raise ValueError(
                f"The 'stage_index' parameter of trunk_from must be an int in "
                f"[0, {len(self.trunk.stages) - 1}]. Got {stage_index} instead."
            )
        return nn.Sequential(*self.trunk.stages[stage_index:], self.pool, nn.Flatten(1), self.fc)

    def features(self, x: Tensor) -> Tensor:
        """The pooled trunk features, shape ``(B, 4 * width)``."""
        return self.pool(self.trunk(self.stem(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def _check(
    depth: int, width: int, num_classes: int, in_channels: int, stem: str, stages: int
) -> None:
    def bad(name: str, must: str, got: object) -> str:
        return f"The '{name}' parameter of resnet must be {must}. Got {got!r} instead."

    problems = []
    try:
        blocks_for(depth, stages)
    except ValueError as exc:
        problems.append(str(exc))
    for name, value in (
        ("width", width),
        ("num_classes", num_classes),
        ("in_channels", in_channels),
    ):
        if not isinstance(value, int) or value < 1:
            problems.append(bad(name, "an int >= 1", value))
    if stem not in STEMS:
        problems.append(bad("stem", f"one of {STEMS}", stem))
    if problems:
        raise ValueError("\n".join(problems))


def resnet(
    depth: int = 8,
    width: int = 16,
    num_classes: int = 10,
    in_channels: int = 3,
    stem: str = "pixels",
    stages: int = 3,
) -> ResNet:
    """A small ResNet: 3 stages (depth 8, 14, 18 or 20) or 4 (depth 10, 18 or 26); width
    16..64 is the intended range.

    Examples
    --------
    >>> import torch
    >>> from datapipe.models import count_params, resnet
    >>> model = resnet(depth=8, width=16, num_classes=4)
    >>> model(torch.zeros(2, 3, 16, 16)).shape
    torch.Size([2, 4])
    >>> count_params(model)
    77652
    """
    return ResNet(
        depth=depth,
        width=width,
        num_classes=num_classes,
        in_channels=in_channels,
        stem=stem,
        stages=stages,
    )

"""PointNet (Qi et al., "PointNet: Deep Learning on Point Sets for 3D Classification and
Segmentation", CVPR 2017), the classification network.

A shared per-point MLP (1x1 ``Conv1d`` layers with batch norm) lifts every point to a
feature, a max pool over the points makes the cloud's feature (invariant to their order),
and an MLP head gives the class logits. With ``tnet=True`` a small PointNet first predicts
a 3x3 input transform, initialised to the identity, that the points are multiplied by.

With ``width=64`` the layers are the paper's: per-point 64, 64, 64, 128, 1024; head 512,
256 (dropout 0.3). Other widths scale them all (``w, w, w, 2w, 16w``; ``8w, 4w``). The
head and the T-Net's fully connected layers have no batch norm, so a batch of one cloud
(the last of an epoch) trains too.

Input: ``(B, C, N)`` points as channels, or ``(B, C, N, 1)``, the layout the training
loop normalises per channel (its channels are dim -3); the last dim is squeezed.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn


def _shared_mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Conv1d(a, b, 1, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class TNet(nn.Module):
    """Predicts a ``k x k`` transform of the points, the identity at initialisation."""

    def __init__(self, k: int = 3, width: int = 64) -> None:
        super().__init__()
        self.k = k
        self.features = _shared_mlp([k, width, 2 * width, 16 * width])
        self.head = nn.Sequential(
            nn.Linear(16 * width, 8 * width), nn.ReLU(inplace=True),
            nn.Linear(8 * width, 4 * width), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.out = nn.Linear(4 * width, k * k)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x).amax(dim=2)
        eye = torch.eye(self.k, dtype=x.dtype, device=x.device).flatten()
        return (self.out(self.head(f)) + eye).view(-1, self.k, self.k)


class PointNet(nn.Module):
    """``forward(points)``: ``(B, C, N)`` or ``(B, C, N, 1)``; returns class logits.

    Build it with :func:`pointnet` or :func:`~datapipe.models.build_model`.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        width: int = 64,
        tnet: bool = False,
        in_channels: int = 3,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("width", width),
                            ("in_channels", in_channels)):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"The '{name}' parameter of pointnet must be an int >= 1. "
                    f"Got {value!r} instead."
                )
        if not 0 <= dropout < 1:
            raise ValueError(f"The 'dropout' of pointnet must be in [0, 1). Got {dropout!r}.")
        self.spec: dict[str, Any] = {
            "arch": "pointnet",
            "num_classes": num_classes,
            "width": width,
            "tnet": bool(tnet),
            "in_channels": in_channels,
            "dropout": dropout,
        }
        self.tnet = TNet(in_channels, width) if tnet else None
        w = width
        self.features = _shared_mlp([in_channels, w, w, w, 2 * w, 16 * w])
        self.head = nn.Sequential(
            nn.Linear(16 * w, 8 * w), nn.ReLU(inplace=True),
            nn.Linear(8 * w, 4 * w), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )  # fmt: skip
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            if x.shape[-1] != 1:
                raise ValueError(f"pointnet takes (B, C, N) or (B, C, N, 1); got {tuple(x.shape)}")
            x = x.squeeze(-1)
        if self.tnet is not None:
            t = self.tnet(x)
            x = torch.bmm(t.transpose(1, 2), x)  # each point p -> p @ T (as in the paper)
        f = self.features(x).amax(dim=2)
        return self.fc(self.head(f))


def pointnet(
    num_classes: int = 10,
    width: int = 64,
    tnet: bool = False,
    in_channels: int = 3,
    dropout: float = 0.3,
) -> PointNet:
    """A PointNet classifier (see the module docstring).

    Examples
    --------
    >>> import torch
    >>> net = pointnet(num_classes=4, width=8, tnet=True)
    >>> net(torch.zeros(2, 3, 32)).shape
    torch.Size([2, 4])
    """
    return PointNet(
        num_classes=num_classes, width=width, tnet=tnet, in_channels=in_channels, dropout=dropout
    )

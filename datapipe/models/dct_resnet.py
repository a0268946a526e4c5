"""A ResNet that reads JPEG DCT coefficients (Gueguen et al., "Faster Neural Networks
Straight from JPEG", NeurIPS 2018), the twin of the 4-stage pixel :func:`~datapipe.models.resnet`.

Each 8x8 block of a JPEG already is a stride-8 "patch embedding": its ``K`` zigzag
coefficients are the input channels of a feature map at 1/8 of the image's resolution.
So the network has no stem: the luma coefficients enter where the pixel twin's feature map
has stride 8, the third stage (its first block keeps the resolution instead of halving it
and projects ``K`` to ``4w`` channels). The blocks of the twin's first two stages are not
dropped but moved there, at stride 8 (``rfa=True``, the default): without them the network
is two stages deep and its receptive field, counted in blocks, far smaller than the twin's
(Gueguen et al.'s "RFA" variants match it for the same reason). The chroma coefficients
join by late concatenation at the input of the fourth stage (their "late-concat": luma gets
a stage of its own first). 4:2:0 chroma, on a grid half the luma one, is repeated onto it
block by block, as ``jpeg.dct``'s ``chroma: luma_grid`` would. From there on the layers are
the twin's: stage 4 (stride 2), global average pool, linear head.

On the data of ``scripts/evidence/evidence_train_dct.py`` (10 classes x 60 JPEGs at 96 px,
10 epochs, keep 24, seed 0) a luma path of one block (``rfa=False``) reached 0.18
validation accuracy; the evidence script's table (README) gives the ``rfa`` model's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from datapipe.models.resnet import blocks_for, res_stage


class DctResNet(nn.Module):
    """``forward(luma, chroma)``: luma ``(N, K, Hb, Wb)``, chroma ``(N, Kc, Hc, Wc)`` with
    ``Hc`` = ``Hb`` or ``ceil(Hb / 2)`` (likewise ``Wc``); returns class logits.

    Build it with :func:`dct_resnet` or :func:`~datapipe.models.build_model`.
    """

    def __init__(
        self,
        *,
        depth: int = 10,
        width: int = 16,
        num_classes: int = 10,
        luma_channels: int = 64,
        chroma_channels: int = 128,
        rfa: bool = True,
    ) -> None:
        super().__init__()
        blocks = blocks_for(depth, 4)
        for name, value in (
            ("width", width),
            ("num_classes", num_classes),
            ("luma_channels", luma_channels),
            ("chroma_channels", chroma_channels),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"The '{name}' parameter of dct_resnet must be an int >= 1. "
                    f"Got {value!r} instead."
                )
        self.spec: dict[str, Any] = {
            "arch": "dct_resnet",
            "depth": depth,
            "width": width,
            "num_classes": num_classes,
            "luma_channels": luma_channels,
            "chroma_channels": chroma_channels,
            "rfa": rfa,
        }
        luma_blocks = sum(blocks[:3]) if rfa else blocks[2]
        self.luma = res_stage(luma_channels, 4 * width, luma_blocks, stride=1)
        self.fused = res_stage(4 * width + chroma_channels, 8 * width, blocks[3], stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, luma: Tensor, chroma: Tensor) -> Tensor:
        y = self.luma(luma)
        hb, wb = y.shape[-2:]
        ry, rx = -(-hb // chroma.shape[-2]), -(-wb // chroma.shape[-1])
        if ry > 1:
            chroma = chroma.repeat_interleave(ry, dim=-2)
        if rx > 1:
            chroma = chroma.repeat_interleave(rx, dim=-1)
        x = torch.cat([y, chroma[..., :hb, :wb]], dim=1)
        return self.fc(self.pool(self.fused(x)).flatten(1))


def dct_resnet(
    depth: int = 10,
    width: int = 16,
    num_classes: int = 10,
    luma_channels: int = 64,
    chroma_channels: int = 128,
    rfa: bool = True,
) -> DctResNet:
    """A :class:`DctResNet` (depth 10, 18 or 26, as the 4-stage pixel twin).

    ``luma_channels``: the zigzag coefficients kept per luma block (``jpeg.dct``'s ``keep``);
    ``chroma_channels``: those of Cb and Cr together (``2 * keep_chroma``); ``rfa``: the
    blocks of the twin's first two stages run at stride 8 on luma (see the module docstring).

    Examples
    --------
    >>> import torch
    >>> net = dct_resnet(depth=10, width=8, num_classes=5, luma_channels=24, chroma_channels=48)
    >>> net(torch.zeros(2, 24, 8, 8), torch.zeros(2, 48, 4, 4)).shape
    torch.Size([2, 5])
    """
    return DctResNet(
        depth=depth,
        width=width,
        num_classes=num_classes,
        luma_channels=luma_channels,
        chroma_channels=chroma_channels,
        rfa=rfa,
    )

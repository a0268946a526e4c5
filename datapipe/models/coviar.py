"""CoViAR streams (Wu et al., "Compressed Video Action Recognition", CVPR 2018) with TSN
consensus (Wang et al., ECCV 2016): one small ResNet per stream, scores fused.

Each stream (``iframe``: I-frames, ``mv``: accumulated motion, ``residual``: accumulated
residuals, ``rgb``: decoded frames, the baseline CoViAR is measured against) has its own
3-stage :func:`~datapipe.models.resnet` backbone, applied to all ``N * S`` segment frames; its
logits are averaged over the ``S`` segments (TSN's average consensus), and the streams'
averages are fused by a weighted sum. The default weights (:data:`DEFAULT_WEIGHTS`: iframe 1,
mv 1, residual 0.5, rgb 1) are a plain prior, not tuned: the residual gets less weight because
it is, alone, the weakest and noisiest representation; the paper tuned its fusion weights on
validation scores. The paper trains each stream alone and fuses scores after training; trained
through :func:`~datapipe.train.fit`, the cross-entropy of the *fused* logits trains every
stream jointly (each backbone's gradient is scaled by its weight). :meth:`CoviarNet.stream_logits`
gives each stream's own scores, for evaluating streams apart or re-fusing with other weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from datapipe.models.resnet import resnet

#: channels each stream's frames have
STREAM_CHANNELS = {"iframe": 3, "mv": 2, "residual": 3, "rgb": 3}
#: fusion weight of each stream unless told otherwise (see the module docstring)
DEFAULT_WEIGHTS = {"iframe": 1.0, "mv": 1.0, "residual": 0.5, "rgb": 1.0}


class CoviarNet(nn.Module):
    """``forward(*streams)``: one ``(N, S, C, H, W)`` tensor per stream, in ``streams`` order;
    returns the fused ``(N, num_classes)`` logits. ``backbones[name]`` is each stream's ResNet.

    Build it with :func:`coviar_net` or :func:`~datapipe.models.build_model`; ``spec`` holds
    the JSON-able arguments that rebuild it.
    """

    def __init__(
        self,
        *,
        streams: Sequence[str] = ("iframe", "mv", "residual"),
        num_classes: int = 10,
        depth: int = 8,
        width: int = 16,
        weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        streams = list(streams)
        bad = [s for s in streams if s not in STREAM_CHANNELS]
        if not streams or bad or len(set(streams)) != len(streams):
            raise ValueError(
                f"The 'streams' parameter of coviar must be distinct names of "
                f"{sorted(STREAM_CHANNELS)}. Got {streams!r} instead."
            )
        w = [DEFAULT_WEIGHTS[s] for s in streams] if weights is None else list(weights)
        if len(w) != len(streams) or any(not isinstance(v, (int, float)) or v < 0 for v in w):
            raise ValueError(
                f"The 'weights' parameter of coviar must be one number >= 0 per stream "
                f"({streams}). Got {weights!r} instead."
            )
        self.streams = streams
        self.weights = [float(v) for v in w]
        self.spec: dict[str, Any] = {
            "arch": "coviar",
            "streams": streams,
            "num_classes": num_classes,
            "depth": depth,
            "width": width,
            "weights": self.weights,
        }
        self.backbones = nn.ModuleDict(
            {s: resnet(depth, width, num_classes, in_channels=STREAM_CHANNELS[s]) for s in streams}
        )

    def stream_logits(self, *xs: Tensor) -> list[Tensor]:
        """Each stream's ``(N, num_classes)`` logits averaged over its segments."""
        if len(xs) != len(self.streams):
            raise ValueError(f"CoviarNet takes {len(self.streams)} inputs ({self.streams})")
        out = []
        for stream, x in zip(self.streams, xs, strict=True):
            n, s = x.shape[0], x.shape[1]
            logits = self.backbones[stream](x.flatten(0, 1))
            out.append(logits.reshape(n, s, -1).mean(1))
        return out

    def forward(self, *xs: Tensor) -> Tensor:
        scores = self.stream_logits(*xs)
        fused = scores[0] * self.weights[0]
        for w, score in zip(self.weights[1:], scores[1:], strict=True):
            fused = fused + w * score
        return fused


def coviar_net(
    streams: Sequence[str] = ("iframe", "mv", "residual"),
    num_classes: int = 10,
    depth: int = 8,
    width: int = 16,
    weights: Sequence[float] | None = None,
) -> CoviarNet:
    """A :class:`CoviarNet`: 3-stage ResNets of ``depth`` (8, 14, 18, 20) and ``width``.

    Examples
    --------
    >>> import torch
    >>> net = coviar_net(["iframe", "mv"], num_classes=4, width=4)
    >>> net(torch.zeros(2, 3, 3, 16, 16), torch.zeros(2, 3, 2, 16, 16)).shape
    torch.Size([2, 4])
    >>> net.spec["weights"]
    [1.0, 1.0]
    """
    return CoviarNet(
        streams=streams, num_classes=num_classes, depth=depth, width=width, weights=weights
    )

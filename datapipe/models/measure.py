"""Model size and cost: parameters and multiply-accumulates (MACs).

:func:`count_macs` counts the multiply-accumulates of convolutions (``nn.Conv1d``, ``nn.Conv2d``,
``nn.Conv3d``) and ``nn.Linear`` layers only, by forward hooks on one sample: a convolution
costs ``out.numel() * (in_channels / groups) * prod(kernel_size)``, a linear layer
``out.numel() * in_features``. Batch norm, activations,
pooling, additions and biases are not counted (they are a small share in these CNNs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

#: the convolutions :func:`count_macs` counts
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameters (all, or only those that require grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def zero_inputs(input_shape: Sequence[int] | Sequence[Sequence[int]], batch: int) -> list[Tensor]:
    """Zero tensors of a batch for a model of one input (``input_shape`` a shape such as
    ``(C, H, W)``) or of several (a list of shapes, one per ``forward`` argument)."""
    shapes = input_shape if input_shape and not isinstance(input_shape[0], int) else [input_shape]
    return [torch.zeros(batch, *shape) for shape in shapes]  # type: ignore[misc]


def count_macs(model: nn.Module, input_shape: Sequence[int] | Sequence[Sequence[int]]) -> int:
    """Multiply-accumulates of the convs and linears for ONE sample of ``input_shape`` (C, H, W),
    or of one sample of each input for a model of several (a list of shapes).

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    >>> count_macs(net, (3, 4, 4)) == 8 * 4 * 4 * 3 * 3 * 3 + 2 * 8 * 4 * 4
    True
    """
    total = 0

    def conv_hook(m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, CONVS)
        total += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def linear_hook(m: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        assert isinstance(m, nn.Linear)
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, CONVS):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*zero_inputs(input_shape, 1))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total

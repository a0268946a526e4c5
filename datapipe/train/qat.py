"""Quantization-aware training (QAT): fine-tune the fp32 model with ONNX Runtime's int8
rounding simulated, so that the weights adapt to it, then quantize the fine-tuned fp32 model
with :func:`datapipe.train.int8.quantize_onnx` as after any training.

:func:`prepare_qat` makes every convolution and linear layer compute, in its forward pass,
with what ``quantize_onnx`` will give it (``onnxruntime.quantization``, ``quant_utils.py``:
``compute_data_quant_params``, ``compute_scale_zp``, ``get_qmin_qmax_for_qType``):

- its weight symmetric int8, per output channel or per tensor: scale ``max|w| / 127``, or
  with ``reduce_range`` ``2 max|w| / 128`` over ORT's reduced int8 range ``[-64, 64]`` (not
  ``[-63, 63]``), the scale computed in float64 and stored in float32 as ORT does;
- its input asymmetric uint8 ``[0, 255]`` per tensor (``reduce_range`` does not touch
  activations in ORT's QDQ quantizer), the range widened to include 0, zero point
  ``round(-min / scale)``; the range is tracked as a running min/max (the first training
  batch sets it, later ones move it by ``momentum``; frozen in eval mode), where ORT calibrates
  the min/max of the calibration batches.

Rounding is half to even (torch's fake quantization, numpy's and ORT's), and gradients pass
straight through (zero where a value is clamped): ``torch.fake_quantize_per_*_affine``.

Not simulated: ORT also quantizes each layer's output (for a layer followed by a ReLU, the
ReLU's output: the next layer's input, which is simulated), the model's outputs, tensors
around other ops (additions, pooling, a MatMul of two activations) and biases (int32 at input
scale x weight scale). A batch norm that ORT folds into the convolution before quantizing is
covered by per-channel weights: a per-channel factor does not change symmetric per-channel
rounding (up to float rounding).

The weight goes through a parametrization (``torch.nn.utils.parametrize``): the gradient
reaches the fp32 parameter, which stays the same object (an optimizer made before or after
keeps working), and removing it puts that parameter back under its name. The input goes
through a forward pre-hook: a parametrization can only rewrite a layer's own tensors. The
range lives in two buffers of the layer (``qat_act_min``, ``qat_act_max``), so a checkpoint
of the prepared model (``state_dict``) resumes exactly in a freshly prepared one;
:meth:`QatHandle.remove` leaves the plain fp32 model with the original ``state_dict`` keys.
Parametrize's limits: a prepared model pickles only as a ``state_dict``, a wrapper such as
DDP goes on after :func:`prepare_qat`, and a ``deepcopy`` shares each layer's parametrized
class with the original, so removing on one breaks the other (copy the ``state_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

#: the layer types whose weight and input are quantized (ORT's Conv, Gemm and MatMul)
QAT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: the buffers that hold a layer's input range
ACT_MIN, ACT_MAX = "qat_act_min", "qat_act_max"
#: ORT's uint8 activation range
ACT_QMIN, ACT_QMAX = 0, 255
_TINY = torch.finfo(torch.float32).tiny  # ORT's smallest usable scale (else 1, zero point 0)


class QatError(ValueError):
    """The model cannot be prepared as asked (names the layer and the reason)."""


def weight_qrange(reduce_range: bool) -> tuple[int, int]:
    """ORT's symmetric int8 weight range: ``[-127, 127]``, or ``[-64, 64]`` with
    ``reduce_range`` (``ONNX_INT_TYPE_SYMMETRIC_RANGE`` / ``ONNX_INT_TYPE_REDUCED_RANGE``)."""
    return (-64, 64) if reduce_range else (-127, 127)


def weight_scale(weight: Tensor, *, per_channel: bool, reduce_range: bool) -> Tensor:
    """ORT's symmetric weight scale (one per output channel, dim 0, or a scalar): ``2
    max|w| / (qmax - qmin)`` in float64, stored in float32; 1 where that is below float32's
    smallest normal number (an all-zero channel)."""
    qmin, qmax = weight_qrange(reduce_range)
    w = weight.detach().abs()
    absmax = w.flatten(1).amax(1) if per_channel else w.amax()
    scale = absmax.double() * 2 / (qmax - qmin)
    return torch.where(scale < _TINY, torch.ones_like(scale), scale).float()


def fake_quant_weight(weight: Tensor, *, per_channel: bool, reduce_range: bool) -> Tensor:
    """``weight`` rounded to ORT's int8 grid and back (straight-through gradient)."""
    qmin, qmax = weight_qrange(reduce_range)
    scale = weight_scale(weight, per_channel=per_channel, reduce_range=reduce_range)
    zero = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    if per_channel:
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, qmin, qmax)
    return torch.fake_quantize_per_tensor_affine(weight, scale, zero, qmin, qmax)


def activation_qparams(low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """ORT's uint8 scale (float32) and zero point (int32) for a tensor ranging over ``[low,
    high]`` (``compute_scale_zp``, asymmetric): the range widened to include 0, scale ``(max
    - min) / 255`` and zero point ``round(-min / scale)`` in float64."""
    rmin = low.detach().double().clamp(max=0)
    rmax = high.detach().double().clamp(min=0)
    scale = (rmax - rmin) / (ACT_QMAX - ACT_QMIN)
    if float(scale) < _TINY:
        return torch.ones_like(scale, dtype=torch.float32), torch.zeros_like(
            scale, dtype=torch.int32
        )
    return scale.float(), torch.round(ACT_QMIN - rmin / scale).int()


class _FakeQuantWeight(nn.Module):
    """The parametrization of a layer's weight: the weight on ORT's int8 grid."""

    def __init__(self, per_channel: bool, reduce_range: bool) -> None:
        super().__init__()
        self.per_channel, self.reduce_range = per_channel, reduce_range

    def forward(self, weight: Tensor) -> Tensor:
        return fake_quant_weight(
            weight, per_channel=self.per_channel, reduce_range=self.reduce_range
        )


def _quantize_input(momentum: float, layer: nn.Module, args: tuple[Tensor, ...]) -> tuple:
    """The forward pre-hook: in training, move the input range toward this batch's (the
    first batch sets it); then the input on the uint8 grid of the range (unchanged while no
    training batch has set one)."""
    x, low, high = args[0], getattr(layer, ACT_MIN), getattr(layer, ACT_MAX)
    if layer.training and x.numel():
        with torch.no_grad():
            lo, hi = x.detach().amin().clamp(max=0), x.detach().amax().clamp(min=0)
            if bool(torch.isfinite(low)):
                low.lerp_(lo.to(low.dtype), momentum)
                high.lerp_(hi.to(high.dtype), momentum)
            else:
                low.copy_(lo)
                high.copy_(hi)
    if not bool(torch.isfinite(low)):
        return args
    scale, zero = activation_qparams(low, high)
    x = torch.fake_quantize_per_tensor_affine(x, scale, zero, ACT_QMIN, ACT_QMAX)
    return (x, *args[1:])


@dataclass
class QatHandle:
    """What :func:`prepare_qat` added: the prepared layers by name, their input hooks and
    the order of their parameters (``state_dict`` order, restored on removal)."""

    layers: dict[str, nn.Module] = field(default_factory=dict)
    hooks: list[RemovableHandle] = field(default_factory=list)
    order: dict[str, list[str]] = field(default_factory=dict)

    def remove(self) -> None:
        """Leave the plain fp32 layers with the fine-tuned weights: no hook, parametrization
        or range buffer (``state_dict`` keys as before :func:`prepare_qat`). Idempotent."""
        for hook in self.hooks:
            hook.remove()
        for name, layer in self.layers.items():
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
                for key in self.order.get(name, ()):  # the parameters in their first order
                    layer._parameters[key] = layer._parameters.pop(key)
            for buffer in (ACT_MIN, ACT_MAX):
                if buffer in layer._buffers:
                    delattr(layer, buffer)
        self.hooks.clear()
        self.layers.clear()
        self.order.clear()


def prepare_qat(
    model: nn.Module, *, per_channel: bool = True, reduce_range: bool = True, momentum: float = 0.1
) -> QatHandle:
    """Make every convolution and linear layer of ``model`` (in place) compute with its
    weight and input fake-quantized as ONNX Runtime will quantize them (``per_channel`` and
    ``reduce_range`` as given to ``quantize_onnx``); the input range is a running min/max
    moved by ``momentum`` per training batch. Undo with :meth:`QatHandle.remove`."""
    if not 0 < momentum <= 1:
        raise QatError(f"qat momentum must be in (0, 1]; got {momentum!r}")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QAT_LAYERS)}
    if not layers:
        raise QatError("the model has no convolution or linear layer to quantize")
    for name, layer in layers.items():
        if parametrize.is_parametrized(layer, "weight") or hasattr(layer, ACT_MIN):
            raise QatError(f"layer {name!r} is already parametrized or prepared for QAT")
    handle = QatHandle()
    for name, layer in layers.items():
        weight = layer.weight
        handle.order[name] = list(layer._parameters)
        layer.register_buffer(ACT_MIN, torch.full((), torch.inf, device=weight.device))
        layer.register_buffer(ACT_MAX, torch.full((), -torch.inf, device=weight.device))
        parametrize.register_parametrization(
            layer, "weight", _FakeQuantWeight(per_channel, reduce_range)
        )
        handle.hooks.append(layer.register_forward_pre_hook(partial(_quantize_input, momentum)))
        handle.layers[name] = layer
    return handle

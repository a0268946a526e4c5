"""Structured channel pruning that physically removes channels (Torch-Pruning), and a saved
form of the pruned model that loads without pickle.

:func:`prune_channels` removes ``amount`` of the output channels of every convolution and
linear layer (the classifier's outputs and other fixed-size outputs excepted), ranked by
weight magnitude (``l1``, ``l2``) or by the norm of each coupled group (``group_norm``,
Fang et al. 2023); Torch-Pruning's dependency graph prunes what is coupled to a channel (the
next layer's inputs, batch norms, both sides of a residual addition) with it. The result is
a smaller dense model: fewer MACs and a faster forward pass, unlike masks
(``torch.nn.utils.prune``), which keep every multiplication.

A pruned model is saved as its plain ``state_dict`` plus :func:`resized_layers` (the new
channel counts, plain ints, kept in ``model.json``); :func:`rebuild_pruned` makes the fresh
model of the spec, shrinks those layers and loads the weights: ``torch.load(...,
weights_only=True)`` suffices, where ``torch_pruning.state_dict`` would pickle modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

PruneMethod = Literal["l1", "l2", "group_norm"]
#: the pruning criteria :func:`prune_channels` takes
PRUNE_METHODS: tuple[str, ...] = ("l1", "l2", "group_norm")
#: the layer attributes pruning changes (what :func:`resized_layers` records; a depthwise
#: convolution loses groups with its channels)
SIZE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
)
_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class PruneError(ValueError):
    """Pruning cannot be done as asked (names the layer and the reason)."""


def fixed_output_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose outputs must keep their count: the classifiers (a linear layer with
    ``spec["num_classes"]`` outputs) and transform heads that are reshaped (a T-Net's
    ``out``), by name."""
    classes = getattr(model, "spec", {}).get("num_classes")
    fixed = {}
    for name, module in model.named_modules():
        is_head = isinstance(module, nn.Linear) and module.out_features == classes
        if is_head or name.endswith("tnet.out"):
            fixed[name] = module
    return fixed


def kept_channels(channels: int, amount: float) -> int:
    """The output channels a layer of ``channels`` keeps when ``amount`` are pruned (Torch-
    Pruning's rule, which leaves a layer whole, silently, where this is 0)."""
    return int(channels * (1 - amount))


def check_prunable(model: nn.Module, amount: float) -> None:
    """:class:`PruneError` when ``amount`` is not in (0, 1) or would leave a layer without
    channels (naming the first such layer)."""
    if not 0 < amount < 1:
        raise PruneError(f"prune amount must be in (0, 1); got {amount!r}")
    fixed = fixed_output_layers(model)
    for name, module in model.named_modules():
        if not isinstance(module, _PRUNABLE) or name in fixed:
            continue
        channels = module.out_channels if hasattr(module, "out_channels") else module.out_features
        if kept_channels(channels, amount) < 1:
            raise PruneError(
                f"pruning {amount:.0%} of layer {name!r} ({channels} output channels) would "
                "remove every channel; lower the amount or widen the model"
            )


def prune_channels(
    model: nn.Module,
    example_inputs: Sequence[Tensor],
    amount: float,
    method: PruneMethod = "l1",
) -> nn.Module:
    """Remove ``amount`` of the output channels of every prunable layer of ``model``, in
    place; returns it. ``example_inputs``: one batch of the model's arguments (Torch-Pruning
    traces the graph with them)."""
    import torch_pruning as tp

    if method not in PRUNE_METHODS:
        raise PruneError(f"prune method must be one of {PRUNE_METHODS}; got {method!r}")
    check_prunable(model, amount)
    was_training = model.training
    model.eval()
    args = tuple(example_inputs)
    if method == "group_norm":
        importance = tp.importance.GroupMagnitudeImportance(p=2)
        pruner_cls: Any = tp.pruner.GroupNormPruner
    else:
        importance = tp.importance.MagnitudeImportance(p=1 if method == "l1" else 2)
        pruner_cls = tp.pruner.BasePruner
    pruner = pruner_cls(
        model,
        args[0] if len(args) == 1 else args,
        importance=importance,
        pruning_ratio=amount,
        ignored_layers=list(fixed_output_layers(model).values()),
    )
    pruner.step()
    model.train(was_training)
    return model


def resized_layers(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, int]]:
    """``{layer name: {attribute: size}}`` where ``model``'s layer sizes differ from
    ``reference``'s (the fresh model of the same spec): what pruning changed."""
    ref = dict(reference.named_modules())
    out: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        changed = {
            attr: int(getattr(module, attr))
            for attr in SIZE_ATTRS
            if hasattr(module, attr) and getattr(module, attr) != getattr(ref[name], attr)
        }
        if changed:
            out[name] = changed
    return out


def rebuild_pruned(
    fresh: nn.Module, resized: Mapping[str, Mapping[str, int]], state: Mapping[str, Tensor]
) -> nn.Module:
    """``fresh`` (the model of the spec) shrunk to ``resized``'s sizes, with ``state`` loaded
    (strictly: a missing or misshapen tensor is an error)."""
    modules = dict(fresh.named_modules())
    unknown = sorted(set(resized) - set(modules))
    if unknown:
        raise PruneError(f"the pruned model names layers the model does not have: {unknown}")
    for name, sizes in resized.items():
        module = modules[name]
        for attr, value in sizes.items():
            if attr not in SIZE_ATTRS:
                raise PruneError(f"layer {name!r}: {attr!r} is not a size attribute")
            setattr(module, attr, int(value))
        prefix = f"{name}." if name else ""
        for key, tensor in list(module.named_parameters(recurse=False)):
            shape = _saved_shape(state, prefix + key)
            module.register_parameter(key, nn.Parameter(torch.empty(shape, dtype=tensor.dtype)))
        for key, buffer in list(module.named_buffers(recurse=False)):
            if buffer is not None and buffer.dim() > 0:
                shape = _saved_shape(state, prefix + key)
                module.register_buffer(key, torch.empty(shape, dtype=buffer.dtype))
        _check_sizes(name, module)
    try:
        fresh.load_state_dict(dict(state))
    except RuntimeError as exc:
        raise PruneError(f"the weights do not fit the pruned model: {exc}") from None
    return fresh


def _check_sizes(name: str, module: nn.Module) -> None:
    """:class:`PruneError` when a resized layer's tensors disagree with its sizes."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        out, inner = module.out_channels, module.in_channels // module.groups
        want = {"weight": (out, inner), "bias": (out,)}
    elif isinstance(module, nn.Linear):
        out = module.out_features
        want = {"weight": (out, module.in_features), "bias": (out,)}
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        want = {"weight": (module.num_features,), "bias": (module.num_features,)}
    else:
        return
    for key, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tuple(tensor.shape[: len(want[key])]) != want[key]:
            raise PruneError(
                f"layer {name!r}: {key} of shape {tuple(tensor.shape)} does not fit its sizes "
                f"{want[key]}"
            )


def _saved_shape(state: Mapping[str, Tensor], key: str) -> torch.Size:
    if key not in state:
        raise PruneError(f"the weights of the pruned model have no {key!r}")
    return state[key].shape

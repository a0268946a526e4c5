"""Models from JSON-able specs and back: ``build_model(model_spec(m))`` has ``m``'s shapes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from datapipe.models.coviar import coviar_net
from datapipe.models.dct_resnet import dct_resnet
from datapipe.models.pointnet import pointnet
from datapipe.models.resnet import resnet

#: arch name -> factory taking the rest of the spec as keyword arguments
ARCHS: dict[str, Callable[..., nn.Module]] = {
    "resnet": resnet,
    "dct_resnet": dct_resnet,
    "coviar": coviar_net,
    "pointnet": pointnet,
}


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """The model a spec describes, freshly initialised (load a ``state_dict`` into it).

    Examples
    --------
    >>> m = build_model({"arch": "resnet", "depth": 8, "width": 16, "num_classes": 10})
    >>> type(m).__name__, m.fc.out_features
    ('ResNet', 10)
    """
    if "arch" not in spec:
        raise ValueError(
            f"A model spec needs an 'arch' (one of {sorted(ARCHS)}). Got {dict(spec)!r}."
        )
    arch = spec["arch"]
    if arch not in ARCHS:
        raise ValueError(
            f"The 'arch' of a model spec must be one of {sorted(ARCHS)}. Got {arch!r} instead."
        )
    kwargs = {k: v for k, v in spec.items() if k != "arch"}
    try:
        return ARCHS[arch](**kwargs)
    except TypeError as exc:  # an unknown key
        raise ValueError(f"model spec {dict(spec)!r}: {exc}") from None


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The JSON-able spec that rebuilds ``model`` with :func:`build_model` (a copy)."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict):
        raise ValueError(
            f"{type(model).__name__} has no 'spec': build it with datapipe.models.build_model "
            "or a factory of datapipe.models"
        )
    return dict(spec)

"""Plain PyTorch models, usable in any training script (no engine imports).

- :func:`resnet`: a small ResNet family sized for CPU (3 stages CIFAR style, or 4);
- :func:`dct_resnet`: its twin on JPEG DCT coefficients (Gueguen et al. 2018);
- :func:`coviar_net`: CoViAR's streams (I-frames, motion, residuals, RGB) with TSN
  consensus and weighted score fusion (Wu et al. 2018);
- :func:`pointnet`: PointNet on point clouds, optional T-Net (Qi et al. 2017);
- :func:`build_model` / :func:`model_spec`: a model from a JSON-able spec and back, so a
  saved ``state_dict`` plus its spec rebuilds the model without the pipeline;
- :func:`count_params`, :func:`count_macs`: size and cost.

Examples
--------
>>> from datapipe.models import build_model, model_spec, resnet
>>> spec = model_spec(resnet(depth=8, width=16, num_classes=10))
>>> spec
{'arch': 'resnet', 'depth': 8, 'width': 16, 'num_classes': 10, 'in_channels': 3, 'stem': 'pixels'}
>>> build_model(spec).spec == spec
True
"""

from __future__ import annotations

from datapipe.models.coviar import CoviarNet, coviar_net
from datapipe.models.dct_resnet import DctResNet, dct_resnet
from datapipe.models.measure import count_macs, count_params
from datapipe.models.pointnet import PointNet, pointnet
from datapipe.models.resnet import BasicBlock, ResNet, ResNetTrunk, resnet
from datapipe.models.spec import ARCHS, build_model, model_spec

__all__ = [
    "ARCHS",
    "BasicBlock",
    "CoviarNet",
    "DctResNet",
    "PointNet",
    "ResNet",
    "ResNetTrunk",
    "build_model",
    "count_macs",
    "count_params",
    "coviar_net",
    "dct_resnet",
    "model_spec",
    "pointnet",
    "resnet",
]

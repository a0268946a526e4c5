"""datapipe: a DAG of stages that turns raw images, videos and point clouds into compact
training data.

The front door is :func:`run` and :func:`validate` (both take a YAML path or a
:class:`Pipeline`); the CLI and the demo call them too.

>>> import datapipe
>>> sorted(datapipe.StageKind.__members__)
['FIT', 'MAP', 'SELECT', 'SINK', 'SOURCE']
>>> datapipe.validate("missing.yaml")[0].message
'pipeline file not found: missing.yaml'
"""

from __future__ import annotations

from datapipe.api import load as load_pipeline
from datapipe.api import run, validate
from datapipe.errors import ConfigError, DatapipeError, Filtered, ItemError, Problem
from datapipe.fields import Field
from datapipe.graph import Node, Pipeline
from datapipe.stage import (
    Context,
    Fit,
    Map,
    Params,
    Select,
    Selection,
    Sink,
    Source,
    Stage,
    StageKind,
)

__version__ = "0.1.0"


__all__ = [
    "ConfigError",
    "Context",
    "DatapipeError",
    "Field",
    "Filtered",
    "Fit",
    "ItemError",
    "Map",
    "Node",
    "Params",
    "Pipeline",
    "Problem",
    "Select",
    "Selection",
    "Sink",
    "Source",
    "Stage",
    "StageKind",
    "__version__",
    "load_pipeline",
    "run",
    "validate",
]

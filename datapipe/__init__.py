"""datapipe: a DAG of stages that turns raw images, videos and point clouds into compact
training data.

>>> import datapipe
>>> sorted(datapipe.StageKind.__members__)
['FIT', 'MAP', 'SELECT', 'SINK', 'SOURCE']
"""

from __future__ import annotations

from datapipe.errors import ConfigError, DatapipeError, Filtered, ItemError
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


def run(pipeline: Pipeline, out: str, **settings: object) -> object:
    """Run a pipeline with the local executor; see :func:`datapipe.executors.local.run_local`."""
    from datapipe.executors.local import run_local

    return run_local(pipeline, out, **settings)  # type: ignore[arg-type]


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
    "Select",
    "Selection",
    "Sink",
    "Source",
    "Stage",
    "StageKind",
    "__version__",
    "run",
]

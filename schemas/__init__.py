"""JSON Schemas shipped with datapipe: the pipeline file, the run report and a trainer's report.

>>> sorted(p.name for p in schema_files())
['pipeline.schema.json', 'run_report.schema.json', 'train_report.schema.json']
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any


def schema_files() -> list[Path]:
    return sorted(
        Path(str(p)) for p in resources.files(__name__).iterdir() if p.name.endswith(".schema.json")
    )


def load_schema(name: str) -> dict[str, Any]:
    """``load_schema("pipeline")`` -> the parsed JSON Schema."""
    return json.loads((resources.files(__name__) / f"{name}.schema.json").read_text())

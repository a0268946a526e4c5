"""What the evidence scripts share: mean ± spread over seeds, and their JSON output."""

from __future__ import annotations

import json
import statistics
from argparse import Namespace
from pathlib import Path
from typing import Any


def mean_sd(values: list[float], fmt: str = "{:.3f}") -> str:
    """``mean ± sample standard deviation`` (0 for a single value) in ``fmt``."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(sd)}"


def write_json(path: Path | None, args: Namespace, results: Any) -> None:
    """The script's arguments and results as JSON at ``path`` (nothing when None)."""
    if path is None:
        return
    data = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    path.write_text(json.dumps(data, indent=1))

"""The report of one run: what it did, what failed and why, where the time went."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

_VERSIONED = (
    "datapipe",
    "numpy",
    "pillow",
    "av",
    "torch",
    "open3d",
    "scikit-learn",
    "dask",
    "distributed",
    "pydantic",
    "pyyaml",
)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class RunReport:
    pipeline: str
    fingerprint: str
    output: str
    run_id: int
    status: str = "running"
    started: float = field(default_factory=time.time)
    finished: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    errors_by_class: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, Any]] = field(default_factory=list)
    #: per Select node: ``seen``, ``kept``, and the seconds of its light pass (``light_s``, 0
    #: when the light values were cached) and of its select call (``select_s``)
    selections: dict[str, dict[str, float]] = field(default_factory=dict)
    sinks: dict[str, Any] = field(default_factory=dict)
    shards: int = 0
    samples: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    #: per Map node: the items it ran on in the main pass and the seconds it took (summed
    #: over workers); the light pass before Select/Fit barriers and items that crashed or
    #: timed out are not included
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    #: what the sources passed over, by category (``hidden``, ``symlink``, ``unknown_ext``),
    #: summed over sources; also kept with the run in the manifest (``runs.counts.skipped``)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def elapsed_s(self) -> float:
        return (self.finished or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["elapsed_s"] = round(self.elapsed_s, 3)
        d["stages"] = {
            node: {"items": int(s["items"]), "seconds": round(s["seconds"], 6)}
            for node, s in self.stages.items()
        }
        return d

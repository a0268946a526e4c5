"""The embedded default executor: this process, plus an optional pool of worker processes.

Stages that declare ``isolate = True`` (untrusted decoders) always run in child processes
under the per-item time limit and memory cap, even with ``workers=0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datapipe.engine.driver import Pool, RunDriver, RunOptions, RunReport
from datapipe.engine.pool import InlinePool, ProcessPool
from datapipe.graph import Pipeline
from datapipe.hooks import RunHooks
from datapipe.stage import StageKind
from datapipe.store.output import OutputStore


@dataclass
class LocalSettings:
    workers: int = 0
    timeout_s: float = 120.0
    memory_mb: int = 4096
    retries: int = 0
    epoch: int = 0

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline, **overrides: Any) -> LocalSettings:
        r = pipeline.run
        base = {
            "workers": r.workers,
            "timeout_s": r.timeout_s,
            "memory_mb": r.memory_mb,
            "retries": r.retries,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def make_pool(settings: LocalSettings, pipeline: Pipeline, fitted: dict[str, Any]) -> Pool:
    """Inline when nothing needs isolation and no workers were asked for; else child processes."""
    isolate = any(n.stage.isolate for n in pipeline.nodes)
    if settings.workers == 0 and not isolate:
        return InlinePool(pipeline, fitted, settings.epoch)
    return ProcessPool(
        pipeline,
        workers=max(1, settings.workers),
        timeout_s=settings.timeout_s,
        memory_mb=settings.memory_mb,
        retries=settings.retries,
        fitted=fitted,
        epoch=settings.epoch,
    )


def preflight(pipeline: Pipeline) -> None:
    """Source checks that must fail before the output directory is touched."""
    for node in pipeline.of_kind(StageKind.SOURCE):
        node.stage.preflight(pipeline.context(node.id))


def run_local(
    pipeline: Pipeline,
    out: str | Path,
    *,
    hooks: RunHooks | None = None,
    retry_errors: bool = False,
    **settings: Any,
) -> RunReport:
    """Run ``pipeline`` into the output directory ``out``; returns the run report."""
    cfg = LocalSettings.from_pipeline(pipeline, **settings)
    preflight(pipeline)
    with OutputStore(out) as store:
        driver = RunDriver(
            pipeline,
            store,
            lambda p, fitted, run_id: make_pool(cfg, p, fitted),
            hooks,
            RunOptions(retry_errors=retry_errors, epoch=cfg.epoch),
        )
        return driver.run()

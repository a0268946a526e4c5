"""The embedded default executor: this process, plus an optional pool of worker processes.

Stages that declare ``isolate = True`` (untrusted decoders) always run in child processes
under the per-item time limit and memory cap, even with ``workers=0``. Those children write
their samples into shards themselves (:mod:`datapipe.engine.child_shards`): the parent checks
and records the shards, and never handles the samples' bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datapipe.engine.child_shards import ShardTarget
from datapipe.engine.driver import RunDriver, RunOptions
from datapipe.engine.pool import PoolSettings, make_pool
from datapipe.engine.report import RunReport
from datapipe.engine.sources import preflight
from datapipe.graph import Pipeline
from datapipe.hooks import RunHooks
from datapipe.store.output import OutputStore


def run_local(
    pipeline: Pipeline,
    out: str | Path,
    *,
    hooks: RunHooks | None = None,
    retry_errors: bool = False,
    **settings: Any,
) -> RunReport:
    """Run ``pipeline`` into the output directory ``out``; returns the run report."""
    cfg = PoolSettings.from_pipeline(pipeline, **settings)
    preflight(pipeline)
    with OutputStore(out) as store:
        driver = RunDriver(
            pipeline,
            store,
            lambda p, fitted, run_id: make_pool(
                cfg, p, fitted, ShardTarget.of(p, str(store.shard_dir), f"shard-{run_id:05d}")
            ),
            hooks,
            RunOptions(retry_errors=retry_errors, epoch=cfg.epoch),
        )
        return driver.run()

"""``datapipe demo``: generate the built-in sample data offline, run the shipped pipelines."""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from datapipe.demo.sample_data import generate_sample_data


def demo_pipelines() -> list[Path]:
    """The example pipeline files shipped inside the package."""
    folder = resources.files("datapipe.demo") / "pipelines"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml"))


def run_demo(args: argparse.Namespace) -> int:
    from datapipe.cli.commands import _execute
    from datapipe.graph import Pipeline

    out: Path = args.out
    data = out / "data"
    t0 = time.perf_counter()
    counts = generate_sample_data(data, seed=args.seed)
    print(
        f"sample data: {', '.join(f'{v} {k}' for k, v in counts.items())} in {data} "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    worst = 0
    for path in demo_pipelines():
        pipeline = Pipeline.from_yaml(path, {"data": str(data.resolve())})
        report = _execute(pipeline, out / pipeline.name, args)
        worst = max(worst, 3 if report.counts.get("error") else 0)
    print(
        f"demo finished in {time.perf_counter() - t0:.1f} s; inspect with "
        f"`datapipe manifest {out}/images` or `datapipe show {out}/images`"
    )
    return worst

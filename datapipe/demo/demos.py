"""``datapipe demo``: generate the built-in sample data offline, run the shipped pipelines.

It goes through :func:`datapipe.run` like any caller; it does not import the CLI.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Any

#: where ``datapipe demo`` writes when given no ``--out`` (git-ignored in this repository)
DEFAULT_OUT = Path("datapipe-demo")


def demo_pipelines() -> list[Path]:
    """The example pipeline files shipped inside the package."""
    folder = resources.files("datapipe.demo") / "pipelines"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml"))


def run_demo(
    out: str | Path = DEFAULT_OUT, *, seed: int = 0, quiet: bool = False, **options: Any
) -> int:
    """Write the sample data to ``out/data`` and run every demo pipeline into ``out/NAME``.

    ``options`` go to :func:`datapipe.run` (``workers``, ``executor``, ``progress``, ...).
    Returns the exit code of the CLI: 3 when some item failed, else 0."""
    import datapipe
    from datapipe.demo.sample_data import generate_sample_data
    from datapipe.summary import earlier_failures, summary_text

    out = Path(out)
    data = out / "data"
    t0 = time.perf_counter()
    counts = generate_sample_data(data, seed=seed)
    if not quiet:
        print(
            f"sample data: {', '.join(f'{v} {k}' for k, v in counts.items())} in {data} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    worst = 0
    for path in demo_pipelines():
        pipeline = datapipe.load_pipeline(path, {"data": str(data.resolve())})
        report = datapipe.run(pipeline, out / pipeline.name, **options)
        if not quiet:
            print(summary_text(report, earlier_failures(report)))
        worst = max(worst, 3 if report.counts.get("error") else 0)
    if not quiet:
        print(
            f"demo finished in {time.perf_counter() - t0:.1f} s; inspect with "
            f"`datapipe manifest {out}/images` or `datapipe show {out}/images`"
        )
    return worst

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


#: the training demo's data: classes x files per class (64x64 shape photos; 64x64 clips of
#: 24 frames over a still background: over a panning one these models need more clips)
TRAINING_IMAGES = (4, 100)
TRAINING_VIDEOS = (4, 24)
#: composed objects, 1024 points each: chair / armchair / table / table3
TRAINING_CLOUDS = (4, 40)


def demo_pipelines(folder: str = "pipelines") -> list[Path]:
    """The example pipeline files shipped inside the package (``folder="pipelines/training"``:
    the short training runs, which read the training-size data)."""
    where = resources.files("datapipe.demo") / folder
    return sorted(Path(str(p)) for p in where.iterdir() if p.name.endswith(".yaml"))


def training_demo_pipelines() -> list[Path]:
    """The training demo pipelines: one short training run per trainer family."""
    return demo_pipelines("pipelines/training")


def run_demo(
    out: str | Path = DEFAULT_OUT,
    *,
    seed: int = 0,
    quiet: bool = False,
    train: bool = True,
    **options: Any,
) -> int:
    """Write the sample data to ``out/data`` and run every demo pipeline into ``out/NAME``;
    with ``train``, also write training-size data to ``out/training`` and run the short
    training demos (each prints its validation accuracy).

    ``options`` go to :func:`datapipe.run` (``workers``, ``executor``, ``progress``, ...).
    Returns the exit code of the CLI: 3 when some item or trainer failed, else 0."""
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
    if train:
        worst = max(worst, _run_training_demos(out, seed, quiet, options))
    if not quiet:
        print(
            f"demo finished in {time.perf_counter() - t0:.1f} s; inspect with "
            f"`datapipe manifest {out}/images` or `datapipe show {out}/images`"
        )
    return worst


def _run_training_demos(out: Path, seed: int, quiet: bool, options: dict[str, Any]) -> int:
    """Make the training data (once) and run the training demos; the worst exit code."""
    import datapipe
    from datapipe.demo.training_data import make_image_dataset, make_video_dataset
    from datapipe.summary import summary_text

    training = out / "training"
    t0 = time.perf_counter()
    if not (training / "images").is_dir():
        classes, per_class = TRAINING_IMAGES
        make_image_dataset(
            training / "images", classes=classes, per_class=per_class, size=(64, 64), seed=seed
        )
    if not (training / "videos").is_dir():
        classes, per_class = TRAINING_VIDEOS
        make_video_dataset(
            training / "videos", classes=classes, per_class=per_class, size=(64, 64),
            seed=seed, camera=0, workers=1,
        )  # fmt: skip
    if not (training / "points").is_dir():
        from datapipe.demo.point_data import make_point_dataset

        classes, per_class = TRAINING_CLOUDS
        make_point_dataset(training / "points", classes=classes, per_class=per_class, seed=seed)
    if not quiet:
        print(f"training data in {training} ({time.perf_counter() - t0:.1f} s)")
    worst = 0
    for path in training_demo_pipelines():
        pipeline = datapipe.load_pipeline(path, {"training": str(training.resolve())})
        report = datapipe.run(pipeline, out / pipeline.name, **options)
        if not quiet:
            print(summary_text(report))
        failed = any(isinstance(s, dict) and "error" in s for s in report.sinks.values())
        worst = max(worst, 3 if report.counts.get("error") or failed else 0)
    return worst

"""What the evidence scripts share: mean ± spread over seeds, their JSON output, and the
video scripts' clip set."""

from __future__ import annotations

import json
import statistics
import tempfile
from argparse import ArgumentParser, Namespace
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


def add_training_args(
    parser: ArgumentParser,
    *,
    classes: int,
    per_class: int,
    size: int,
    epochs: int,
    width: int = 16,
    batch: int = 32,
    lr: float = 0.05,
    threads: int = 1,
) -> None:
    """The image set, training, seed and output options the image evidence scripts share,
    with each script's defaults."""
    parser.add_argument("--classes", type=int, default=classes)
    parser.add_argument("--per-class", type=int, default=per_class)
    parser.add_argument("--size", type=int, default=size, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--width", type=int, default=width)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--json", type=Path, default=None)


def train_params(args: Namespace, seed: int, **extra: Any) -> dict[str, Any]:
    """A ``train.*`` stage's params from :func:`add_training_args`' options (flips on), plus
    ``extra``."""
    return {"width": args.width, "epochs": args.epochs, "seed": seed, "batch_size": args.batch,
            "lr": args.lr, "flip": True, "threads": args.threads, **extra}  # fmt: skip


def add_video_data_args(parser: ArgumentParser) -> None:
    """The clip set's options, shared by the video evidence scripts."""
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--side", type=int, default=64, help="clip width and height, px")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--camera", type=int, default=0, help="background pan, px per frame")


def video_data(args: Namespace, prefix: str) -> tuple[Path, Path]:
    """``(work folder, clips folder)``: the clips of :func:`add_video_data_args`'s options,
    made once in ``args.out`` (default: a new temporary folder)."""
    from datapipe.demo.training_data import make_video_dataset

    work = args.out or Path(tempfile.mkdtemp(prefix=prefix))
    data = work / "data"
    if not data.exists():
        make_video_dataset(
            data,
            classes=args.classes,
            per_class=args.per_class,
            size=(args.side, args.side),
            frames=args.frames,
            camera=args.camera,
            seed=0,
            workers=args.threads,
        )
    return work, data

"""Helpers for tests that drive datapipe from outside its process: the command line, and a
run's manifest while another process writes it."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from datapipe.graph import Pipeline


def datapipe_cmd() -> list[str]:
    """The installed ``datapipe`` command (or ``python -m datapipe.cli``)."""
    exe = shutil.which("datapipe", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "datapipe.cli"]


def cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``datapipe ARGS`` in ``cwd``; its exit code, stdout and stderr as text."""
    return subprocess.run(
        [*datapipe_cmd(), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )


def ok_rows(db: Path) -> int:
    """Committed ok rows of a manifest another process may be writing (0 if not there yet)."""
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM items WHERE status='ok'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def image_trainer(root: Path, **train: Any) -> Pipeline:
    """files -> image.resize(24) -> train.image ``classifier`` (4 epochs, width 8 unless
    ``train`` says otherwise) over the JPEG folders under ``root``."""
    params = {"epochs": 4, "width": 8, "batch_size": 16, "lr": 0.05, **train}
    return Pipeline.from_dict(
        {
            "nodes": {
                "photos": {"stage": "files", "params": {"root": str(root), "kinds": ["image"]}},
                "resize": {"stage": "image.resize", "inputs": "photos", "params": {"size": 24}},
                "classifier": {"stage": "train.image", "inputs": "resize", "params": params},
            }
        }
    )


def scheduled_trainer(root: Path, end_size: int, end_epoch: int = 2, **train: Any) -> Pipeline:
    """files -> represent.resize (16 px at epoch 0 up to ``end_size`` at ``end_epoch``,
    multiples of 8) -> train.image ``classifier`` (3 epochs, width 4 unless ``train`` says
    otherwise)."""
    schedule = {"start_size": 16, "end_size": end_size, "start_epoch": 0,
                "end_epoch": end_epoch, "multiple": 8}  # fmt: skip
    params = {"epochs": 3, "width": 4, "batch_size": 16, "lr": 0.05, **train}
    return Pipeline.from_dict(
        {
            "nodes": {
                "photos": {"stage": "files", "params": {"root": str(root), "kinds": ["image"]}},
                "resize": {
                    "stage": "represent.resize",
                    "inputs": "photos",
                    "params": {"schedule": schedule},
                },
                "classifier": {"stage": "train.image", "inputs": "resize", "params": params},
            }
        }
    )

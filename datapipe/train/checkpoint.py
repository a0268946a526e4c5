"""Per-epoch checkpoints: written atomically, loadable with ``torch.load(weights_only=True)``.

A checkpoint holds tensors and plain containers only: model, optimizer and scheduler
state, the RNG states (torch as a uint8 tensor, numpy's MT19937 keys as an int64 tensor,
Python's ``random`` state as a list), the epochs done, the history and the config.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"
VERSION = 2


def rng_state() -> dict[str, Any]:
    """The torch, numpy and Python RNG states as tensors and plain values."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(gauss),
        },
        "python": [version, list(internal), gauss_next],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["bit_generator"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``directory/checkpoint.pt`` atomically (a temporary file, then ``os.replace``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT
    write_atomic(path, lambda f: torch.save({"version": VERSION, **state}, f))
    return path


def write_atomic(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` all or nothing: ``write`` fills a temporary file beside it, which is
    fsynced and renamed into place (a reader sees the old file or the complete new one)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The checkpoint in ``directory`` (``weights_only=True``), or None when there is none."""
    path = Path(directory) / CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {state.get('version')!r}, expected {VERSION}")
    return state

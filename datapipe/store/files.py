"""Atomic file writes: temporary name in the same directory, fsync, rename, fsync the dir."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TMP_MARK = ".tmp-"


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Write ``path`` all or nothing: readers see the old file or the complete new one."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write(path: str | Path, data: bytes | str) -> None:
    with atomic_open(path) as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete leftovers of writes that were interrupted (a killed run)."""
    removed = []
    for p in directory.glob(f".*{TMP_MARK}*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed

"""A strict parser for ASCII point rows (PLY, PCD, XYZ, XYZN, PTS bodies): where Open3D
pads a short or garbled file with zeros, this fails with an
:class:`~datapipe.errors.ItemError` (``truncated``, ``corrupt`` or ``decode_bomb``)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from datapipe.errors import ItemError


def load_rows(
    path: Path,
    offset: int,
    ncols: int | None,
    *,
    skip: int = 0,
    rows: int | None = None,
    max_points: int | None = None,
    comments: str | None = None,
) -> np.ndarray:
    """Parse whitespace-separated numbers from byte ``offset`` on: ``rows`` rows exactly when
    given (after skipping ``skip`` lines), else every row up to ``max_points``."""
    if rows == 0:
        return np.zeros((0, ncols or 3))
    limit = rows if rows is not None else (max_points or 0) + 1
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # blank lines, no data at all
            fh.seek(offset)
            table = np.loadtxt(
                fh,
                dtype=np.float64,
                comments=comments,
                skiprows=skip,
                max_rows=limit,
                ndmin=2,
                encoding="latin-1",
            )
    except ValueError as exc:
        if ends_mid_line(path, ncols):
            raise ItemError("truncated", "the file ends in the middle of a line") from None
        why = str(exc).split("; use `usecols`")[0]
        raise ItemError("corrupt", f"cannot parse the point data: {why}") from None
    if table.size == 0:
        return np.zeros((0, ncols or 3))
    if rows is not None and len(table) < rows:
        raise ItemError(
            "truncated", f"the header declares {rows:,} points; the file holds {len(table):,}"
        )
    if rows is None and max_points is not None and len(table) > max_points:
        raise ItemError("decode_bomb", f"the file holds more than max_points={max_points:,} points")
    if len(table) and ncols is not None and table.shape[1] != ncols:
        if ends_mid_line(path, ncols):
            raise ItemError("truncated", "the file ends in the middle of a line")
        raise ItemError("corrupt", f"rows hold {table.shape[1]} values; expected {ncols}")
    return table


def ends_mid_line(path: Path, ncols: int | None) -> bool:
    """Whether the last line is shorter than a full row (what a cut-off file looks like)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        fh.seek(max(0, end - 4096))
        tail = fh.read()
    if tail.endswith(b"\n"):
        return False
    lines = tail.split(b"\n")
    expected = ncols or (len(lines[-2].split()) if len(lines) > 1 else 0)
    return len(lines[-1].split()) < expected

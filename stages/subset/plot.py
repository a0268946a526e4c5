"""A picture of a selection: the embeddings projected on their first two principal axes,
kept samples in colour, removed ones in grey. Drawn with Pillow (no matplotlib needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

_PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (127, 127, 127),
]


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project (N, D) rows on their first two principal axes (via the D x D covariance)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        return np.zeros((len(x), 2))
    xc = x - x.mean(axis=0)
    if x.shape[1] == 1:
        return np.column_stack([xc[:, 0], np.zeros(len(x))])
    _, vecs = np.linalg.eigh(xc.T @ xc)
    return xc @ vecs[:, ::-1][:, :2]


def plot_selection(
    x: np.ndarray,
    kept: np.ndarray,
    path: str | Path,
    *,
    title: str = "",
    labels: Sequence[str] | None = None,
    size: int = 640,
) -> Path:
    """Save a PNG scatter of ``x`` (N, D) in 2-D PCA, ``kept`` (bool, N) coloured by label.

    Returns
    -------
    pathlib.Path
        ``path``, the PNG written.

    Examples
    --------
    >>> import os, tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> x = np.random.default_rng(0).normal(size=(50, 4))
    >>> out = plot_selection(x, np.arange(50) < 10, os.path.join(tmp.name, "s.png"))
    >>> out.name, out.stat().st_size > 0
    ('s.png', True)
    >>> tmp.cleanup()
    """
    path = Path(path)
    kept = np.asarray(kept, dtype=bool)
    xy = pca_2d(x)
    margin, top = 24, 48
    img = Image.new("RGB", (size, size + top), "white")
    draw = ImageDraw.Draw(img)
    if len(xy):
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        pix = margin + (xy - lo) / span * (size - 2 * margin)
        pix[:, 1] = size + top - pix[:, 1]  # y up
        classes = sorted(set(labels)) if labels is not None else []
        colour = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(classes)}
        for px, py in pix[~kept]:
            draw.ellipse((px - 1.5, py - 1.5, px + 1.5, py + 1.5), fill=(200, 200, 200))
        for i in np.flatnonzero(kept):
            px, py = pix[i]
            fill = colour[labels[i]] if labels is not None else _PALETTE[0]
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=fill, outline=(0, 0, 0))
        x0 = margin
        for c in classes[:12]:  # legend: one dot and name per class
            draw.ellipse((x0, 30, x0 + 6, 36), fill=colour[c], outline=(0, 0, 0))
            draw.text((x0 + 9, 27), c[:14], fill=(0, 0, 0))
            x0 += 18 + 6 * len(c[:14])
    n_kept = int(kept.sum())
    text = f"{title}  kept {n_kept} (colour) / removed {len(kept) - n_kept} (grey), PCA 2-D"
    draw.text((margin, 12), text.strip(), fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path

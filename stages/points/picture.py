"""A picture of what samplers keep: one cloud per panel, grey, with the kept points in red."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np


def draw_samplers(path: Path, cloud: np.ndarray, picks: Mapping[str, np.ndarray]) -> None:
    """A PNG at ``path``: ``cloud`` (N, 3) once per sampler, its picked indices highlighted.

    The panels share the view (from the side and above, z up) and the axis limits, so the
    samplers can be compared point for point.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = np.asarray(cloud, dtype=np.float64)
    lo, hi = pts.min(0), pts.max(0)
    fig = plt.figure(figsize=(4.5 * len(picks), 4.5))
    for k, (name, idx) in enumerate(picks.items()):
        ax = fig.add_subplot(1, len(picks), k + 1, projection="3d")
        ax.scatter(*pts.T, s=1, c="0.7", depthshade=False)
        ax.scatter(*pts[np.asarray(idx)].T, s=22, c="tab:red", depthshade=False)
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), zlim=(lo[2], hi[2]))
        ax.set_box_aspect(np.maximum(hi - lo, 1e-9))
        ax.view_init(elev=20, azim=-60)
        ax.set_title(f"{name}: {len(idx)} of {len(pts)} points")
        ax.set_axis_off()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
